"""The size report every codec stage returns."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CodecReport"]


@dataclass(frozen=True, slots=True)
class CodecReport:
    """Bytes before and after one codec stage.

    Attributes:
        stage: the stage's name in the pipeline (e.g. ``"quantize8"``).
        bytes_in: size of the stage's input (an array's ``nbytes``, or a byte string's length).
        bytes_out: size of the stage's output.
    """

    stage: str
    bytes_in: int
    bytes_out: int

    @property
    def ratio(self) -> float:
        """``bytes_in / bytes_out`` (how many times smaller the output is)."""
        return self.bytes_in / max(self.bytes_out, 1)

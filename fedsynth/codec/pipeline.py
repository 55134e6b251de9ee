"""Named, symmetric codec pipelines such as ``"quantize8|zstd"`` or ``"topk0.01|zstd"``.

A pipeline is one array stage (``float64``, ``float32``, ``quantize<bits>``, ``topk<fraction>``)
followed by any number of byte stages (``zstd`` or ``zstd<level>``). ``encode`` runs the stages left
to right and reports bytes before and after each; ``decode`` runs their inverses right to left.
``topk`` here is stateless; for error feedback across rounds use
:class:`fedsynth.codec.topk.ErrorFeedback` and pass its frame through the byte stages.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedsynth.codec.quantize import QuantizedVector, dequantize, quantize, read_levels
from fedsynth.codec.report import CodecReport
from fedsynth.codec.topk import topk_decode, topk_encode
from fedsynth.codec.zstd import zstd_compress, zstd_decompress
from fedsynth.errors import ConfigError, MessageError

__all__ = ["Pipeline"]

_ARRAY = re.compile(r"^(float64|float32|quantize(\d+)|topk(0?\.\d+|1(\.0*)?))$")
_BYTES = re.compile(r"^zstd(\d*)$")


@dataclass(frozen=True, slots=True)
class Pipeline:
    """An array stage and zero or more byte stages, by name."""

    array_stage: str
    byte_stages: tuple[str, ...] = ()

    @classmethod
    @functools.lru_cache(maxsize=128)
    def parse(cls, spec: str) -> Pipeline:
        """Parse ``"stage|stage|..."`` (pipelines are immutable, so parses are cached).

        Raises:
            ConfigError: unknown stage names or a misplaced array stage.
        """
        names = [s.strip() for s in spec.split("|")]
        if not names or not _ARRAY.match(names[0]):
            raise ConfigError(f"pipeline {spec!r} must start with an array stage")
        if bad := [n for n in names[1:] if not _BYTES.match(n)]:
            raise ConfigError(f"pipeline {spec!r}: unknown byte stages {bad}")
        quant = _ARRAY.match(names[0])
        if quant and quant.group(2) is not None:
            quantize(np.zeros(0), int(quant.group(2)), np.random.default_rng(0))  # validates bits
        return cls(names[0], tuple(names[1:]))

    @property
    def name(self) -> str:
        """The pipeline's spec string (round-trips through :meth:`parse`)."""
        return "|".join((self.array_stage, *self.byte_stages))

    def encode(
        self, vector: npt.ArrayLike, rng: np.random.Generator
    ) -> tuple[bytes, tuple[CodecReport, ...]]:
        """Encode a float vector; returns the bytes and one report per stage."""
        flat = np.asarray(vector, dtype=np.float64).reshape(-1)
        data = self._encode_array(flat, rng)
        reports = [CodecReport(self.array_stage, flat.nbytes, len(data))]
        for stage in self.byte_stages:
            level = int(stage[4:] or 3)
            out = zstd_compress(data, level)
            reports.append(CodecReport(stage, len(data), len(out)))
            data = out
        return data, tuple(reports)

    def decode(self, data: bytes, dtype: npt.DTypeLike = np.float64) -> npt.NDArray[np.floating]:
        """Invert :meth:`encode` (lossy stages give their reconstruction).

        Args:
            data: The encoded bytes.
            dtype: Float type of the result: the float64 reconstruction rounded to it (float32
                decodes without a float64 copy of the whole vector).

        Raises:
            MessageError: corrupt input.
        """
        data = self._bytes_decoded(data)
        match = _ARRAY.match(self.array_stage)
        if match is None:
            raise ConfigError(f"unknown array stage {self.array_stage!r}")
        if match.group(2) is not None:
            return dequantize(data, dtype)
        if match.group(3) is not None:
            return topk_decode(data).astype(dtype, copy=False)
        raw = "<f8" if self.array_stage == "float64" else "<f4"
        if len(data) % np.dtype(raw).itemsize:
            raise MessageError("raw float payload has a partial element")
        return np.frombuffer(data, dtype=raw).astype(np.float64).astype(dtype, copy=False)

    def decode_compact(
        self, data: bytes, dtype: npt.DTypeLike = np.float32
    ) -> QuantizedVector | npt.NDArray[np.floating]:
        """Like :meth:`decode`, but a quantize stage gives its levels (:func:`read_levels`)
        instead of floats; other array stages decode to ``dtype``.

        Raises:
            MessageError: corrupt input.
        """
        match = _ARRAY.match(self.array_stage)
        if match is None or match.group(2) is None:
            return self.decode(data, dtype)
        return read_levels(self._bytes_decoded(data))

    def _bytes_decoded(self, data: bytes) -> bytes:
        """The byte stages undone, right to left."""
        for _stage in reversed(self.byte_stages):
            data = zstd_decompress(data)
        return data

    def _encode_array(self, flat: npt.NDArray[np.float64], rng: np.random.Generator) -> bytes:
        match = _ARRAY.match(self.array_stage)
        if match is None:
            raise ConfigError(f"unknown array stage {self.array_stage!r}")
        if match.group(2) is not None:
            return quantize(flat, int(match.group(2)), rng)
        if match.group(3) is not None:
            k = max(1, round(float(match.group(3)) * flat.size)) if flat.size else 0
            return topk_encode(flat, k)
        dtype = "<f8" if self.array_stage == "float64" else "<f4"
        return flat.astype(dtype).tobytes()

"""The evaluation result as one frozen value, and its JSON form."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from fedsynth.eval.columns import ColumnSpec
from fedsynth.eval.fidelity import FidelityReport
from fedsynth.eval.privacy import PrivacyReport
from fedsynth.eval.utility import UtilityReport

__all__ = ["REPORT_VERSION", "EvaluationReport"]

REPORT_VERSION = 1
"""Bumped when a field of report.json changes meaning or disappears."""


@dataclass(frozen=True, slots=True)
class EvaluationReport:
    """Fidelity, utility and privacy of one synthetic data set against real data.

    Attributes:
        columns: The evaluated columns and their kinds.
        n_train: Real training rows (what the generator saw).
        n_synthetic: Synthetic rows.
        n_holdout: Real held-out rows (what it did not see).
        fidelity: Column shapes, pair trends and quality.
        utility: TSTR against TRTR, or None (see ``utility_note``).
        utility_note: Why utility is None, or the target rule.
        privacy: DCR and membership inference.
        notes: Facts a reader needs, such as how the held-out rows were chosen.
    """

    columns: tuple[ColumnSpec, ...]
    n_train: int
    n_synthetic: int
    n_holdout: int
    fidelity: FidelityReport
    utility: UtilityReport | None
    utility_note: str
    privacy: PrivacyReport
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: tuples become lists, NaN and infinities become None."""
        data: dict[str, Any] = _clean(dataclasses.asdict(self))
        data["report_version"] = REPORT_VERSION
        for shape in data["fidelity"]["column_shapes"]:
            shape["missing_difference"] = abs(shape["missing_real"] - shape["missing_synthetic"])
        return data

    def to_json(self, indent: int | None = 2) -> str:
        """The report as strict JSON (no NaN)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, str):
        return str(value)  # StrEnum -> plain str
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

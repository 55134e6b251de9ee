"""Dataset schemas: the columns a federation agrees on before any data is touched.

A schema is a JSON file under ``schemas/datasets/<name>.json``. It declares, per column, its kind
(numeric, integer, categorical, boolean), unit, categories, clinical bounds, missing-value codes and
role (feature, identifier, site, target), plus the conditioning column of the generative model.
Bounds and categories are fixed up front so that no transform is ever fitted on one site's raw
values (see ARCHITECTURE.md, "Privacy"). Values are frozen, slotted dataclasses;
:meth:`DatasetSchema.load` validates a file once and raises :class:`~fedsynth.errors.ConfigError`
naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from fedsynth.data.patterns import PATTERN_HISTOGRAM
from fedsynth.errors import ConfigError

__all__ = [
    "MAX_DISCRETE_LEVELS",
    "MAX_PATTERN_COLUMNS",
    "MIN_PATTERN_COLUMNS",
    "Bounds",
    "ColumnKind",
    "ColumnRole",
    "ColumnSpec",
    "DatasetSchema",
    "schema_path",
]

#: An integer column with at most this many values in its bounds is modelled as categorical.
MAX_DISCRETE_LEVELS = 16
_SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "datasets"

#: Bounds on ``DatasetSchema.missing_pattern``: the released pattern histogram has ``2**m`` bins;
#: its noise level is estimated from the (mostly empty) bins themselves, which needs at least 64
#: of them, and 4096 keeps the vector the sites sum small.
MIN_PATTERN_COLUMNS = 6
MAX_PATTERN_COLUMNS = 12

Level = str | bool | int


class ColumnKind(StrEnum):
    """How a column's values are typed."""

    NUMERIC = "numeric"
    INTEGER = "integer"
    CATEGORICAL = "categorical"
    BOOLEAN = "boolean"


class ColumnRole(StrEnum):
    """What a column is for: only features and the target are modelled."""

    FEATURE = "feature"
    IDENTIFIER = "identifier"
    SITE = "site"
    TARGET = "target"


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Bounds:
    """Closed clinical interval ``[lo, hi]`` of plausible values."""

    lo: float
    hi: float


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One column of a dataset schema.

    Attributes:
        name: column name in the site files.
        kind: value type.
        role: feature, identifier (never modelled or released), site (the hospital) or target.
        unit: physical unit, informational.
        description: free text for operators and model cards.
        categories: allowed values of a categorical column, in a fixed order.
        bounds: clinical bounds of a numeric or integer column (required for those kinds).
        missing_codes: values that mean "not measured" (e.g. ``chol == 0``); read as missing.
        resolution: smallest step of recorded values (1 for integers); decoded values are rounded.
        n_bins: histogram bins for federated preprocessing of a numeric column.
        atoms: values many records share exactly (domain knowledge, e.g. no ST depression,
            ``oldpeak == 0``): each gets a histogram bin of its own, one ``resolution`` wide, so
            the federated normalization and the decoder keep the point mass instead of spreading
            it over a wide bin. Only for numeric columns with bounds and a resolution.
        required: always recorded (e.g. age): a site row without it is refused, and synthetic
            rows never leave it missing (the model's missing indicator for it is ignored).
    """

    name: str
    kind: ColumnKind
    role: ColumnRole = ColumnRole.FEATURE
    unit: str | None = None
    description: str = ""
    categories: tuple[str, ...] = ()
    bounds: Bounds | None = None
    missing_codes: tuple[float | str, ...] = ()
    resolution: float | None = None
    n_bins: int = 32
    atoms: tuple[float, ...] = ()
    required: bool = False

    @property
    def modelled(self) -> bool:
        """True for columns the generative model learns (features and the target)."""
        return self.role in (ColumnRole.FEATURE, ColumnRole.TARGET)

    @property
    def is_discrete(self) -> bool:
        """True when the column is modelled as a set of levels (one-hot)."""
        return self.levels() is not None

    def levels(self) -> tuple[Level, ...] | None:
        """The finite set of values of a discrete column, or None for a continuous one."""
        if self.kind is ColumnKind.CATEGORICAL:
            return self.categories
        if self.kind is ColumnKind.BOOLEAN:
            return (False, True)
        if self.kind is ColumnKind.INTEGER and self.bounds is not None:
            lo, hi = math.ceil(self.bounds.lo), math.floor(self.bounds.hi)
            if hi - lo + 1 <= MAX_DISCRETE_LEVELS:
                return tuple(range(lo, hi + 1))
        return None

    def step(self) -> float | None:
        """Rounding step of decoded values (1 for integers, ``resolution`` otherwise)."""
        if self.kind is ColumnKind.INTEGER:
            return max(1.0, self.resolution or 1.0)
        return self.resolution

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (defaults left out, so hashes stay stable as fields are added)."""
        out: dict[str, Any] = {"name": self.name, "kind": str(self.kind), "role": str(self.role)}
        if self.unit is not None:
            out["unit"] = self.unit
        if self.description:
            out["description"] = self.description
        if self.categories:
            out["categories"] = list(self.categories)
        if self.bounds is not None:
            out["bounds"] = [self.bounds.lo, self.bounds.hi]
        if self.missing_codes:
            out["missing_codes"] = list(self.missing_codes)
        if self.resolution is not None:
            out["resolution"] = self.resolution
        if self.n_bins != 32:
            out["n_bins"] = self.n_bins
        if self.atoms:
            out["atoms"] = list(self.atoms)
        if self.required:
            out["required"] = True
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ColumnSpec:
        """Parse and check one column entry; raises ConfigError naming the column."""
        name = str(raw.get("name", ""))
        if not name:
            raise ConfigError(f"schema column without a name: {dict(raw)!r}")
        try:
            kind = ColumnKind(raw["kind"])
            role = ColumnRole(raw.get("role", "feature"))
            bounds_raw = raw.get("bounds")
            bounds = None if bounds_raw is None else Bounds(*(float(v) for v in bounds_raw))
            spec = cls(
                name=name,
                kind=kind,
                role=role,
                unit=raw.get("unit"),
                description=str(raw.get("description", "")),
                categories=tuple(str(c) for c in raw.get("categories", ())),
                bounds=bounds,
                missing_codes=tuple(raw.get("missing_codes", ())),
                resolution=None if raw.get("resolution") is None else float(raw["resolution"]),
                n_bins=int(raw.get("n_bins", 32)),
                atoms=tuple(float(v) for v in raw.get("atoms", ())),
                required=_flag(raw.get("required", False), "required"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"schema column {name!r}: {exc}") from exc
        spec._check()
        return spec

    def _check(self) -> None:
        where = f"schema column {self.name!r}"
        if self.kind in (ColumnKind.NUMERIC, ColumnKind.INTEGER) and self.modelled:
            if self.bounds is None:
                raise ConfigError(f"{where}: a modelled {self.kind} column needs bounds")
        if self.bounds is not None and not self.bounds.lo < self.bounds.hi:
            raise ConfigError(f"{where}: bounds {self.bounds} are empty")
        if self.kind is ColumnKind.CATEGORICAL:
            if not self.categories:
                raise ConfigError(f"{where}: a categorical column needs categories")
            if len(set(self.categories)) != len(self.categories):
                raise ConfigError(f"{where}: duplicate categories")
        elif self.categories:
            raise ConfigError(f"{where}: only categorical columns have categories")
        if self.n_bins < 2:
            raise ConfigError(f"{where}: n_bins must be at least 2")
        if self.resolution is not None and self.resolution <= 0:
            raise ConfigError(f"{where}: resolution must be positive")
        if self.atoms:
            self._check_atoms(where)

    def _check_atoms(self, where: str) -> None:
        step = self.step()
        if self.levels() is not None or self.bounds is None or step is None:
            raise ConfigError(
                f"{where}: atoms need a continuous numeric column with bounds and a resolution"
            )
        for atom in self.atoms:
            if not self.bounds.lo <= atom <= self.bounds.hi:
                raise ConfigError(f"{where}: atom {atom} is outside the bounds {self.bounds}")
            on_grid = (atom - self.bounds.lo) / step
            if abs(on_grid - round(on_grid)) > 1e-6:
                raise ConfigError(
                    f"{where}: atom {atom} is not a recorded value (bounds.lo + k * {step})"
                )
        if len(set(self.atoms)) != len(self.atoms):
            raise ConfigError(f"{where}: duplicate atoms")


@dataclass(frozen=True, slots=True)
class DatasetSchema:
    """A dataset's columns and the conditioning column of its generative model."""

    name: str
    columns: tuple[ColumnSpec, ...]
    conditioning: str | None = None
    version: int = 1
    description: str = ""
    missing_pattern: tuple[str, ...] = ()
    """Columns whose joint missingness the sites release as one histogram over the ``2**m``
    patterns (:mod:`fedsynth.data.patterns`); empty: only each column's own missing share."""

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ConfigError(f"schema {self.name!r}: duplicate column names")
        if PATTERN_HISTOGRAM in names:
            raise ConfigError(f"schema {self.name!r}: {PATTERN_HISTOGRAM!r} is a reserved name")
        if sum(c.role is ColumnRole.SITE for c in self.columns) > 1:
            raise ConfigError(f"schema {self.name!r}: more than one site column")
        if self.conditioning is not None:
            spec = self.column(self.conditioning)
            if not spec.modelled or not spec.is_discrete:
                raise ConfigError(
                    f"schema {self.name!r}: conditioning column {self.conditioning!r} must be a "
                    "modelled discrete column (categorical, boolean or small-range integer)"
                )
        if self.missing_pattern:
            self._check_missing_pattern()

    def _check_missing_pattern(self) -> None:
        names = self.missing_pattern
        where = f"schema {self.name!r}: missing_pattern"
        if len(set(names)) != len(names):
            raise ConfigError(f"{where} names a column twice")
        if not MIN_PATTERN_COLUMNS <= len(names) <= MAX_PATTERN_COLUMNS:
            raise ConfigError(
                f"{where} needs {MIN_PATTERN_COLUMNS} to {MAX_PATTERN_COLUMNS} columns, "
                f"got {len(names)}"
            )
        for name in names:
            spec = self.column(name)
            if not spec.modelled or spec.required or name == self.conditioning:
                raise ConfigError(
                    f"{where}: {name!r} must be a modelled column that may be missing (not "
                    "required, not the conditioning column)"
                )

    def column(self, name: str) -> ColumnSpec:
        """The column called ``name``; raises ConfigError if there is none."""
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise ConfigError(f"schema {self.name!r} has no column {name!r}")

    def has_column(self, name: str) -> bool:
        """True when the schema declares ``name``."""
        return any(spec.name == name for spec in self.columns)

    @property
    def modelled_columns(self) -> tuple[ColumnSpec, ...]:
        """Features and target, in schema order."""
        return tuple(c for c in self.columns if c.modelled)

    @property
    def site_column(self) -> str | None:
        """Name of the column holding the site (hospital), if declared."""
        return next((c.name for c in self.columns if c.role is ColumnRole.SITE), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "conditioning": self.conditioning,
            "columns": [c.to_dict() for c in self.columns],
            **({"missing_pattern": list(self.missing_pattern)} if self.missing_pattern else {}),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DatasetSchema:
        """Parse and check a schema document."""
        if "name" not in raw or "columns" not in raw:
            raise ConfigError("a dataset schema needs 'name' and 'columns'")
        return cls(
            name=str(raw["name"]),
            columns=tuple(ColumnSpec.from_dict(c) for c in raw["columns"]),
            conditioning=raw.get("conditioning"),
            version=int(raw.get("version", 1)),
            description=str(raw.get("description", "")),
            missing_pattern=_names(raw.get("missing_pattern", ()), "missing_pattern"),
        )

    def to_json(self) -> str:
        """Pretty JSON text, as stored in ``schemas/datasets``."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def schema_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON form; equal schemas hash equal on every site."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> DatasetSchema:
        """Read a schema file; raises ConfigError if it is missing or invalid."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read dataset schema {path}: {exc}") from exc
        return cls.from_dict(raw)

    @classmethod
    def load_named(cls, name: str) -> DatasetSchema:
        """Load the bundled schema ``schemas/datasets/<name>.json``."""
        return cls.load(schema_path(name))

    def save(self, path: str | Path) -> None:
        """Write the schema as JSON."""
        Path(path).write_text(self.to_json(), encoding="utf-8")


def _names(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{field} must be a list of column names, got {value!r}")
    return tuple(value)


def schema_path(name: str) -> Path:
    """Path of the bundled schema file for dataset ``name``."""
    return _SCHEMA_DIR / f"{name}.json"

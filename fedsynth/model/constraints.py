"""Sampling constraints: a tiny, safe expression language (no ``eval``).

Grammar (clauses joined by ``and``; strings in single or double quotes)::

    expr   := clause ("and" clause)*
    clause := NAME op value | NAME "in" list | NAME "not" "in" list
    op     := "==" | "!=" | ">=" | "<=" | ">" | "<"
    value  := NUMBER | STRING | True | False
    list   := "[" value ("," value)* "]"   (or parentheses)

Example: ``age>=40 and age<=60 and sex=='Female' and num>0``. Each column gets one
:class:`ColumnConstraint` (an interval and/or a set of allowed and excluded values). A missing value
never satisfies a constraint on its column.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from fedsynth.data.schema import ColumnKind, ColumnSpec, DatasetSchema
from fedsynth.errors import ConstraintError

__all__ = ["ColumnConstraint", "Constraints", "Interval"]

Value = float | str | bool
_TOKEN = re.compile(
    r"\s*(?:(?P<num>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<str>'[^']*'|\"[^\"]*\")"
    r"|(?P<op>==|!=|>=|<=|>|<)|(?P<punct>[\[\](),])|(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
)


@dataclass(frozen=True, slots=True)
class Interval:
    """An interval of the real line; ``lo_open``/``hi_open`` exclude the end points."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def intersect(self, other: Interval) -> Interval:
        """The intersection of two intervals."""
        lo, lo_open = max((self.lo, self.lo_open), (other.lo, other.lo_open))
        hi, hi_open = min((self.hi, not self.hi_open), (other.hi, not other.hi_open))
        return Interval(lo, hi, lo_open, not hi_open)

    def is_empty(self) -> bool:
        """True when no real number lies inside."""
        return self.lo > self.hi or (self.lo == self.hi and (self.lo_open or self.hi_open))

    def contains(self, x: np.ndarray) -> np.ndarray:
        """Elementwise membership (NaN is never inside)."""
        above = x > self.lo if self.lo_open else x >= self.lo
        below = x < self.hi if self.hi_open else x <= self.hi
        return np.asarray(above & below)

    def __str__(self) -> str:
        return (
            f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        )


@dataclass(frozen=True, slots=True)
class ColumnConstraint:
    """One column's requirement: inside ``interval``, in ``allowed``, not in ``excluded``."""

    column: str
    interval: Interval = field(default_factory=Interval)
    allowed: frozenset[Value] | None = None
    excluded: frozenset[Value] = frozenset()

    def merge(self, other: ColumnConstraint) -> ColumnConstraint:
        """Both constraints at once."""
        allowed = (
            self.allowed
            if other.allowed is None
            else (other.allowed if self.allowed is None else self.allowed & other.allowed)
        )
        return replace(
            self,
            interval=self.interval.intersect(other.interval),
            allowed=allowed,
            excluded=self.excluded | other.excluded,
        )

    def admits(self, value: Value) -> bool:
        """True when the single ``value`` satisfies the constraint."""
        if self.allowed is not None and value not in self.allowed:
            return False
        if value in self.excluded:
            return False
        if isinstance(value, str):
            return True
        return bool(self.interval.contains(np.array([float(value)]))[0])


@dataclass(frozen=True, slots=True)
class Constraints:
    """A parsed constraint expression: one :class:`ColumnConstraint` per column."""

    expression: str
    columns: tuple[ColumnConstraint, ...]

    @classmethod
    def parse(cls, expression: str, schema: DatasetSchema | None = None) -> Constraints:
        """Parse ``expression``; with a ``schema``, also :meth:`validate` it."""
        tokens = _tokenize(expression)
        merged: dict[str, ColumnConstraint] = {}
        pos = 0
        while pos < len(tokens):
            clause, pos = _clause(tokens, pos, expression)
            merged[clause.column] = (
                merged[clause.column].merge(clause) if clause.column in merged else clause
            )
            if pos < len(tokens):
                if tokens[pos] != ("name", "and"):
                    raise ConstraintError(
                        f"expected 'and' in {expression!r}, got {tokens[pos][1]!r}"
                    )
                pos += 1
                if pos == len(tokens):
                    raise ConstraintError(f"{expression!r} ends with 'and'")
        result = cls(expression, tuple(merged.values()))
        if schema is not None:
            result.validate(schema)
        return result

    def get(self, column: str) -> ColumnConstraint | None:
        """The constraint on ``column``, if any."""
        return next((c for c in self.columns if c.column == column), None)

    def validate(self, schema: DatasetSchema) -> None:
        """Raise ConstraintError naming the first unknown, unmodelled or infeasible column."""
        for cc in self.columns:
            if not schema.has_column(cc.column):
                raise ConstraintError(f"unknown column {cc.column!r} in {self.expression!r}")
            spec = schema.column(cc.column)
            if not spec.modelled:
                raise ConstraintError(
                    f"column {cc.column!r} is a {spec.role} column, not generated"
                )
            _check_feasible(cc, spec)

    def allowed_levels(self, spec: ColumnSpec) -> list[int]:
        """Indices of the levels of discrete column ``spec`` that satisfy the constraints."""
        levels = spec.levels() or ()
        cc = self.get(spec.name)
        if cc is None:
            return list(range(len(levels)))
        return [i for i, level in enumerate(levels) if cc.admits(_as_value(level))]

    def check(self, df: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the rows of ``df`` that satisfy every constraint."""
        mask = np.ones(len(df), dtype=bool)
        for cc in self.columns:
            mask &= _column_mask(df[cc.column], cc)
        return mask

    def __str__(self) -> str:
        return self.expression


def _tokenize(expression: str) -> list[tuple[str, str]]:
    tokens, pos, text = [], 0, expression.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ConstraintError(f"cannot parse {expression!r} at position {pos}: {text[pos:]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    if not tokens:
        raise ConstraintError("empty constraint expression")
    return tokens


def _value(token: tuple[str, str], expression: str) -> Value:
    kind, text = token
    if kind == "num":
        return float(text)
    if kind == "str":
        return text[1:-1]
    if kind == "name" and text in ("True", "False", "true", "false"):
        return text.lower() == "true"
    raise ConstraintError(f"expected a value in {expression!r}, got {text!r}")


def _at(tokens: list[tuple[str, str]], i: int, expr: str) -> tuple[str, str]:
    if i >= len(tokens):
        raise ConstraintError(f"{expr!r} ends in the middle of a clause")
    return tokens[i]


def _clause(tokens: list[tuple[str, str]], pos: int, expr: str) -> tuple[ColumnConstraint, int]:
    kind, name = _at(tokens, pos, expr)
    if kind != "name" or name in ("and", "in", "not"):
        raise ConstraintError(f"expected a column name in {expr!r}, got {name!r}")
    kind, op = _at(tokens, pos + 1, expr)
    if kind == "op":
        return _comparison(name, op, _value(_at(tokens, pos + 2, expr), expr), expr), pos + 3
    negate = op == "not"
    if negate:
        pos += 1
        kind, op = _at(tokens, pos + 1, expr)
    if op != "in":
        raise ConstraintError(f"expected an operator after {name!r} in {expr!r}, got {op!r}")
    values, pos = _list(tokens, pos + 2, expr)
    if negate:
        return ColumnConstraint(name, excluded=frozenset(values)), pos
    return ColumnConstraint(name, allowed=frozenset(values)), pos


def _list(tokens: list[tuple[str, str]], pos: int, expr: str) -> tuple[list[Value], int]:
    opening = _at(tokens, pos, expr)[1]
    if opening not in ("[", "("):
        raise ConstraintError(f"expected a list after 'in' in {expr!r}")
    closing = "]" if opening == "[" else ")"
    values: list[Value] = []
    pos += 1
    while True:
        values.append(_value(_at(tokens, pos, expr), expr))
        sep = _at(tokens, pos + 1, expr)[1]
        pos += 2
        if sep == closing:
            return values, pos
        if sep != ",":
            raise ConstraintError(f"expected ',' or {closing!r} in {expr!r}, got {sep!r}")


def _comparison(name: str, op: str, value: Value, expr: str) -> ColumnConstraint:
    if op == "==":
        return ColumnConstraint(name, allowed=frozenset([value]))
    if op == "!=":
        return ColumnConstraint(name, excluded=frozenset([value]))
    if isinstance(value, str | bool):
        raise ConstraintError(f"{name} {op} {value!r}: order comparisons need a number ({expr!r})")
    intervals = {
        ">=": Interval(lo=value),
        ">": Interval(lo=value, lo_open=True),
        "<=": Interval(hi=value),
        "<": Interval(hi=value, hi_open=True),
    }
    return ColumnConstraint(name, interval=intervals[op])


def _as_value(level: object) -> Value:
    if isinstance(level, bool | str):
        return level
    return float(level)  # type: ignore[arg-type]


def _check_feasible(cc: ColumnConstraint, spec: ColumnSpec) -> None:
    levels = spec.levels()
    if spec.kind is ColumnKind.CATEGORICAL:
        if cc.interval != Interval():
            raise ConstraintError(f"column {spec.name!r} is categorical: use ==, != or in")
        unknown = sorted(
            str(v) for v in (cc.allowed or set()) | cc.excluded if v not in spec.categories
        )
        if unknown:
            raise ConstraintError(
                f"category {unknown[0]!r} is not in the schema's categories for {spec.name!r}: "
                f"{list(spec.categories)}"
            )
    if levels is not None:
        if not any(cc.admits(_as_value(level)) for level in levels):
            raise ConstraintError(
                f"no value of {spec.name!r} satisfies the constraints (levels {list(levels)})"
            )
        return
    if any(isinstance(v, str | bool) for v in (cc.allowed or set())):
        raise ConstraintError(f"column {spec.name!r} is numeric; compare it with numbers")
    bounds = spec.bounds
    box = cc.interval if bounds is None else cc.interval.intersect(Interval(bounds.lo, bounds.hi))
    if box.is_empty():
        raise ConstraintError(
            f"constraint {cc.interval} on {spec.name!r} lies outside its clinical bounds "
            f"[{bounds.lo:g}, {bounds.hi:g}]"
            if bounds
            else f"constraint on {spec.name!r} is empty"
        )
    if cc.allowed is not None and not any(
        cc.admits(v) and box.contains(np.array([v]))[0] for v in cc.allowed
    ):
        raise ConstraintError(f"no allowed value of {spec.name!r} lies inside {box}")
    if spec.kind is ColumnKind.INTEGER and math.floor(box.hi) < math.ceil(box.lo):
        raise ConstraintError(f"no integer value of {spec.name!r} lies inside {box}")


def _column_mask(series: pd.Series, cc: ColumnConstraint) -> np.ndarray:
    present = series.notna().to_numpy()
    if series.dtype == object:
        values = series.astype(object).where(series.notna(), None)
        ok = np.array([v is not None and cc.admits(str(v)) for v in values], dtype=bool)
        return np.asarray(present & ok, dtype=bool)
    if str(series.dtype) == "boolean":
        filled = series.fillna(False).astype(bool)
        return np.asarray(present & np.array([cc.admits(bool(v)) for v in filled], dtype=bool))
    x = series.to_numpy(dtype=np.float64, na_value=np.nan)
    ok = cc.interval.contains(x)
    if cc.allowed is not None:
        ok &= np.isin(x, [float(v) for v in cc.allowed if not isinstance(v, str)])
    if cc.excluded:
        ok &= ~np.isin(x, [float(v) for v in cc.excluded if not isinstance(v, str)])
    return np.asarray(present & ok, dtype=bool)

"""``fedsynth evaluate REAL SYNTH --out DIR``: compare real and synthetic data, write a report.

Reads CSV or Parquet (by extension). Without ``--holdout`` a fixed-seed 20% of REAL is held out
and the report says so: that split only means something if the generator never saw those rows.
``--schema`` takes a JSON dataset schema (``schemas/datasets/*.json``) and reads from it the column
kinds, identifier columns (left out), per-column missing-value codes (turned into NaN) and the
conditioning column (the default target); without one the kinds are inferred from REAL's dtypes.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from fedsynth.errors import ConfigError
from fedsynth.eval.columns import ColumnKind, ColumnSpec, column_specs_from_frame
from fedsynth.eval.report import EvaluationReport, evaluate, split_holdout, write_report
from fedsynth.eval.utility import threshold_target

__all__ = ["SchemaHints", "configure", "load_frame", "read_schema_hints", "run"]

_log = logging.getLogger(__name__)

_NUMERIC_KINDS = {"numeric", "numerical", "continuous", "integer", "int", "float", "real"}
_CATEGORICAL_KINDS = {"categorical", "category", "boolean", "bool", "binary", "ordinal", "string"}
_SKIPPED_KINDS = {"id", "identifier"}
HOLDOUT_FRACTION = 0.2


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the ``evaluate`` arguments."""
    parser.add_argument("real", type=Path, help="real data the generator saw (csv/parquet)")
    parser.add_argument("synth", type=Path, help="synthetic data (csv/parquet)")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.json/.html")
    parser.add_argument("--schema", type=Path, help="dataset schema JSON (columns[].name/kind)")
    parser.add_argument("--holdout", type=Path, help="real rows the generator never saw")
    parser.add_argument("--target",
                        help="column to predict for utility (default: the schema's conditioning)")
    parser.add_argument("--positive", default=">0",
                        help="rule making the target binary, e.g. '>0' or '==yes' (default >0)")
    parser.add_argument("--drop", action="append", default=[], metavar="COL",
                        help="column to leave out, such as an identifier (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the holdout split")
    parser.add_argument("--no-sdmetrics", action="store_true", help="skip the SDMetrics score")


def load_frame(path: Path) -> pd.DataFrame:
    """Reads a CSV or Parquet file, chosen by extension.

    Raises:
        ConfigError: If the file is missing, unreadable or of another type.
    """
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".parquet", ".pq"}:
        raise ConfigError(f"{path}: expected a .csv or .parquet file")
    try:
        return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _kind(name: str, kind: str) -> ColumnKind | None:
    lowered = kind.lower()
    if lowered in _NUMERIC_KINDS:
        return ColumnKind.NUMERIC
    if lowered in _CATEGORICAL_KINDS:
        return ColumnKind.CATEGORICAL
    if lowered in _SKIPPED_KINDS:
        return None
    raise ConfigError(f"schema column {name!r} has unknown kind {kind!r}")


@dataclass(frozen=True, slots=True)
class SchemaHints:
    """What the evaluation takes from a dataset schema file.

    Attributes:
        specs: Column kinds, or None if the file does not state them.
        target: The schema's conditioning column (the default ``--target``), if any.
        missing_codes: Per column, values that stand for "missing" (e.g. chol 0).
    """

    specs: tuple[ColumnSpec, ...] | None
    target: str | None
    missing_codes: dict[str, tuple[object, ...]]


def read_schema_hints(path: Path) -> SchemaHints:
    """Reads ``columns[].name/kind/role/missing_codes`` and ``conditioning`` from a schema JSON.

    Columns whose kind is ``id``/``identifier`` or whose role is ``identifier`` are left out.

    Raises:
        ConfigError: If the file cannot be read or a kind is unknown.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read schema {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"schema {path} is not a JSON object")
    columns = [c for c in document.get("columns") or [] if isinstance(c, dict) and "name" in c]
    target = document.get("conditioning")
    codes = {str(c["name"]): tuple(c.get("missing_codes") or ()) for c in columns}
    if not columns or not all("kind" in c for c in columns):
        return SchemaHints(None, target if isinstance(target, str) else None, codes)
    specs = []
    for column in columns:
        kind = _kind(str(column["name"]), str(column["kind"]))
        if kind is not None and column.get("role") not in _SKIPPED_KINDS:
            specs.append(ColumnSpec(str(column["name"]), kind))
    return SchemaHints(tuple(specs), target if isinstance(target, str) else None, codes)


def _choose_specs(
    args: argparse.Namespace, hints: SchemaHints, real: pd.DataFrame, synth: pd.DataFrame
) -> tuple[ColumnSpec, ...]:
    specs = hints.specs
    if specs is None:
        if args.schema:
            _log.warning("schema %s states no column kinds; inferring them from REAL", args.schema)
        specs = column_specs_from_frame(real)
    dropped = set(args.drop)
    kept = [s for s in specs if s.name not in dropped and s.name in synth and s.name in real]
    absent = [s.name for s in specs if s.name not in dropped and s not in kept]
    if absent:
        _log.warning("columns absent from REAL or SYNTH, not evaluated: %s", absent)
    if not kept:
        raise ConfigError("no column is present in both REAL and SYNTH")
    return tuple(kept)


def _blank_missing_codes(frame: pd.DataFrame, codes: dict[str, tuple[object, ...]]) -> pd.DataFrame:
    """Replaces each column's missing-value codes with NaN."""
    present = {name: list(values) for name, values in codes.items() if values and name in frame}
    if not present:
        return frame
    out = frame.copy()
    for name, values in present.items():
        out[name] = out[name].mask(out[name].isin(values))
    return out


def _split(args: argparse.Namespace, real: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    if args.holdout is not None:
        return real, load_frame(args.holdout), f"Held-out rows read from {args.holdout.name}."
    train, holdout = split_holdout(real, np.random.default_rng(args.seed), HOLDOUT_FRACTION)
    note = (
        f"No held-out file was given: {len(holdout)} rows ({HOLDOUT_FRACTION:.0%}) of "
        f"{args.real.name} were held out at random (seed {args.seed}). The utility and privacy "
        "numbers are only meaningful if the generator was not trained on those rows."
    )
    return train, holdout, note


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _print_summary(report: EvaluationReport, out: Path) -> None:
    table = Table(title="fedsynth evaluate")
    table.add_column("measure")
    table.add_column("value", justify="right")
    fid, priv, util = report.fidelity, report.privacy, report.utility
    rows = [
        ("quality", _fmt(fid.quality_score)),
        ("column shapes / pair trends",
         f"{_fmt(fid.column_shapes_score)} / {_fmt(fid.pair_trends_score)}"),
        ("SDMetrics quality", _fmt(fid.sdmetrics_quality)),
        ("TSTR / TRTR AUC",
         "n/a" if util is None else f"{_fmt(util.tstr.auc)} / {_fmt(util.trtr.auc)}"),
        ("closer-to-train share (0.5 ideal)", f"{priv.closer_to_train_share:.3f}"),
        ("membership inference AUC (0.5 ideal)", f"{priv.membership_auc:.3f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console = Console()
    console.print(table)
    console.print(f"report written to {out / 'report.html'}")


def run(args: argparse.Namespace) -> int:
    """Evaluates SYNTH against REAL and writes the report; returns 0."""
    hints = read_schema_hints(args.schema) if args.schema else SchemaHints(None, None, {})
    real = _blank_missing_codes(load_frame(args.real), hints.missing_codes)
    synth = _blank_missing_codes(load_frame(args.synth), hints.missing_codes)
    specs = _choose_specs(args, hints, real, synth)
    train, holdout, note = _split(args, real)
    holdout = _blank_missing_codes(holdout, hints.missing_codes)
    target_column = args.target or hints.target
    target = threshold_target(target_column, args.positive) if target_column else None
    notes: Sequence[str] = [note] if target else [note, "No target column: utility skipped."]
    report = evaluate(train, synth, holdout, specs, target,
                      with_sdmetrics=not args.no_sdmetrics, notes=notes)
    write_report(report, train, synth, args.out)
    _print_summary(report, args.out)
    return 0

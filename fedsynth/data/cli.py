"""``fedsynth schema``: draft a dataset schema from a sample file, or validate a file against one.

fedsynth schema infer DATA [--out FILE] [--name NAME] [--target COL] [--site-column COL]
fedsynth schema validate DATA --schema FILE
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from fedsynth.data.infer import infer_schema
from fedsynth.data.schema import DatasetSchema
from fedsynth.data.validate import load_site_file, validate_frame

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``infer`` and ``validate`` sub-subcommands."""
    sub = parser.add_subparsers(dest="action", required=True)
    infer = sub.add_parser("infer", help="draft a schema from a sample CSV/Parquet file")
    infer.add_argument("data", type=Path, help="sample data file (.csv or .parquet)")
    infer.add_argument("--out", type=Path, help="write the draft here (default: print it)")
    infer.add_argument("--name", help="dataset name (default: the file's stem)")
    infer.add_argument("--target", help="target column (also the conditioning column)")
    infer.add_argument("--site-column", help="column naming the site (hospital)")
    check = sub.add_parser("validate", help="validate a data file against a schema")
    check.add_argument("data", type=Path, help="data file (.csv or .parquet)")
    check.add_argument("--schema", type=Path, required=True, help="dataset schema JSON")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; errors surface as FedSynthError (exit code 1)."""
    console = Console(stderr=True)
    if args.action == "validate":
        schema = DatasetSchema.load(args.schema)
        clean = validate_frame(load_site_file(args.data), schema)
        console.print(f"[green]ok[/green]: {len(clean)} rows match schema {schema.name!r}")
        return 0
    df = load_site_file(args.data)
    schema = infer_schema(
        df, args.name or args.data.stem, target=args.target, site_column=args.site_column
    )
    if args.out is None:
        Console().print_json(schema.to_json())
    else:
        schema.save(args.out)
        console.print(f"draft schema written to {args.out}: review bounds and missing codes")
    return 0

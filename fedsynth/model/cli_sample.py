"""``fedsynth sample MODEL -n N [--where EXPR] --out FILE``: synthetic rows to CSV or Parquet.

Like the gateway, it first calibrates the model's level and missing shares to the histograms its
encoder was fitted from (:meth:`~fedsynth.model.tabddpm.TabularDiffusion.calibrate_marginals`,
post-processing, deterministic); ``--no-calibrate`` samples the model as trained.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console

from fedsynth.errors import ConfigError
from fedsynth.model.constraints import Constraints
from fedsynth.model.tabddpm import TabularDiffusion

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``fedsynth sample``."""
    parser.add_argument("model", type=Path, help="model file written by `fedsynth train`")
    parser.add_argument("-n", type=int, required=True, help="number of rows")
    parser.add_argument("--where", help="constraints, e.g. \"age>=40 and sex=='Female'\"")
    parser.add_argument("--out", type=Path, required=True, help="output file (.csv or .parquet)")
    parser.add_argument("--max-tries", type=int, default=20, help="batches before giving up")
    parser.add_argument("--seed", type=int, help="seed (default: fresh randomness)")
    parser.add_argument(
        "--guidance",
        type=float,
        help="classifier-free guidance scale (default: the model's own, 1.5 for the DP recipe, "
        "else 1; above 1 follows the conditioning column more closely: utility up, fidelity "
        "down); shares are calibrated at this scale",
    )
    parser.add_argument(
        "--no-calibrate",
        action="store_true",
        help="skip calibrating level and missing shares to the model's released histograms",
    )


def run(args: argparse.Namespace) -> int:
    """Sample and write; ConstraintError (exit 1) when the constraints cannot be met."""
    suffix = args.out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ConfigError(f"--out must end in .csv or .parquet, got {args.out.name!r}")
    console = Console(stderr=True)
    model = TabularDiffusion.load(args.model)
    conditions = None
    if args.where:
        conditions = Constraints.parse(args.where, model.encoder.schema)
    if not args.no_calibrate:
        with console.status("calibrating level shares to the released histograms"):
            model.calibrate_marginals(guidance=args.guidance)
    with console.status(f"sampling {args.n} rows"):
        df = model.sample(
            args.n,
            conditions=conditions,
            rng=np.random.default_rng(args.seed),
            max_tries=args.max_tries,
            guidance=args.guidance,
        )
    if suffix == ".csv":
        df.to_csv(args.out, index=False)
    else:
        df.to_parquet(args.out, index=False)
    console.print(f"wrote {len(df)} rows to {args.out}")
    return 0

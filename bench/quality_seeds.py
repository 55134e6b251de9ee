"""Benchmark: missing-rate calibration over several training seeds of the federated DP model.

``python -m bench.quality_seeds [--quick] [--seeds 0 1 2 3]``. For each seed the federated
epsilon-8 model of :mod:`bench.quality` (the same split, plan and scoring) is trained once, then
scored as sampled ("raw") and after :meth:`fedsynth.model.TabularDiffusion.calibrate_missing`
("calibrated", what the gateway serves). One seed is one draw of a noisy DP training run, so the
single-seed rows of ``bench.quality`` cannot tell a small gain from noise; this run shows the
spread. The last line is ``RESULT calibrated_sdmetrics_gain=<mean gain> target=0 met=yes|no``
(met when calibration raises the mean SDMetrics score; the TSTR change is printed beside it).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from bench.quality import _row, eps8_setup, quality_run
from bench.quality_runs import fit_federated
from bench.quality_setup import num_or_nan

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Train and score the federated epsilon-8 model per seed; prints a table and the RESULT."""
    parser = argparse.ArgumentParser(prog="python -m bench.quality_seeds", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the tiny quick model, seeds 0 1")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2 3)")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2, 3])
    console = Console(width=120)
    table = Table(title="federated DP eps=8: raw vs missing-calibrated, per training seed")
    for col in ("seed", "SDMetrics raw", "calibrated", "gain", "TSTR AUC raw", "calibrated"):
        table.add_column(col, justify="right")
    gains: list[float] = []
    tstr: list[float] = []
    with quality_run():
        run = eps8_setup(args.quick, rake=True)
        split, n = run.split, len(run.split.train)
        for seed in seeds:
            console.print(f"[dim]training seed {seed}[/]")
            fitted = fit_federated(run.sites, split.schema, run.training, n_synthetic=n, seed=seed)
            assert fitted.calibrated is not None  # rake=True asks for it
            raw = _row("raw", "", fitted, split)
            cal = _row("calibrated", "", dataclasses.replace(fitted, synthetic=fitted.calibrated),
                       split)
            q_raw, q_cal = num_or_nan(raw.headline_quality), num_or_nan(cal.headline_quality)
            t_raw, t_cal = num_or_nan(raw.tstr_auc), num_or_nan(cal.tstr_auc)
            gains.append(q_cal - q_raw)
            tstr.append(t_cal - t_raw)
            table.add_row(str(seed), f"{q_raw:.3f}", f"{q_cal:.3f}", f"{q_cal - q_raw:+.3f}",
                          f"{t_raw:.3f}", f"{t_cal:.3f}")
    console.print(table)
    gain, tstr_change = sum(gains) / len(gains), sum(tstr) / len(tstr)
    console.print(f"mean SDMetrics gain {gain:+.3f}, mean TSTR AUC change {tstr_change:+.3f}",
                  highlight=False)
    met = "yes" if gain > 0 else "no"
    print(f"RESULT calibrated_sdmetrics_gain={gain:.3f} target=0 met={met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

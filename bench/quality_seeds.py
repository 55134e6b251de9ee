"""Benchmark: marginal calibration and raking over several training seeds of the federated DP model.

``python -m bench.quality_seeds [--quick] [--seeds 0 1 2 3]``. For each seed the federated
epsilon-8 model of :mod:`bench.quality` (the same split, plan and scoring) is trained once, then
scored as sampled ("raw"), raked to the released DP histograms (``fedsynth.model.calibration``)
and after :meth:`fedsynth.model.TabularDiffusion.calibrate_marginals` ("calibrated", what the
gateway serves). All three use only the model and the histograms the sites already released, so
none costs privacy. One seed is one draw of a noisy DP training run, so the single-seed rows of
``bench.quality`` cannot tell a small gain from noise; this run shows the spread. The last line is
``RESULT calibrated_sdmetrics_gain=<mean gain> target=0 met=yes|no`` (met when calibration raises
the mean SDMetrics score over raw; the TSTR ratios are printed beside it).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
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
    table = Table(title="federated DP eps=8 per training seed: raw, raked, calibrated (served)")
    for col in ("seed", "SDMetrics raw", "raked", "calibrated", "TSTR ratio raw", "raked",
                "calibrated"):
        table.add_column(col, justify="right")
    kinds = ("raw", "raked", "calibrated")
    quality: dict[str, list[float]] = {k: [] for k in kinds}
    ratio: dict[str, list[float]] = {k: [] for k in kinds}
    with quality_run():
        run = eps8_setup(args.quick, rake=True)
        split, n = run.split, len(run.split.train)
        for seed in seeds:
            console.print(f"[dim]training seed {seed}[/]")
            fitted = fit_federated(run.sites, split.schema, run.training, n_synthetic=n, seed=seed)
            assert fitted.raked is not None and fitted.calibrated is not None  # rake=True
            frames = {"raw": fitted.synthetic, "raked": fitted.raked,
                      "calibrated": fitted.calibrated}
            for kind, frame in frames.items():
                row = _row(kind, "", dataclasses.replace(fitted, synthetic=frame), split)
                quality[kind].append(num_or_nan(row.headline_quality))
                ratio[kind].append(num_or_nan(row.auc_ratio))
            table.add_row(str(seed), *(f"{quality[k][-1]:.3f}" for k in kinds),
                          *(f"{ratio[k][-1]:.3f}" for k in kinds))
    table.add_row("mean", *(f"{statistics.fmean(quality[k]):.3f}" for k in kinds),
                  *(f"{statistics.fmean(ratio[k]):.3f}" for k in kinds))
    console.print(table)
    gains = [c - r for c, r in zip(quality["calibrated"], quality["raw"], strict=True)]
    gain = statistics.fmean(gains)
    higher = sum(g > 0 for g in gains)
    console.print(f"calibration raised SDMetrics in {higher} of {len(gains)} seeds "
                  f"(mean {gain:+.3f}); mean TSTR ratio {statistics.fmean(ratio['raw']):.3f} -> "
                  f"{statistics.fmean(ratio['calibrated']):.3f}", highlight=False)
    met = "yes" if gain > 0 else "no"
    print(f"RESULT calibrated_sdmetrics_gain={gain:.3f} target=0 met={met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

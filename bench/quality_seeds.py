"""Benchmark: marginal calibration and raking over several training seeds of the federated DP model.

``python -m bench.quality_seeds [--quick] [--seeds 0 1 2 3]``. For each seed the federated
epsilon-8 model of :mod:`bench.quality` (the same split, plan and scoring) is trained once, then
scored as sampled ("raw"), raked to the released DP histograms (``fedsynth.model.calibration``)
and after :meth:`fedsynth.model.TabularDiffusion.calibrate_marginals` ("calibrated", what the
gateway serves). All three use only the model and the histograms the sites already released, so
none costs privacy. One seed is one draw of a noisy DP training run, so the single-seed rows of
``bench.quality`` cannot tell a small gain from noise; this run shows the spread. Each model is
also sampled ``--draws`` times (736 rows each, as in the bench) and its scores averaged: one draw's
TSTR ratio moves by a few hundredths between draws of the same model. The last line is
``RESULT calibrated_sdmetrics_gain=<mean gain> target=0 met=yes|no`` (met when calibration raises
the mean SDMetrics score over raw; the TSTR ratios are printed beside it).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
from collections.abc import Sequence

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from bench.quality import _row, eps8_setup, quality_run
from bench.quality_runs import RAKE_POOL, Fitted, fit_federated
from bench.quality_setup import HeartSplit, num_or_nan
from fedsynth.data import Histograms
from fedsynth.model import TabularDiffusion
from fedsynth.model.calibration import rake_to_histograms

__all__ = ["main"]


KINDS = ("raw", "raked", "calibrated")


def _frames(model: TabularDiffusion, calibrated: TabularDiffusion, hist: Histograms, n: int,
            seed: int, draw: int) -> dict[str, pd.DataFrame]:
    """One draw of ``n`` rows of each kind: the trained model, raked, and calibrated."""
    rng = np.random.default_rng([seed, draw])
    raw = model.sample(n, rng=rng)
    raked = rake_to_histograms(model.sample(RAKE_POOL * n, rng=rng), hist,
                               model.encoder.schema, n, rng)
    return {"raw": raw, "raked": raked, "calibrated": calibrated.sample(n, rng=rng)}


def _scores(fitted: Fitted, split: HeartSplit, seed: int, draws: int
            ) -> dict[str, tuple[float, float, float]]:
    """Per kind: mean SDMetrics, mean TSTR ratio and the ratio's spread over ``draws`` draws."""
    model, hist = fitted.model, fitted.histograms
    assert model is not None and hist is not None  # ours
    calibrated = copy.deepcopy(model)
    calibrated.calibrate_marginals(seed=seed)
    quality: dict[str, list[float]] = {k: [] for k in KINDS}
    ratio: dict[str, list[float]] = {k: [] for k in KINDS}
    for draw in range(draws):
        frames = _frames(model, calibrated, hist, len(split.train), seed, draw)
        for kind, frame in frames.items():
            row = _row(kind, "", dataclasses.replace(fitted, synthetic=frame), split)
            quality[kind].append(num_or_nan(row.headline_quality))
            ratio[kind].append(num_or_nan(row.auc_ratio))
    return {k: (statistics.fmean(quality[k]), statistics.fmean(ratio[k]),
                statistics.pstdev(ratio[k])) for k in KINDS}


def main(argv: Sequence[str] | None = None) -> int:
    """Train and score the federated epsilon-8 model per seed; prints a table and the RESULT."""
    parser = argparse.ArgumentParser(prog="python -m bench.quality_seeds", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the tiny quick model, seeds 0 1")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2 3)")
    parser.add_argument("--draws", type=int, help="sample draws per model (default 5; quick 1)")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2, 3])
    draws = args.draws or (1 if args.quick else 5)
    console = Console(width=120)
    table = Table(title=f"federated DP eps=8 per training seed, mean of {draws} sample draws: "
                        "raw, raked, calibrated (served)")
    for col in ("seed", "SDMetrics raw", "raked", "calibrated", "TSTR ratio raw", "raked",
                "calibrated"):
        table.add_column(col, justify="right")
    per_seed: list[dict[str, tuple[float, float, float]]] = []
    with quality_run():
        run = eps8_setup(args.quick, rake=False)
        split = run.split
        for seed in seeds:
            console.print(f"[dim]training seed {seed}[/]")
            fitted = fit_federated(run.sites, split.schema, run.training,
                                   n_synthetic=len(split.train), seed=seed)
            got = _scores(fitted, split, seed, draws)
            per_seed.append(got)
            table.add_row(str(seed), *(f"{got[k][0]:.3f}" for k in KINDS),
                          *(f"{got[k][1]:.3f}" for k in KINDS))
    mean = {k: tuple(statistics.fmean(s[k][i] for s in per_seed) for i in range(3))
            for k in KINDS}
    table.add_row("mean", *(f"{mean[k][0]:.3f}" for k in KINDS),
                  *(f"{mean[k][1]:.3f}" for k in KINDS))
    console.print(table)
    gains = [s["calibrated"][0] - s["raw"][0] for s in per_seed]
    gain = statistics.fmean(gains)
    console.print(
        f"calibration raised SDMetrics for {sum(g > 0 for g in gains)} of {len(gains)} seeds "
        f"(mean {gain:+.3f}); TSTR ratio {mean['raw'][1]:.3f} -> {mean['calibrated'][1]:.3f}; "
        f"one draw's TSTR ratio spread (sd) {mean['raw'][2]:.3f} raw, "
        f"{mean['calibrated'][2]:.3f} calibrated", highlight=False)
    met = "yes" if gain > 0 else "no"
    print(f"RESULT calibrated_sdmetrics_gain={gain:.3f} target=0 met={met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

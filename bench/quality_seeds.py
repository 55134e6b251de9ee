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
import logging
import warnings
from collections.abc import Sequence

import torch
from rich.console import Console
from rich.table import Table

from bench.quality import FULL, QUICK, _row, _with_eps
from bench.quality_runs import fit_federated
from bench.quality_setup import load_heart, make_split
from fedsynth.data import DatasetSchema, split_by_site

__all__ = ["main"]


def _num(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def main(argv: Sequence[str] | None = None) -> int:
    """Train and score the federated epsilon-8 model per seed; prints a table and the RESULT."""
    parser = argparse.ArgumentParser(prog="python -m bench.quality_seeds", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the tiny quick model, seeds 0 1")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2 3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")  # SDMetrics and Opacus warn on every call
    plan = QUICK if args.quick else FULL
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2, 3])
    schema = DatasetSchema.load_named("heart_disease_uci")
    split = make_split(load_heart(schema), schema)
    sites = split_by_site(split.train, schema)
    training = dataclasses.replace(_with_eps(plan.private, 8.0), rake=True)
    console = Console(width=120)
    table = Table(title="federated DP eps=8: raw vs missing-calibrated, per training seed")
    for col in ("seed", "SDMetrics raw", "calibrated", "gain", "TSTR AUC raw", "calibrated"):
        table.add_column(col, justify="right")
    gains: list[float] = []
    tstr: list[float] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in seeds:
            console.print(f"[dim]training seed {seed}[/]")
            fitted = fit_federated(sites, schema, training, n_synthetic=len(split.train), seed=seed)
            assert fitted.calibrated is not None  # rake=True asks for it
            raw = _row("raw", "", fitted, split)
            cal = _row("calibrated", "", dataclasses.replace(fitted, synthetic=fitted.calibrated),
                       split)
            q_raw, q_cal = _num(raw.headline_quality), _num(cal.headline_quality)
            gains.append(q_cal - q_raw)
            tstr.append(_num(cal.tstr_auc) - _num(raw.tstr_auc))
            table.add_row(str(seed), f"{q_raw:.3f}", f"{q_cal:.3f}", f"{q_cal - q_raw:+.3f}",
                          f"{_num(raw.tstr_auc):.3f}", f"{_num(cal.tstr_auc):.3f}")
    finally:
        torch.set_num_threads(threads)
    console.print(table)
    gain, tstr_change = sum(gains) / len(gains), sum(tstr) / len(tstr)
    console.print(f"mean SDMetrics gain {gain:+.3f}, mean TSTR AUC change {tstr_change:+.3f}",
                  highlight=False)
    met = "yes" if gain > 0 else "no"
    print(f"RESULT calibrated_sdmetrics_gain={gain:.3f} target=0 met={met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

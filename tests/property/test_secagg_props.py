"""Hypothesis properties of SecAgg+: masks cancel, dropout recovery is exact, the transcript never
holds both shares of one site, and a server state rebuilt from its checkpoint document goes on
exactly as the original."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.secagg import ClientUpdate, FixedPointSpec, ServerConfig, ServerStage
from fedsynth.secagg.fixedpoint import encode_weighted
from fedsynth.secagg.graph import neighbour_graph
from fedsynth.secagg.server import (
    ServerState,
    server_from_doc,
    server_step,
    server_to_doc,
    start_server,
)
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


def _through_checkpoint(state: ServerState) -> ServerState:
    """The state after a checkpoint round trip: JSON for the document, a fresh array for the sum."""
    doc, total = server_to_doc(state)
    doc = json.loads(json.dumps(doc))
    return server_from_doc(state.config, doc, None if total is None else total.copy())


@SETTINGS
@given(cohorts(complete=False), st.data())
def test_a_restart_at_any_point_of_the_transcript_gives_the_same_sum(cohort, data) -> None:  # type: ignore[no-untyped-def]
    """Replaying the server's transcript with the state checkpointed and rebuilt before any one
    message (every cut is tried; dropouts of any pattern) ends in the same stage and the same
    result, bit for bit."""
    cfg, updates, seeds = cohort
    sites = sorted(updates)
    lost = data.draw(st.lists(st.sampled_from(sites), unique=True, max_size=2))
    vanish = {s: data.draw(st.sampled_from(list(Vanish))) for s in lost}
    run = run_cohort(cfg, updates, seeds, vanish)
    for cut in range(len(run.transcript)):
        state = start_server(cfg)
        for i, message in enumerate(run.transcript):
            if i == cut and state.stage not in (ServerStage.DONE, ServerStage.FAILED):
                rebuilt = _through_checkpoint(state)
                for name in ServerState.__slots__:  # type: ignore[attr-defined]
                    if name != "total":
                        assert getattr(rebuilt, name) == getattr(state, name), name
                assert (rebuilt.total is None) == (state.total is None)
                assert state.total is None or np.array_equal(rebuilt.total, state.total)
                state = rebuilt
            state, _ = server_step(state, message)
        assert state.stage == run.server.stage and state.failure == run.server.failure
        if run.server.result is not None:
            assert state.result is not None
            assert np.array_equal(state.result.sum_vector, run.server.result.sum_vector)
            assert state.result.weight_sum == run.server.result.weight_sum
            assert state.result.survivors == run.server.result.survivors

"""The sans-I/O aggregator engine: events in, events out, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.engine import (
    Accepted,
    AggregatorEngine,
    Applied,
    CohortAggregated,
    EngineConfig,
    GlobalVersionPublished,
    Rejected,
    RosterChanged,
    RoundTimeout,
    UpdateReceived,
)
from aggregator.strategies import BufferSpec, ClientUpdate, FedAsync, FedAvg, FedBuff
from aggregator.validation import ReasonCode

SITES = frozenset({"s1", "s2", "s3"})


def engine(strategy=None, **cfg) -> AggregatorEngine:
    return AggregatorEngine(strategy or FedBuff(BufferSpec(2)), EngineConfig(n_parameters=2, **cfg))


def received(uid: str, site: str, base: int = 0, delta=(1.0, 1.0), n: int = 1) -> UpdateReceived:
    update = ClientUpdate(uid, site, base, n, np.array(delta, dtype=np.float32))
    return UpdateReceived(update, f"msg-{uid}")


def run(eng: AggregatorEngine, events, state=None):
    state = state or eng.initial_state(np.zeros(2, dtype=np.float32), SITES)
    out = []
    for event in events:
        state, emitted = eng.step(state, event)
        out.extend(emitted)
    return state, out


def test_fedbuff_buffers_then_publishes() -> None:
    eng = engine()
    state, out = run(eng, [received("a", "s1", n=1, delta=(2, 0)), received("b", "s2", n=3)])
    assert isinstance(out[0], Accepted) and out[0].pending == 1
    assert [type(e) for e in out[1:]] == [Applied, Applied, GlobalVersionPublished]
    pub = out[-1]
    assert pub.version == 1 and pub.contributors == ("s1", "s2")
    np.testing.assert_allclose(pub.vector, [1.25, 0.75])  # (1*[2,0] + 3*[1,1]) / 4
    assert state.model_version == 1 and state.params is pub.vector
    assert state.history[-1].contributors == ("s1", "s2")


def test_replay_of_a_buffered_or_applied_update_is_rejected() -> None:
    eng = engine()
    first = received("a", "s1")
    state, _ = run(eng, [first])
    state, out = eng.step(state, first)
    assert isinstance(out[0], Rejected) and out[0].reason.reason_code == ReasonCode.REPLAY
    state, _ = run(eng, [received("b", "s2")], state)  # applied now
    _, out = eng.step(state, first)
    assert out[0].reason.reason_code == ReasonCode.REPLAY


def test_same_update_id_under_a_new_message_id_is_a_replay() -> None:
    eng = engine()
    state, _ = run(eng, [received("a", "s1")])
    again = UpdateReceived(received("a", "s1").update, "other-message")
    _, out = eng.step(state, again)
    assert out[0].reason.reason_code == ReasonCode.REPLAY


def test_ids_are_scoped_by_site_so_another_site_cannot_claim_them_first() -> None:
    """A roster member that reads a site's ids off the updates topic and sends its own update
    under them first must not make the site's update a replay."""
    eng = engine(strategy=FedBuff(BufferSpec(3)))
    honest = received("a", "s1")
    squatter = UpdateReceived(received("a", "s2").update, honest.message_id)
    state, out = run(eng, [squatter, honest])
    assert [type(e) for e in out] == [Accepted, Accepted]
    _, out = eng.step(state, honest)  # the site's own resend is still a replay
    assert out[0].reason.reason_code == ReasonCode.REPLAY


def test_invalid_updates_leave_state_untouched() -> None:
    eng = engine(max_norm=5.0)
    state0 = eng.initial_state(np.zeros(2, dtype=np.float32), SITES)
    for bad in (
        received("x", "intruder"),
        received("y", "s1", base=3),
        received("z", "s1", delta=(30, 40)),
    ):
        state, out = eng.step(state0, bad)
        assert state is state0 and len(out) == 1 and isinstance(out[0], Rejected)


def test_strategy_refusal_becomes_a_rejection() -> None:
    eng = engine(FedAvg(2))
    state, _ = run(eng, [received("a", "s1")])
    _, out = eng.step(state, received("b", "s1"))
    assert out[0].reason.reason_code == "duplicate_site"


def test_round_timeout_for_the_current_version_only() -> None:
    eng = engine(FedAvg(3, min_sites_on_timeout=1))
    state, _ = run(eng, [received("a", "s1", delta=(2, 4))])
    same, out = eng.step(state, RoundTimeout(version=7))
    assert same is state and out == []
    state, out = eng.step(state, RoundTimeout(version=0))
    assert state.model_version == 1
    np.testing.assert_allclose(out[-1].vector, [2, 4])


def test_roster_change_admits_new_sites() -> None:
    eng = engine(FedAsync(1.0))
    state, out = run(eng, [received("a", "s9")])
    assert out[0].reason.reason_code == ReasonCode.UNKNOWN_SITE
    state, out = run(eng, [RosterChanged(frozenset({"s9"})), received("a", "s9")], state)
    assert isinstance(out[-1], GlobalVersionPublished) and state.known_sites == {"s9"}


def test_cohort_result_is_one_fedbuff_step_and_cannot_replay() -> None:
    eng = engine(cohort_server_lr=0.5)
    cohort = CohortAggregated("c1", np.array([2.0, 4.0]), 4.0, ("s1", "s2"), target_version=0)
    state, out = run(eng, [cohort])
    assert [type(e) for e in out] == [Applied, GlobalVersionPublished]
    np.testing.assert_allclose(out[-1].vector, [0.25, 0.5])  # 0.5 * [2,4] / 4
    assert state.history[-1].source == "cohort:c1"
    _, out = eng.step(state, cohort)
    assert out[0].reason.reason_code == ReasonCode.REPLAY


@pytest.mark.parametrize(
    ("vec", "weight", "code"),
    [
        ([1.0, 2.0, 3.0], 1.0, ReasonCode.BAD_SHAPE),
        ([1.0, np.nan], 1.0, ReasonCode.NON_FINITE),
        ([1.0, 2.0], 0.0, ReasonCode.BAD_SAMPLE_COUNT),
    ],
)
def test_bad_cohort_results_are_rejected(vec, weight, code) -> None:
    _, out = run(engine(), [CohortAggregated("c", np.array(vec), weight, ("s1",), 0)])
    assert isinstance(out[0], Rejected) and out[0].reason.reason_code == code


def test_replay_window_is_pruned_and_old_replays_stay_rejected() -> None:
    eng = engine(FedAsync(1.0), max_staleness=1)
    events = [received("a", "s1", base=0), received("b", "s2", base=1), received("c", "s3", base=2)]
    state, _ = run(eng, events)
    assert state.model_version == 3 and sorted(state.seen) == [2]
    _, out = eng.step(state, events[0])
    assert out[0].reason.reason_code == ReasonCode.TOO_STALE


def _random_events(rng: np.random.Generator, n: int):
    events = []
    for i in range(n):
        base = int(rng.integers(0, max(1, i // 2) + 1))
        delta = rng.normal(size=2).astype(np.float32)
        site = f"s{int(rng.integers(1, 4))}"
        events.append(
            received(f"u{i}", site, base=min(base, i // 3), delta=delta, n=int(rng.integers(1, 50)))
        )
        if i % 4 == 3:
            events.append(events[int(rng.integers(0, len(events)))])  # a replay
    return events


def test_same_events_give_bit_identical_vectors() -> None:
    eng = engine(FedBuff(BufferSpec(3, 0.7)), max_staleness=5)
    events = _random_events(np.random.default_rng(7), 30)
    s1, o1 = run(eng, events)
    s2, o2 = run(eng, events)
    assert s1.model_version == s2.model_version >= 3
    assert s1.params.tobytes() == s2.params.tobytes()
    assert [type(e) for e in o1] == [type(e) for e in o2]
    assert any(isinstance(e, Rejected) for e in o1)

"""A site whose reported epsilon goes back has a second privacy ledger: it is suspended.

The pure :class:`PrivacyLedgers` first; then the aggregator's service in plain mode (no broker:
the runtime's real service fed signed records) and the secure cohort coordinator in memory
(the harness of ``test_cohorts.py``), where a refused masked input is a dropout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.secure import PendingUpdate
from agents.site import EXIT_SUSPENDED, GlobalVersion, SiteAgent
from aggregator.cohorts import CohortCoordinator
from aggregator.ledgers import PrivacyLedgers
from aggregator.service import AggregatorService, Phase
from fedsynth.errors import ConfigError
from schemas.registry import SchemaEntry, SchemaRegistry, default_registry
from schemas.signing import encode_signed
from tests.integration.harness import Federation
from tests.unit.service_maker import Maker
from tests.unit.test_agent_histograms import _agent
from tests.unit.test_agent_secure_wait import _Done, _Quiet, scripted
from tests.unit.test_cohorts import (
    ALL_SITES,
    N_SAMPLES,
    D,
    Net,
    config,
    delta_of,
    expected,
    finished_result,
    make_net,
)


# ------------------------------------------------------------------------------------ pure
def test_a_growing_epsilon_is_admitted_and_one_that_goes_back_suspends_the_site() -> None:
    ledgers = PrivacyLedgers()
    for eps in (0.5, 0.9, 1.4):
        assert ledgers.admit("A", eps) is None
        ledgers.record("A", eps)
    assert ledgers.refusal("A", 0.3) is not None and ledgers.suspended("A") is None  # a query
    why = ledgers.admit("A", 0.3)
    assert why is not None and "suspended" in why and "0.3 after one applied at 1.4" in why
    assert ledgers.suspended("A") is not None
    assert ledgers.admit("A", 9.0) is not None, "a second ledger that passes the first stays out"
    assert ledgers.admit("B", 0.1) is None and ledgers.suspended("B") is None


def test_an_equal_epsilon_suspends_since_every_update_spends_some() -> None:
    ledgers = PrivacyLedgers()
    ledgers.record("A", 1.0)
    assert ledgers.admit("A", 1.0) is not None and ledgers.suspended("A") is not None


def test_sites_without_dp_are_not_compared_and_bad_values_are_refused_without_suspending() -> None:
    ledgers = PrivacyLedgers()
    ledgers.record("A", math.inf)
    assert ledgers.admit("A", math.inf) is None and ledgers.admit("A", 0.5) is None
    for bad in (math.nan, -1.0):
        why = ledgers.admit("B", bad)
        assert why is not None and "not a privacy total" in why
    assert ledgers.suspended("B") is None


def test_state_round_trips_with_infinity_and_older_checkpoints_start_empty() -> None:
    ledgers = PrivacyLedgers()
    ledgers.record("A", 2.5)
    ledgers.record("B", math.inf)
    ledgers.record("C", 1.0)
    assert ledgers.admit("C", 0.5) is not None
    state = json.loads(json.dumps(ledgers.to_state()))  # as the checkpoint's header keeps it
    back = PrivacyLedgers.from_state(state)
    assert back.last("A") == 2.5 and back.last("B") == math.inf
    assert back.suspended("C") == ledgers.suspended("C")
    assert PrivacyLedgers.from_state(None).last("A") is None
    with pytest.raises(ConfigError, match="format"):
        PrivacyLedgers.from_state({**state, "format": 99})


def test_each_suspension_is_taken_once_and_refusals_without_one_give_none() -> None:
    ledgers = PrivacyLedgers()
    assert ledgers.admit("s1", 1.0) is None
    ledgers.record("s1", 1.0)
    assert ledgers.admit("s1", math.nan) is not None  # refused, no ledger's report
    assert ledgers.take_suspensions() == []
    why = ledgers.admit("s1", 0.5)
    assert why is not None and ledgers.suspended("s1") is not None
    assert ledgers.take_suspensions() == [("s1", ledgers.suspended("s1"))]
    assert ledgers.take_suspensions() == []
    assert ledgers.admit("s1", 9.0) is not None  # still suspended: not a new suspension
    assert ledgers.take_suspensions() == []
    assert PrivacyLedgers.from_state(ledgers.to_state()).take_suspensions() == []


def test_two_ledgers_in_strictly_growing_turns_are_caught_by_their_sequence() -> None:
    """Copied at sequence 4, one ledger trains more steps per update than the other: their
    epsilons grow in turns (1.2, 1.35, 1.45), but both count on from 4, so the second report of
    sequence 5 gives the copy away."""
    ledgers = PrivacyLedgers()
    assert ledgers.admit("A", 1.2, 5) is None
    ledgers.record("A", 1.2, 5)
    assert ledgers.refusal("A", 1.35, 5) is not None and ledgers.suspended("A") is None
    why = ledgers.admit("A", 1.35, 5)
    assert why is not None and "ledger sequence 5 after one applied at 5" in why
    assert "went back" in why and ledgers.suspended("A") is not None
    assert ledgers.admit("A", 1.45, 6) is not None, "suspended for the rest of the run"


def test_a_sequence_is_compared_only_when_reported_and_a_negative_one_is_refused() -> None:
    ledgers = PrivacyLedgers()
    ledgers.record("A", 1.0, 3)
    assert ledgers.admit("A", 1.1) is None, "no sequence (an older agent): epsilon only"
    ledgers.record("A", 1.1)
    assert ledgers.admit("A", 1.2, 3) is not None, "the bar is the last sequence reported"
    ledgers.record("B", 1.0)
    assert ledgers.admit("B", 1.1, 0) is None, "a first sequence sets the bar"
    why = ledgers.admit("C", 1.0, -1)
    assert why is not None and "not a ledger's" in why and ledgers.suspended("C") is None
    assert ledgers.admit("D", 0.5, 9) is None and ledgers.admit("D", 0.5, 9) is None  # no record


def test_a_reinstated_site_is_held_to_its_total_not_to_the_other_ledgers_sequence() -> None:
    """The ledger that goes on may stand below the sequence the other one reported; after the
    reinstatement its next report sets the bar again, and the total bars the other's records."""
    ledgers = PrivacyLedgers()
    ledgers.record("A", 1.5, 14)  # the other ledger's update, applied
    assert ledgers.admit("A", 1.2, 8) is not None
    ledgers.reinstate("A", 2.7, 1.5)
    assert ledgers.refusal("A", 1.6, 15) is not None, "a late record of the other ledger"
    assert ledgers.admit("A", 2.9, 10) is None
    ledgers.record("A", 2.9, 10)
    assert ledgers.admit("A", 3.1, 10) is not None


def test_sequences_round_trip_and_a_checkpoint_without_them_loads() -> None:
    ledgers = PrivacyLedgers()
    ledgers.record("A", 2.5, 7)
    ledgers.record("B", 1.0)
    state = json.loads(json.dumps(ledgers.to_state()))
    back = PrivacyLedgers.from_state(state)
    assert back.admit("A", 2.6, 7) is not None and back.admit("B", 1.1, 1) is None
    del state["sequence"]  # written before sequences were reported
    older = PrivacyLedgers.from_state(state)
    assert older.admit("A", 2.6, 7) is None and older.last("A") == 2.5


# ------------------------------------------------------------------------- plain service
def _update(
    fed: Federation, site: str, uid: int, base: int, eps: float, n: int, length: int | None = None,
    sequence: int | None = None,
) -> list[bytes]:
    length = n if length is None else length
    fields = {
        "update_id": f"00000000-0000-0000-0000-{uid:012d}", "site_id": site,
        "base_version": base, "n_samples": 50, "mode": "plain", "cohort_id": None,
        "weight": 1.0, "codec": "float32", "vector": np.full(length, 1e-3, np.float32).tobytes(),
        "n_parameters": length, "train_loss": 0.0, "epsilon_spent": eps,
        "ledger_sequence": sequence,
    }
    return [c.value for c in fed.factory(site).build_chunked("ModelUpdate", fields, 900 * 1024)]


def _feed(service: AggregatorService, values: list[bytes]) -> list[str]:
    return [d.reason for v in values for d in service.handle(v).dead]


def _training(make_service: Maker) -> tuple[Federation, AggregatorService, int]:
    """A plain service past every site's hello; the federation and the parameter count."""
    fed, make = make_service
    service = make(mode="plain", rounds=10)
    for i, site in enumerate(fed.sites):
        assert not service.handle(fed.hello(site, seed=i)).dead
    assert service.state is not None
    return fed, service, int(service.state.params.size)


def test_plain_a_second_ledger_suspends_its_site_and_replays_keep_their_reason(
    make_service: Maker,
) -> None:
    fed, service, n = _training(make_service)
    make = make_service[1]
    assert service.phase is Phase.TRAINING
    first = _update(fed, "A", 1, 0, 0.5, n)
    assert _feed(service, first) == []
    assert _feed(service, _update(fed, "B", 2, 0, 0.5, n)) == []
    assert service.state.model_version == 1
    replayed = _feed(service, first)
    assert len(replayed) == 1 and replayed[0].startswith("replay"), replayed
    malformed = _feed(service, _update(fed, "A", 9, 1, 0.1, n, length=n - 1))
    assert len(malformed) == 1 and malformed[0].startswith("bad_shape"), malformed
    assert service.ledgers.suspended("A") is None, "only an otherwise valid update may suspend"

    second_ledger = _feed(service, _update(fed, "A", 3, 1, 0.5, n))
    assert len(second_ledger) == 1 and "privacy_ledger" in second_ledger[0], second_ledger
    assert "went back" in second_ledger[0]
    later = _feed(service, _update(fed, "A", 4, 1, 5.0, n))
    assert len(later) == 1 and "suspended" in later[0]
    assert _feed(service, _update(fed, "B", 5, 1, 0.9, n)) == []  # B goes on

    restarted = make(mode="plain", rounds=10)
    restarted.restore(service.state, service.extra_state())
    again = _feed(restarted, _update(fed, "A", 6, 1, 7.0, n))
    assert len(again) == 1 and "suspended" in again[0], "the suspension is checkpointed"


def test_plain_a_twin_refused_by_the_strategy_is_still_caught(make_service: Maker) -> None:
    """Two agents in lockstep with one FedAvg round each: the twin's update is refused as a
    second one of its site in the round, and its epsilon, equal to the one applied, gives it away;
    an honest agent's retrained update (a higher epsilon) refused the same way does not."""
    fed, service, n = _training(make_service)
    assert _feed(service, _update(fed, "A", 1, 0, 0.5, n)) == []
    retrained = _feed(service, _update(fed, "A", 2, 0, 0.7, n))
    assert len(retrained) == 1 and retrained[0].startswith("duplicate_site"), retrained
    assert _feed(service, _update(fed, "B", 3, 0, 0.5, n)) == []
    twin = _feed(service, _update(fed, "B", 4, 0, 0.5, n))
    assert len(twin) == 1 and "privacy_ledger" in twin[0] and "went back" in twin[0], twin
    assert service.ledgers.suspended("A") is None and service.ledgers.suspended("B") is not None
    report = service.epsilon_by_site()  # what later versions' provenance says
    assert report["A"] == 0.7 and report["B"] == math.inf, report


def test_plain_a_repeated_ledger_sequence_suspends_though_epsilon_grew(
    make_service: Maker,
) -> None:
    """The service reads the update's ledger sequence: a second ledger whose epsilon passed the
    first one's is caught by a sequence already applied, and the bar survives a restart."""
    fed, service, n = _training(make_service)
    make = make_service[1]
    assert _feed(service, _update(fed, "A", 1, 0, 1.2, n, sequence=5)) == []
    restarted = make(mode="plain", rounds=10)
    restarted.restore(service.state, service.extra_state())
    twin = _feed(restarted, _update(fed, "A", 2, 0, 1.35, n, sequence=5))
    assert len(twin) == 1 and "privacy_ledger" in twin[0], twin
    assert "ledger sequence 5 after one applied at 5" in twin[0]
    assert restarted.ledgers.suspended("A") is not None


def test_plain_an_update_of_the_schema_before_ledger_sequence_is_applied_by_epsilon(
    make_service: Maker,
) -> None:
    """An agent not yet upgraded sends ModelUpdate without ``ledger_sequence``: the service reads
    it (schemas/older/) and holds it to epsilon only, after an update that did report one."""
    fed, service, n = _training(make_service)
    assert _feed(service, _update(fed, "A", 1, 0, 1.0, n, sequence=5)) == []
    assert _feed(service, _update(fed, "B", 9, 0, 1.0, n)) == []
    assert service.state is not None and service.state.model_version == 1
    older = next(e for e in default_registry().older() if e.name == "ModelUpdate")
    factory = fed.factory("A")
    fields = {
        **factory.envelope(), "update_id": f"00000000-0000-0000-0000-{2:012d}", "site_id": "A",
        "base_version": 1, "n_samples": 50, "mode": "plain", "cohort_id": None, "weight": 1.0,
        "codec": "float32", "vector": np.full(n, 1e-3, np.float32).tobytes(), "n_parameters": n,
        "train_loss": 0.0,
    }
    old = SchemaRegistry([SchemaEntry.from_raw(older.raw)])
    applied = encode_signed("ModelUpdate", {**fields, "epsilon_spent": 1.1}, factory.key, old)
    assert _feed(service, [applied]) == [] and service.ledgers.last("A") == 1.1
    fields = {**fields, **factory.envelope(), "update_id": f"00000000-0000-0000-0000-{3:012d}"}
    back = encode_signed("ModelUpdate", {**fields, "epsilon_spent": 1.05}, factory.key, old)
    went = _feed(service, [back])
    assert len(went) == 1 and "epsilon 1.05 after one applied at 1.1" in went[0], went


# ------------------------------------------------------------------------- secure cohorts
def _ledgered_net() -> tuple[Net, PrivacyLedgers]:
    ledgers = PrivacyLedgers()
    net = make_net(ALL_SITES[:4])
    net.coord = CohortCoordinator(config(), ledgers)
    return net, ledgers


def _submit(
    net: Net, eps: dict[str, float], tag: str, sequence: dict[str, int] | None = None
) -> None:
    for site, e in eps.items():
        seq = None if sequence is None else sequence.get(site)
        update = PendingUpdate(f"u-{site}-{tag}", delta_of(site), N_SAMPLES[site], 5, 0.5, e, seq)
        net.publish(site, net.sites[site].submit(update, net.clock.now))


def test_secure_a_masked_input_from_a_second_ledger_is_a_dropout_and_its_site_is_suspended() -> (
    None
):
    net, ledgers = _ledgered_net()
    sites = ALL_SITES[:4]
    net.open(version=5)
    _submit(net, dict.fromkeys(sites, 1.0), "1")
    net.settle()
    finished_result(net)
    assert all(ledgers.last(s) == 1.0 for s in sites)

    net.open(version=6)
    cohort = net.coord.cohort_id
    early = {"update_id": "x", "site_id": "s0", "base_version": 5, "n_samples": 1,
             "mode": "masked", "cohort_id": cohort, "weight": 0.0, "codec": "masked-u32",
             "vector": bytes(4 * D), "n_parameters": D, "train_loss": 0.0,
             "epsilon_spent": 0.5, "masked_weight": 0}
    rec = {**net.factories["s0"].envelope(), **early}
    out = net.coord.on_record("ModelUpdate", rec, net.clock.now)  # while joining: invalid anyway
    assert "OutOfOrderError" in out.rejections[0] and ledgers.suspended("s0") is None
    assert ledgers.take_suspensions() == []
    _submit(net, {"s0": 1.0, "s1": 2.0, "s2": 2.0, "s3": 2.0}, "2")  # s0: a second ledger
    net.settle()
    (taken,) = ledgers.take_suspensions()  # for the service to put in the audit chain
    assert taken[0] == "s0" and "went back" in taken[1]
    event = finished_result(net)
    want_sum, want_w = expected(("s1", "s2", "s3"))
    assert event.contributors == ("s1", "s2", "s3")
    assert np.array_equal(event.weighted_delta_sum, want_sum) and event.weight_sum == want_w
    assert any("s0" in r and "went back" in r for r in net.rejections), net.rejections
    assert ledgers.suspended("s0") is not None and ledgers.last("s1") == 2.0

    state: dict[str, Any] = ledgers.to_state()
    restored = PrivacyLedgers.from_state(state)
    net.coord = CohortCoordinator.from_state(config(), net.coord.to_state(), None, restored)
    net.rejections.clear()
    net.open(version=7)
    _submit(net, {s: 3.0 for s in sites if net.sites[s].has_pending_update is False}, "3")
    net.settle()
    assert any("CohortJoin from 's0'" in r and "suspended" in r for r in net.rejections)
    assert finished_result(net).contributors == ("s1", "s2", "s3")


def test_secure_a_repeated_ledger_sequence_is_a_dropout_and_the_bar_is_checkpointed() -> None:
    """A survivor's sequence is recorded when its cohort finishes (kept in the open cohort's
    checkpoint until then); a later masked input with the same sequence suspends its site."""
    net, ledgers = _ledgered_net()
    sites = ALL_SITES[:4]
    net.open(version=5)
    _submit(net, dict.fromkeys(sites, 1.0), "1", dict.fromkeys(sites, 3))
    net.settle_until(lambda: net.coord._open is not None and len(net.coord._open.epsilon) == 4)
    assert net.coord._open.sequence == dict.fromkeys(sites, 3)
    state, arrays = net.coord.to_state(), net.coord.state_arrays()
    net.coord = CohortCoordinator.from_state(config(), state, arrays, ledgers)
    assert net.coord._open is not None and net.coord._open.sequence == dict.fromkeys(sites, 3)
    net.settle()
    finished_result(net)

    net.open(version=6)
    _submit(net, dict.fromkeys(sites, 2.0), "2", {"s0": 3, "s1": 4, "s2": 4, "s3": 4})
    net.settle()
    assert finished_result(net).contributors == ("s1", "s2", "s3")
    assert any("s0" in r and "ledger sequence 3" in r for r in net.rejections), net.rejections
    assert ledgers.suspended("s0") is not None


# ------------------------------------------------------------------------- the site's agent
@pytest.mark.parametrize("dp", [True, False])
async def test_an_agent_stops_once_the_federation_gives_its_privacy_as_unbounded(
    tmp_path: Path, dp: bool
) -> None:
    """A version whose provenance gives the site's epsilon as infinite (the aggregator suspended
    it) stops a DP agent with EXIT_SUSPENDED before it trains; an agent without DP reports
    infinity itself and goes on."""
    agent = _agent(tmp_path)
    agent.s = agent.s.model_copy(update={"dp": dp})
    trained, beats = scripted(agent)

    def see(v: int, eps: float) -> Callable[[], None]:
        def step() -> None:
            agent.latest = GlobalVersion(v, np.zeros(1, np.float32), None, False, [], eps)  # type: ignore[arg-type]
        return step

    steps = [see(1, 2.5), see(2, math.inf), see(3, math.inf)]
    if dp:
        assert await agent._follow(_Quiet(steps)) == EXIT_SUSPENDED
        assert trained == [1] and beats[-1] == "suspended"
    else:
        with pytest.raises(_Done):
            await agent._follow(_Quiet(steps))
        assert trained == [1, 2, 3]


async def test_an_agent_started_again_after_a_suspension_waits_for_a_bounded_version(
    tmp_path: Path,
) -> None:
    """Started again after it stopped (the operator added the other ledger and reinstated the
    site), the agent skips the versions it finds published (the one it stopped at, or one the
    federation made before the reinstatement), trains on the first later one that gives its site
    a bounded epsilon, and stops again at a later unbounded one."""
    def see(agent: SiteAgent, v: int, eps: float) -> Callable[[], None]:
        def step() -> None:
            agent.latest = GlobalVersion(v, np.zeros(1, np.float32), None, False, [], eps)  # type: ignore[arg-type]
        return step

    first = _agent(tmp_path)
    scripted(first)
    assert await first._follow(_Quiet([see(first, 2, math.inf)])) == EXIT_SUSPENDED
    assert json.loads(first.state_path.read_text())["suspended_at"] == 2
    again = _agent(tmp_path)  # a new process reads the state the first one left
    trained, beats = scripted(again)
    steps = [see(again, v, e) for v, e in ((2, math.inf), (2, math.inf), (3, 4.0), (4, math.inf))]
    assert await again._follow(_Quiet(steps)) == EXIT_SUSPENDED
    assert trained == [3] and beats[-1] == "suspended"
    assert json.loads(again.state_path.read_text())["suspended_at"] == 4
    third = _agent(tmp_path)  # versions 5 and 6 came while it was stopped: found, skipped
    trained, _ = scripted(third)
    steps = [see(third, v, e) for v, e in ((6, math.inf), (7, 5.0))]
    with pytest.raises(_Done):
        await third._follow(_Quiet(steps))
    assert trained == [7]

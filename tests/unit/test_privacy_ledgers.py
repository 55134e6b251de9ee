"""A site whose reported epsilon goes back has a second privacy ledger: it is suspended.

The pure :class:`PrivacyLedgers` first; then the aggregator's service in plain mode (no broker:
the runtime's real service fed signed records) and the secure cohort coordinator in memory
(the harness of ``test_cohorts.py``), where a refused masked input is a dropout.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.secure import PendingUpdate
from agents.site import EXIT_SUSPENDED, GlobalVersion, SiteAgent
from aggregator.cohorts import CohortCoordinator
from aggregator.ledgers import KEPT_LINKS, MAX_WRITES, PrivacyLedgers, Report
from aggregator.service import AggregatorService, Phase
from fedsynth.errors import ConfigError
from fedsynth.privacy import SiteLedger
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
        assert ledgers.admit("A", Report(eps)) is None
        ledgers.record("A", Report(eps))
    # a query
    assert ledgers.refusal("A", Report(0.3)) is not None and ledgers.suspended("A") is None
    why = ledgers.admit("A", Report(0.3))
    assert why is not None and "suspended" in why and "0.3 after one applied at 1.4" in why
    assert ledgers.suspended("A") is not None
    assert ledgers.admit("A", Report(9.0)) is not None, (
        "a second ledger that passes the first stays out"
    )
    assert ledgers.admit("B", Report(0.1)) is None and ledgers.suspended("B") is None


def test_an_equal_epsilon_suspends_since_every_update_spends_some() -> None:
    ledgers = PrivacyLedgers()
    ledgers.record("A", Report(1.0))
    assert ledgers.admit("A", Report(1.0)) is not None and ledgers.suspended("A") is not None


def test_sites_without_dp_are_not_compared_and_bad_values_are_refused_without_suspending() -> None:
    ledgers = PrivacyLedgers()
    ledgers.record("A", Report(math.inf))
    assert ledgers.admit("A", Report(math.inf)) is None and ledgers.admit("A", Report(0.5)) is None
    for bad in (math.nan, -1.0):
        why = ledgers.admit("B", Report(bad))
        assert why is not None and "not a privacy total" in why
    assert ledgers.suspended("B") is None


def test_state_round_trips_with_infinity_and_older_checkpoints_start_empty() -> None:
    ledgers = PrivacyLedgers()
    ledgers.record("A", Report(2.5))
    ledgers.record("B", Report(math.inf))
    ledgers.record("C", Report(1.0))
    assert ledgers.admit("C", Report(0.5)) is not None
    state = json.loads(json.dumps(ledgers.to_state()))  # as the checkpoint's header keeps it
    back = PrivacyLedgers.from_state(state)
    assert back.last("A") == 2.5 and back.last("B") == math.inf
    assert back.suspended("C") == ledgers.suspended("C")
    assert PrivacyLedgers.from_state(None).last("A") is None
    with pytest.raises(ConfigError, match="format"):
        PrivacyLedgers.from_state({**state, "format": 99})


def test_each_suspension_is_taken_once_and_refusals_without_one_give_none() -> None:
    ledgers = PrivacyLedgers()
    assert ledgers.admit("s1", Report(1.0)) is None
    ledgers.record("s1", Report(1.0))
    assert ledgers.admit("s1", Report(math.nan)) is not None  # refused, no ledger's report
    assert ledgers.take_suspensions() == []
    why = ledgers.admit("s1", Report(0.5))
    assert why is not None and ledgers.suspended("s1") is not None
    assert ledgers.take_suspensions() == [("s1", ledgers.suspended("s1"))]
    assert ledgers.take_suspensions() == []
    assert ledgers.admit("s1", Report(9.0)) is not None  # still suspended: not a new suspension
    assert ledgers.take_suspensions() == []
    assert PrivacyLedgers.from_state(ledgers.to_state()).take_suspensions() == []


def test_two_ledgers_in_strictly_growing_turns_are_caught_by_their_sequence() -> None:
    """Copied at sequence 4, one ledger trains more steps per update than the other: their
    epsilons grow in turns (1.2, 1.35, 1.45), but both count on from 4, so the second report of
    sequence 5 gives the copy away."""
    ledgers = PrivacyLedgers()
    assert ledgers.admit("A", Report(1.2, 5)) is None
    ledgers.record("A", Report(1.2, 5))
    assert ledgers.refusal("A", Report(1.35, 5)) is not None and ledgers.suspended("A") is None
    why = ledgers.admit("A", Report(1.35, 5))
    assert why is not None and "ledger sequence 5 after one applied at 5" in why
    assert "went back" in why and ledgers.suspended("A") is not None
    assert ledgers.admit("A", Report(1.45, 6)) is not None, "suspended for the rest of the run"


def test_a_sequence_is_compared_only_when_reported_and_a_negative_one_is_refused() -> None:
    ledgers = PrivacyLedgers()
    ledgers.record("A", Report(1.0, 3))
    assert ledgers.admit("A", Report(1.1)) is None, "no sequence (an older agent): epsilon only"
    ledgers.record("A", Report(1.1))
    assert ledgers.admit("A", Report(1.2, 3)) is not None, "the bar is the last sequence reported"
    ledgers.record("B", Report(1.0))
    assert ledgers.admit("B", Report(1.1, 0)) is None, "a first sequence sets the bar"
    why = ledgers.admit("C", Report(1.0, -1))
    assert why is not None and "not a ledger's" in why and ledgers.suspended("C") is None
    # no record: the same report passes again
    assert ledgers.admit("D", Report(0.5, 9)) is None and ledgers.admit("D", Report(0.5, 9)) is None


def test_a_reinstated_site_is_held_to_its_total_not_to_the_other_ledgers_sequence() -> None:
    """The ledger that goes on may stand below the sequence the other one reported; after the
    reinstatement its next report sets the bar again, and the total bars the other's records."""
    ledgers = PrivacyLedgers()
    ledgers.record("A", Report(1.5, 14))  # the other ledger's update, applied
    assert ledgers.admit("A", Report(1.2, 8)) is not None
    ledgers.reinstate("A", 2.7, 1.5)
    assert ledgers.refusal("A", Report(1.6, 15)) is not None, "a late record of the other ledger"
    assert ledgers.admit("A", Report(2.9, 10)) is None
    ledgers.record("A", Report(2.9, 10))
    assert ledgers.admit("A", Report(3.1, 10)) is not None


def test_sequences_round_trip_and_a_checkpoint_without_them_loads() -> None:
    ledgers = PrivacyLedgers()
    ledgers.record("A", Report(2.5, 7))
    ledgers.record("B", Report(1.0))
    state = json.loads(json.dumps(ledgers.to_state()))
    back = PrivacyLedgers.from_state(state)
    assert back.admit("A", Report(2.6, 7)) is not None and back.admit("B", Report(1.1, 1)) is None
    del state["sequence"]  # written before sequences were reported
    older = PrivacyLedgers.from_state(state)
    assert older.admit("A", Report(2.6, 7)) is None and older.last("A") == 2.5


def _line(prefix: str, n: int, start: int = 0) -> list[str]:
    """``n`` write ids of one ledger (as SiteLedger draws them: unique per write)."""
    return [f"{prefix}{i:04d}" for i in range(start, start + n)]


def test_two_ledgers_that_skip_each_others_sequence_are_caught_by_their_writes() -> None:
    """Copied after write 4, each ledger charges a round it never reports (a crash) before each
    report, so their sequences (5, 7, 8) and epsilons grow in turns; but B's first report shows
    the last shared write followed by another id than A's applied one did."""
    shared = _line("w", 4)
    a, b = shared + _line("a", 3, 4), shared + _line("b", 3, 4)
    ledgers = PrivacyLedgers()
    assert ledgers.admit("A", Report(1.2, 5, writes=a[:5])) is None
    ledgers.record("A", Report(1.2, 5, writes=a[:5]))
    assert ledgers.refusal("A", Report(1.3, 6, writes=b[:6])) is not None
    assert ledgers.suspended("A") is None, "a query"
    assert ledgers.refusal("A", Report(1.3, 6)) is None, "without its writes the twin would pass"
    why = ledgers.admit("A", Report(1.3, 6, writes=b[:6]))
    assert why is not None and "forked" in why and ledgers.suspended("A") is not None
    assert "ledger write w0003 followed by b0004 after one applied at a0004" in why
    assert ledgers.take_suspensions()[0][0] == "A"


def test_one_ledgers_reports_with_gaps_repeats_and_any_order_are_admitted() -> None:
    """One ledger's windows agree wherever they overlap, whatever was skipped between them, and
    a report that rejoins a later cohort with the same writes, or arrives late, is no fork."""
    line = _line("w", 40)
    ledgers = PrivacyLedgers()
    for seq in (3, 4, 9, 10, 17, 18, 19, 30, 38):
        window = line[max(0, seq - 8):seq]
        assert ledgers.admit("A", Report(seq / 10, seq, writes=window)) is None, seq
        ledgers.record("A", Report(seq / 10, seq, writes=window))
    assert ledgers.refusal("A", Report(9.0, 40, writes=line[20:40])) is None, (
        "any window of the line"
    )
    assert ledgers.refusal("A", Report(9.0, 40, writes=line[:2])) is None
    ledgers.record("A", Report(3.8, 38, writes=line[30:38]))  # the same report again
    assert ledgers.suspended("A") is None
    assert ledgers.refusal("B", Report(1.0, 1, writes=_line("b", 3))) is None, "links are per site"


def test_malformed_writes_are_refused_without_suspending() -> None:
    ledgers = PrivacyLedgers()
    for writes, said in (
        (_line("w", MAX_WRITES + 1), f"of {MAX_WRITES + 1} ids"),
        (["w1", ""], "an id of 0 characters"),
        (["w1", "x" * 129], "an id of 129 characters"),
        (["w1", "w2", "w1"], "naming one id twice"),
    ):
        why = ledgers.admit("A", Report(1.0, 1, writes=writes))
        assert why is not None and said in why and "not a ledger's" in why, why
    assert ledgers.suspended("A") is None and ledgers.take_suspensions() == []


def test_links_are_kept_bounded_and_round_trip_and_older_checkpoints_load() -> None:
    line = _line("w", 200)
    ledgers = PrivacyLedgers()
    for seq in range(8, 201):
        ledgers.record("A", Report(seq / 10, seq, writes=line[seq - 8:seq]))
    kept = ledgers.to_state()["links"]["A"]
    assert len(kept) == KEPT_LINKS and kept[-1] == ["w0198", "w0199"], kept[-1]
    assert kept[0] == [f"w{199 - KEPT_LINKS:04d}", f"w{200 - KEPT_LINKS:04d}"]
    state = json.loads(json.dumps(ledgers.to_state()))
    back = PrivacyLedgers.from_state(state)
    fork = [*line[190:195], "x0195"]
    assert back.refusal("A", Report(30.0, 300, writes=fork)) is not None
    assert back.to_state() == ledgers.to_state()
    del state["links"]  # written before write ids were reported
    assert PrivacyLedgers.from_state(state).refusal("A", Report(30.0, 300, writes=fork)) is None


def test_a_reinstatement_forgets_the_links_and_a_late_forked_record_does_not_resuspend() -> None:
    """After the reinstatement the ledger that goes on sets the links again; a record of the
    stopped ledger created before the reinstatement that shows the fork is refused, the site
    staying admitted; one created after it suspends the site again."""
    shared = _line("w", 3)
    a, b = shared + _line("a", 5, 3), shared + _line("b", 5, 3)
    ledgers = PrivacyLedgers()
    ledgers.record("A", Report(1.0, 4, writes=a[:4]))
    assert ledgers.admit("A", Report(1.1, 5, writes=b[:5])) is not None
    ledgers.reinstate("A", 2.0, 1.1, at_ms=1_000)
    assert ledgers.admit("A", Report(2.0, 6, 900, writes=a[:6])) is None
    ledgers.record("A", Report(2.0, 6, writes=a[:6]))
    late = ledgers.admit("A", Report(2.5, 7, 950, writes=b[:7]))
    assert late is not None and "created before its reinstatement" in late
    assert ledgers.suspended("A") is None
    again = ledgers.admit("A", Report(2.6, 8, 1_200, writes=b[:8]))
    assert again is not None and "forked" in again and ledgers.suspended("A") is not None


# ------------------------------------------------------------------------- plain service
def _update(
    fed: Federation, site: str, uid: int, base: int, eps: float, n: int, length: int | None = None,
    sequence: int | None = None, writes: tuple[str, ...] | None = None,
) -> list[bytes]:
    length = n if length is None else length
    fields = {
        "update_id": f"00000000-0000-0000-0000-{uid:012d}", "site_id": site,
        "base_version": base, "n_samples": 50, "mode": "plain", "cohort_id": None,
        "weight": 1.0, "codec": "float32", "vector": np.full(length, 1e-3, np.float32).tobytes(),
        "n_parameters": length, "train_loss": 0.0, "epsilon_spent": eps,
        "ledger_sequence": sequence, "ledger_writes": None if writes is None else list(writes),
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


def test_plain_two_copies_of_a_site_ledger_that_skip_each_others_numbers_are_caught(
    make_service: Maker, tmp_path: Path
) -> None:
    """Real SiteLedger files: one copied to a second host after two writes; the copy charges a
    round it never reports before its first, so its sequence and epsilon pass the first
    ledger's, and only the write ids it reports give it away. The links survive a restart."""
    fed, service, n = _training(make_service)
    make = make_service[1]
    first = SiteLedger.create(tmp_path / "a.json", site_id="A", delta=1e-5)
    for _ in range(2):
        first.record(1.0, 0.01, 10)
    shutil.copy(first.path, tmp_path / "b.json")
    copy = SiteLedger.open(tmp_path / "b.json", site_id="A", delta=1e-5)
    first.record(1.0, 0.01, 10)
    ok = _feed(service, _update(fed, "A", 1, 0, first.spent(), n, sequence=first.sequence,
                                writes=first.recent_writes()))
    assert ok == [] and service.ledgers.last("A") == first.spent()
    copy.record(1.0, 0.01, 10)  # a round charged, never reported (a crash)
    copy.record(1.0, 0.01, 10)
    assert copy.sequence > first.sequence and copy.spent() > first.spent()
    restarted = make(mode="plain", rounds=10)
    restarted.restore(service.state, service.extra_state())
    twin = _feed(restarted, _update(fed, "A", 2, 0, copy.spent(), n, sequence=copy.sequence,
                                    writes=copy.recent_writes()))
    assert len(twin) == 1 and "privacy_ledger" in twin[0] and "forked" in twin[0], twin
    assert restarted.ledgers.suspended("A") is not None


def test_a_copy_made_before_the_first_round_is_caught_by_the_creations_write(
    tmp_path: Path,
) -> None:
    """A state folder copied right after its ledger was made (an image started twice, say):
    the creation's write id is the one both share, and the copy's first report that passes the
    other's sequence shows it followed by another id."""
    first = SiteLedger.create(tmp_path / "a.json", site_id="A", delta=1e-5)
    shutil.copy(first.path, tmp_path / "b.json")
    copy = SiteLedger.open(tmp_path / "b.json", site_id="A", delta=1e-5)
    ledgers = PrivacyLedgers()
    first.record(1.0, 0.01, 10)
    report = Report(first.spent(), first.sequence, writes=first.recent_writes())
    assert ledgers.admit("A", report) is None
    ledgers.record("A", report)
    copy.record(1.0, 0.01, 10)  # a round charged, never reported (a crash)
    copy.record(1.0, 0.01, 10)
    twin = Report(copy.spent(), copy.sequence, writes=copy.recent_writes())
    assert copy.sequence > first.sequence and copy.spent() > first.spent()
    assert ledgers.refusal("A", dataclasses.replace(twin, writes=())) is None, (
        "without the ids the copy would pass"
    )
    why = ledgers.admit("A", twin)
    assert why is not None and "forked" in why and ledgers.suspended("A") is not None


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


def _taken(net: Net, field: str) -> dict[str, Any]:
    """One field of the ledger reports the open cohort took, by site."""
    assert net.coord._open is not None
    return {s: getattr(r, field) for s, r in net.coord._open.reports.items()}


def _submit(
    net: Net, eps: dict[str, float], tag: str, sequence: dict[str, int] | None = None,
    writes: dict[str, tuple[str, ...]] | None = None,
) -> None:
    for site, e in eps.items():
        seq = None if sequence is None else sequence.get(site)
        ids = None if writes is None else writes.get(site)
        update = PendingUpdate(
            f"u-{site}-{tag}", delta_of(site), N_SAMPLES[site], 5, 0.5, e, seq, ids
        )
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
    net.settle_until(lambda: net.coord._open is not None and len(net.coord._open.reports) == 4)
    assert _taken(net, "sequence") == dict.fromkeys(sites, 3)
    state, arrays = net.coord.to_state(), net.coord.state_arrays()
    net.coord = CohortCoordinator.from_state(config(), state, arrays, ledgers)
    assert net.coord._open is not None and _taken(net, "sequence") == dict.fromkeys(sites, 3)
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


def test_secure_a_forked_ledger_is_a_dropout_and_the_writes_are_checkpointed() -> None:
    """A survivor's write ids are recorded when its cohort finishes (kept in the open cohort's
    checkpoint until then); a later masked input whose ids fork from them suspends its site,
    though its sequence and epsilon grew."""
    net, ledgers = _ledgered_net()
    sites = ALL_SITES[:4]
    lines = {s: tuple(f"{s}-w{i}" for i in range(6)) for s in sites}
    net.open(version=5)
    _submit(net, dict.fromkeys(sites, 1.0), "1", dict.fromkeys(sites, 4),
            {s: line[:4] for s, line in lines.items()})
    net.settle_until(lambda: net.coord._open is not None and len(net.coord._open.reports) == 4)
    state, arrays = net.coord.to_state(), net.coord.state_arrays()
    net.coord = CohortCoordinator.from_state(config(), state, arrays, ledgers)
    assert net.coord._open is not None
    assert _taken(net, "writes") == {s: line[:4] for s, line in lines.items()}
    net.settle()
    finished_result(net)

    net.open(version=6)
    forked = {**{s: line for s, line in lines.items()}, "s0": (*lines["s0"][:3], "x3", "x4")}
    _submit(net, dict.fromkeys(sites, 2.0), "2", dict.fromkeys(sites, 6), forked)
    net.settle()
    assert finished_result(net).contributors == ("s1", "s2", "s3")
    assert any("s0" in r and "forked" in r for r in net.rejections), net.rejections
    assert ledgers.suspended("s0") is not None and ledgers.suspended("s1") is None

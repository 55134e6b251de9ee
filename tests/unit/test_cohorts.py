"""Secure cohorts end to end in memory: coordinator + SecureSites over signed Avro records.

Every record is built by :class:`MessageFactory` (envelope, Ed25519 signature, chunks for masked
updates) and read back by a per-receiver :class:`MessageReader`, so the wire mapping is exercised.
Deltas are multiples of ``clip / levels`` and weights are integers, so stochastic rounding is exact
and the cohort sum can be compared with ``==``.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from agents.pending import PendingStore
from agents.secure import PendingUpdate, SecureSite, SecureSiteConfig, SiteOutcome
from aggregator.cohorts import CohortConfig, CohortCoordinator, CoordinatorOutput
from aggregator.engine import (
    AggregatorEngine,
    Applied,
    CohortAggregated,
    EngineConfig,
    GlobalVersionPublished,
)
from aggregator.strategies import StrategyConfig, build_strategy
from aggregator.strategies.staleness import make_staleness
from fedsynth.errors import ConfigError, ProtocolError
from fedsynth.messages import Inbound, MessageFactory, MessageReader
from fedsynth.secagg import ClientStage, FixedPointSpec, ServerStage
from schemas.signing import IdentityKey, KeyRing

FED = "fed-cohorts"
AGG = "aggregator"
SPEC = FixedPointSpec(clip=1.0, levels=1 << 10, max_weight=500.0, weight_levels=1 << 8)
D = 12
T0 = 1_700_000_000.0
ALL_SITES = ("s0", "s1", "s2", "s3", "s4")
KEYS = {name: IdentityKey.generate() for name in (AGG, *ALL_SITES)}
N_SAMPLES = {"s0": 120, "s1": 80, "s2": 200, "s3": 50, "s4": 310}


def config(**changes: Any) -> CohortConfig:
    base: dict[str, Any] = {"federation_id": FED, "spec": SPEC, "vector_length": D,
                            "buffer_size": 4, "min_members": 3, "staleness_kind": "constant"}
    return CohortConfig(**{**base, **changes})


def delta_of(site: str) -> np.ndarray:
    """An exactly quantizable delta: integers / levels inside [-clip, clip]."""
    ks = np.random.default_rng(ALL_SITES.index(site)).integers(-1024, 1025, size=D)
    return (ks / 1024.0).astype(np.float32)


def update_of(site: str, base: int = 5) -> PendingUpdate:
    return PendingUpdate(f"u-{site}", delta_of(site), N_SAMPLES[site], base, 0.5, 1.0)


def expected(sites: list[str] | tuple[str, ...]) -> tuple[np.ndarray, float]:
    total = sum(N_SAMPLES[s] * delta_of(s).astype(np.float64) for s in sites)
    return np.asarray(total), float(sum(N_SAMPLES[s] for s in sites))


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Net:
    """Topics as FIFO queues per (topic, receiver); FIFO overall unless ``shuffle`` is given."""

    coord: CohortCoordinator
    sites: dict[str, SecureSite]
    clock: Clock = field(default_factory=Clock)
    shuffle: random.Random | None = None
    die_after: dict[str, str] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)
    hold: set[tuple[str, str]] = field(default_factory=set)
    queues: dict[tuple[str, str], deque[tuple[int, bytes]]] = field(default_factory=dict)
    outcomes: list[CoordinatorOutput] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    seq: itertools.count = field(default_factory=itertools.count)
    stores: dict[str, PendingStore] = field(default_factory=dict)  # as agents/site.py keeps them
    outbox: list[tuple[tuple[str, str], bytes]] = field(default_factory=list)  # AGG's last sends
    control_log: list[bytes] = field(default_factory=list)  # the control topic, from its start
    lost_inputs: set[str] = field(default_factory=set)  # sites whose masked input never arrives

    def __post_init__(self) -> None:
        ring = KeyRing()
        for name, key in KEYS.items():
            ring.add(name, key.public_raw())
        parties = (AGG, *self.sites)
        self.factories = {p: MessageFactory(FED, p, KEYS[p], clock=self.clock) for p in parties}
        self.readers = {p: MessageReader(FED, ring, clock=self.clock) for p in parties}

    # -- sending
    def route(self, sender: str, name: str, fields: dict[str, Any]) -> list[tuple[str, str]]:
        if sender == AGG:
            return [("control", s) for s in self.sites]
        if name == "EncryptedShare":
            return [("share-relay", fields["recipient"]), ("share-relay", AGG)]
        topic = {"CohortJoin": "site-events", "ModelUpdate": "updates", "UnmaskResponse": "unmask"}
        return [(topic[name], AGG)]

    def publish(self, sender: str, sends: list[tuple[str, dict[str, Any]]]) -> None:
        if sender in self.dead:
            return
        if sender == AGG and sends:
            self.outbox = []
        for name, fields in sends:
            if sender in self.stores:
                self.stores[sender].before_send(name, fields)
            factory = self.factories[sender]
            if name == "ModelUpdate":
                values = [o.value for o in factory.build_chunked(name, fields, max_chunk=96)]
            else:
                values = [factory.build(name, fields).value]
            if name == "ModelUpdate" and sender in self.lost_inputs:
                continue  # cut off while publishing: the input is never complete
            for target in self.route(sender, name, fields):
                queue = self.queues.setdefault(target, deque())
                queue.extend((next(self.seq), v) for v in values)
                if sender == AGG:
                    self.outbox += [(target, v) for v in values]
            if sender == AGG:
                self.control_log += values
        if any(name == self.die_after.get(sender) for name, _ in sends):
            self.dead.add(sender)

    def inject(self, topic: str, receiver: str, value: bytes) -> None:
        self.queues.setdefault((topic, receiver), deque()).append((next(self.seq), value))

    def coordinator(self, out: CoordinatorOutput) -> CoordinatorOutput:
        self.publish(AGG, out.sends)
        self.rejections += out.rejections
        if out.finished:
            self.outcomes.append(out)
        return out

    # -- delivering
    def deliver_one(self) -> bool:
        ready = [k for k, q in self.queues.items() if q and k not in self.hold]
        if not ready:
            return False
        if self.shuffle is None:
            key = min(ready, key=lambda k: self.queues[k][0][0])
        else:
            key = self.shuffle.choice(sorted(ready))
        _, value = self.queues[key].popleft()
        receiver = key[1]
        if receiver in self.dead:
            return True
        got = self.readers[receiver].read(value)
        if not isinstance(got, Inbound):
            assert not hasattr(got, "reason"), got
            return True
        if receiver == AGG:
            self.coordinator(self.coord.on_record(got.name, got.record, self.clock.now))
        else:
            site = self.sites[receiver]
            self.publish(receiver, site.on_record(got.name, got.record, self.clock.now))
            self.sync_store(receiver)
        return True

    def sync_store(self, name: str) -> None:
        """As the agent keeps the site's pending update on disk after each record."""
        store = self.stores.get(name)
        if store is not None:
            store.follow(self.sites[name])

    def replay_control(self, name: str) -> None:
        """A restarted agent reads the control topic again from its start, then is caught up."""
        reader, site = self.readers[name], self.sites[name]
        for value in self.control_log:
            got = reader.read(value)
            assert isinstance(got, Inbound), got
            self.publish(name, site.on_record(got.name, got.record, self.clock.now))
        site.caught_up()
        self.sync_store(name)

    def settle(self, max_steps: int = 5000) -> None:
        """Deliver until every queue is empty, firing deadlines whenever nothing is in flight."""
        for _ in range(max_steps):
            if self.deliver_one():
                continue
            deadline = self.coord.deadline()
            if deadline is None:
                return
            self.clock.now = max(self.clock.now, deadline)
            self.coordinator(self.coord.tick(self.clock.now))
        raise AssertionError("the cohort did not settle")

    def settle_until(self, done: Any, max_steps: int = 5000) -> None:
        """Deliver one record at a time until ``done()`` holds."""
        for _ in range(max_steps):
            if done():
                return
            assert self.deliver_one(), "nothing left to deliver"
        raise AssertionError("the condition never held")

    def open(self, version: int) -> None:
        self.coordinator(self.coord.open_cohort(version, self.clock.now))

    def submit(self, sites: tuple[str, ...] = ALL_SITES[:4], base: int = 5) -> None:
        for s in sites:
            self.publish(s, self.sites[s].submit(update_of(s, base), self.clock.now))


def make_net(sites: tuple[str, ...] = ALL_SITES[:4], cfg: CohortConfig | None = None,
             staleness: Any = None, **kwargs: Any) -> Net:
    cfg = cfg or config()
    fn = staleness or cfg.staleness()
    secure = {s: SecureSite(SecureSiteConfig(FED, s, SPEC, fn), np.random.default_rng(7 + i))
              for i, s in enumerate(sites)}
    return Net(CohortCoordinator(cfg), secure, **kwargs)


def finished_result(net: Net) -> CohortAggregated:
    assert len(net.outcomes) >= 1
    out = net.outcomes[-1]
    assert out.failed is None and out.result is not None and out.event is not None
    return out.event


# ------------------------------------------------------------------------------- happy path
def test_four_sites_sum_is_exact_and_the_engine_applies_it() -> None:
    net = make_net()
    net.open(version=7)
    net.submit(base=5)
    net.settle()
    event = finished_result(net)
    want_sum, want_w = expected(ALL_SITES[:4])
    assert event.contributors == ALL_SITES[:4] and event.target_version == 7
    assert np.array_equal(event.weighted_delta_sum, want_sum) and event.weight_sum == want_w
    assert net.rejections == [] and net.coord.stage is None
    for site in net.sites.values():
        assert not site.has_pending_update and site.last_outcome is SiteOutcome.SPENT
        assert site.cohort_done and not site.in_cohort and site.drain_rejections() == []
    strategy = build_strategy(StrategyConfig.model_validate({"name": "fedbuff", "buffer_size": 4}))
    engine = AggregatorEngine(strategy, EngineConfig(n_parameters=D))
    params = np.linspace(-1, 1, D, dtype=np.float32)
    state = engine.initial_state(params, frozenset(ALL_SITES), version=7)
    state, out = engine.step(state, event)
    published = [e for e in out if isinstance(e, GlobalVersionPublished)]
    applied = [e for e in out if isinstance(e, Applied)]
    want = (params.astype(np.float64) + want_sum / want_w).astype(np.float32)
    assert published[0].version == 8 and np.array_equal(published[0].vector, want)
    assert applied[0].staleness == 0 and applied[0].weight == want_w


def test_cohort_open_announces_the_current_version_and_a_join_deadline() -> None:
    coord = CohortCoordinator(config(join_deadline_s=12.5))
    out = coord.open_cohort(3, T0)
    (name, fields), = out.sends
    assert name == "CohortOpen" and fields["target_version"] == 3
    assert fields["join_deadline_ms"] == int((T0 + 12.5) * 1000)
    assert coord.stage is ServerStage.JOINING and coord.deadline() == T0 + 12.5
    with pytest.raises(ProtocolError):
        coord.open_cohort(3, T0)


# ------------------------------------------------------------------------------- dropouts
@pytest.mark.parametrize(("last_sent", "survivors"), [
    ("CohortJoin", ALL_SITES[:3]),       # joined, then gone: not a sharer
    ("EncryptedShare", ALL_SITES[:3]),   # shared, then gone: dropped, masks recovered
    ("ModelUpdate", ALL_SITES[:4]),      # input sent, then gone before unmasking: still summed
])
def test_one_dropout_at_each_stage_still_gives_the_survivor_sum(
    last_sent: str, survivors: tuple[str, ...]
) -> None:
    net = make_net(die_after={"s3": last_sent})
    net.open(version=5)
    net.submit()
    net.settle()
    event = finished_result(net)
    want_sum, want_w = expected(survivors)
    assert event.contributors == survivors
    assert np.array_equal(event.weighted_delta_sum, want_sum) and event.weight_sum == want_w
    assert all(not net.sites[s].has_pending_update for s in ALL_SITES[:3])


def test_failed_cohort_keeps_updates_for_the_next_one() -> None:
    net = make_net(ALL_SITES, die_after={"s2": "CohortJoin", "s3": "CohortJoin"})
    net.open(version=5)
    net.submit(ALL_SITES)
    net.settle()
    assert net.outcomes[0].failed is not None and "sharing" in net.outcomes[0].failed
    assert any("CohortJoin from 's4'" in r and "OutOfOrderError" in r for r in net.rejections)
    s4 = net.sites["s4"]
    assert s4.has_pending_update and s4.last_outcome is SiteOutcome.EXCLUDED
    assert net.sites["s0"].in_cohort  # stuck in sharing until the next cohort opens
    net.open(version=5)
    net.settle()
    assert net.sites["s0"].has_pending_update is False
    event = finished_result(net)
    want_sum, want_w = expected(("s0", "s1", "s4"))
    assert event.contributors == ("s0", "s1", "s4")
    assert np.array_equal(event.weighted_delta_sum, want_sum) and event.weight_sum == want_w


def _restart(net: Net, site: str, store: PendingStore) -> None:
    """The agent process of ``site`` starts again: new keys and reader, the saved update back."""
    net.dead.discard(site)
    net.die_after.pop(site, None)
    net.lost_inputs.discard(site)
    fresh = SecureSite(
        SecureSiteConfig(FED, site, SPEC, config().staleness()), np.random.default_rng(99)
    )
    store.restore(fresh)
    net.sites[site] = fresh
    ring = KeyRing()
    for name, key in KEYS.items():
        ring.add(name, key.public_raw())
    net.readers[site] = MessageReader(FED, ring, clock=net.clock)


def test_a_site_restarted_before_masking_brings_its_saved_update_to_the_next_cohort(
    tmp_path: Any,
) -> None:
    net = make_net(ALL_SITES, die_after={"s3": "EncryptedShare"})
    store = PendingStore(tmp_path / "s3" / "pending-update.npz")
    net.stores["s3"] = store
    store.save(update_of("s3"))  # the agent saves it when training ends
    net.open(version=5)
    net.submit()
    net.settle()
    assert finished_result(net).contributors == ("s0", "s1", "s2")  # s3 crashed while sharing
    saved = store.load()
    assert saved is not None and saved.update_id == "u-s3"  # never masked: still there
    _restart(net, "s3", store)
    net.open(version=5)
    net.publish("s0", net.sites["s0"].submit(
        PendingUpdate("u-s0-2", delta_of("s0"), N_SAMPLES["s0"], 5), net.clock.now))
    net.publish("s4", net.sites["s4"].submit(update_of("s4"), net.clock.now))
    net.settle()
    event = finished_result(net)
    want_sum, want_w = expected(("s0", "s3", "s4"))
    assert event.contributors == ("s0", "s3", "s4")
    assert np.array_equal(event.weighted_delta_sum, want_sum) and event.weight_sum == want_w
    assert store.load() is None  # deleted before its masked input went out


def _masked_then_crashed(tmp_path: Any, **kwargs: Any) -> tuple[Net, PendingStore]:
    """s3's agent saves its update, the cohort runs (s3 dies right after sending its masked
    input), and its agent process starts again with what is on disk."""
    die_after = {"s3": "ModelUpdate", **kwargs.pop("die_after", {})}
    net = make_net(kwargs.pop("sites", ALL_SITES[:4]), die_after=die_after, **kwargs)
    store = PendingStore(tmp_path / "pending-update.npz")
    net.stores["s3"] = store
    store.save(update_of("s3"))
    net.open(version=5)
    net.submit()
    net.settle()
    return net, store


def test_a_site_that_crashed_after_masking_never_resubmits(tmp_path: Any) -> None:
    net, store = _masked_then_crashed(tmp_path)
    assert finished_result(net).contributors == ("s0", "s1", "s2", "s3")  # counted once
    assert store.masked_in() is not None  # the crash came before it heard of the unmasking
    _restart(net, "s3", store)
    assert net.sites["s3"].has_pending_update and net.sites["s3"].waits_for_the_topic
    net.open(version=6)  # a live cohort, read before the replay reaches the old one: not joined
    net.settle_until(lambda: not net.queues[("control", "s3")])
    assert net.sites["s3"].in_cohort is False
    net.replay_control("s3")  # the UnmaskRequest names it a survivor: spent
    site = net.sites["s3"]
    assert not site.has_pending_update and site.last_outcome is SiteOutcome.SPENT
    assert site.spent == ["u-s3"] and site.train_from == 6
    assert store.load() is None and not store.mark_path.exists()


def test_a_masked_update_whose_cohort_failed_before_unmasking_joins_the_next_one(
    tmp_path: Any,
) -> None:
    # s1 and s2 die after sharing: two inputs of a threshold of three, no UnmaskRequest
    net, store = _masked_then_crashed(
        tmp_path, die_after={"s1": "EncryptedShare", "s2": "EncryptedShare"}
    )
    assert net.outcomes[-1].failed is not None
    assert store.masked_in() is not None
    _restart(net, "s3", store)
    net.replay_control("s3")  # the cohort's open, then nothing: it may still count the update
    assert net.sites["s3"].has_pending_update and store.masked_in() is not None
    for s in ("s1", "s2"):
        _restart(net, s, PendingStore(tmp_path / s / "none.npz"))
        net.sites[s].submit(update_of(s), net.clock.now)
    net.open(version=5)  # read after the old cohort's open: it ended uncounted
    net.settle()
    event = finished_result(net)
    want_sum, want_w = expected(("s0", "s1", "s2", "s3"))
    assert event.contributors == ("s0", "s1", "s2", "s3")
    assert np.array_equal(event.weighted_delta_sum, want_sum) and event.weight_sum == want_w
    assert store.load() is None


def test_a_later_cohort_read_before_the_masked_ones_open_does_not_free_the_update(
    tmp_path: Any,
) -> None:
    # the agent hands records that came before version 0 to the site late, so a replay can show
    # a later cohort's open before the open of the cohort that got the masked input
    net, store = _masked_then_crashed(
        tmp_path, die_after={"s1": "EncryptedShare", "s2": "EncryptedShare"}
    )
    assert net.outcomes[-1].failed is not None
    cut = len(net.control_log)
    net.open(version=5)  # s0 alone: cancelled at its join deadline
    net.settle()
    net.control_log = net.control_log[cut:] + net.control_log[:cut]
    _restart(net, "s3", store)
    net.replay_control("s3")
    site = net.sites["s3"]
    assert site.has_pending_update and store.masked_in() is not None  # still held back
    assert not site.in_cohort
    net.open(version=5)  # read after the masked cohort's open: that cohort ended uncounted
    net.settle_until(lambda: not net.queues[("control", "s3")])
    assert site.in_cohort and store.masked_in() is None


def test_a_site_cut_off_while_publishing_its_masked_input_keeps_the_update(
    tmp_path: Any,
) -> None:
    net, store = _masked_then_crashed(tmp_path, sites=ALL_SITES, lost_inputs={"s3"})
    assert finished_result(net).contributors == ("s0", "s1", "s2")  # s3's input never arrived
    _restart(net, "s3", store)
    net.replay_control("s3")  # the UnmaskRequest leaves it out: the update is free again
    assert net.sites["s3"].has_pending_update and store.masked_in() is None
    net.open(version=5)
    net.publish("s4", net.sites["s4"].submit(update_of("s4"), net.clock.now))
    net.publish("s0", net.sites["s0"].submit(
        PendingUpdate("u-s0-2", delta_of("s0"), N_SAMPLES["s0"], 5), net.clock.now))
    net.settle()
    event = finished_result(net)
    assert event.contributors == ("s0", "s3", "s4")
    want_sum, want_w = expected(("s0", "s3", "s4"))
    assert np.array_equal(event.weighted_delta_sum, want_sum) and event.weight_sum == want_w
    assert store.load() is None


def test_a_masked_update_whose_cohort_left_the_topic_is_dropped(tmp_path: Any) -> None:
    net, store = _masked_then_crashed(tmp_path)
    _restart(net, "s3", store)
    net.control_log.clear()  # retention removed the cohort's records
    net.replay_control("s3")
    site = net.sites["s3"]
    assert not site.has_pending_update and site.last_outcome is SiteOutcome.UNKNOWN
    assert store.load() is None


def test_failure_while_unmasking_spends_the_survivors_updates() -> None:
    net = make_net(die_after={"s2": "ModelUpdate", "s3": "ModelUpdate"})
    net.open(version=5)
    net.submit()
    net.settle()
    assert net.outcomes[-1].failed is not None and "unmask" in net.outcomes[-1].failed
    for s in ("s0", "s1"):  # named survivors: reusing the update could leak by differencing
        site = net.sites[s]
        assert not site.has_pending_update and site.last_outcome is SiteOutcome.SPENT
        assert site.spent == [f"u-{s}"]


def test_a_spent_site_trains_next_from_the_version_its_cohort_makes() -> None:
    net = make_net()
    assert all(site.train_from == 0 for site in net.sites.values())
    net.open(version=5)
    net.submit()
    net.settle()
    assert finished_result(net).contributors == ALL_SITES[:4]
    # the sum is applied to version 5 and makes 6: an update trained from 5 would miss it
    assert all(net.sites[s].train_from == 6 for s in ALL_SITES[:4])
    net.open(version=6)  # the next cohort: version 6 exists, the wait stands until it arrives
    assert net.sites["s0"].train_from == 6


def test_a_failed_cohort_releases_the_wait_for_its_version() -> None:
    net = make_net(die_after={"s2": "ModelUpdate", "s3": "ModelUpdate"})
    net.open(version=5)
    net.submit()
    net.settle()
    assert net.outcomes[-1].failed is not None  # s0 and s1 were named survivors: spent
    assert net.sites["s0"].train_from == 6 and net.sites["s0"].last_outcome is SiteOutcome.SPENT
    net.open(version=5)  # a new cohort for the same version: the failed one made no version
    net.settle()
    assert net.sites["s0"].train_from == 0 and net.sites["s1"].train_from == 0


@pytest.mark.parametrize("restart", [False, True], ids=["live", "after-a-restart"])
def test_unmask_request_waits_for_shares_that_lag_behind_control_records(restart: bool) -> None:
    net = make_net(hold={("share-relay", "s0")})
    net.open(version=5)
    net.submit()
    while net.deliver_one():
        pass
    s0 = net.sites["s0"]
    assert finished_result(net).contributors == ALL_SITES[:4]  # three responses were enough
    assert s0.in_cohort and s0.stage is ClientStage.MASKED and not s0.has_pending_update
    if restart:  # the ended cohort's id is in the checkpoint: its late response is still dropped
        _restarted(net)
    net.hold.clear()
    net.settle()  # s0 gets its shares, answers; the finished cohort takes the late response
    assert not s0.in_cohort and s0.last_outcome is SiteOutcome.SPENT and len(net.outcomes) == 1
    assert net.rejections == [] and s0.drain_rejections() == []
    late = _record(net, "s1", "UnmaskResponse", {"cohort_id": "c0-unknown", "site_id": "s1",
                                                 "self_mask_shares": [], "key_shares": []})
    net.inject("unmask", AGG, late)
    net.settle()  # a response for a cohort that never ran is still refused
    assert len(net.rejections) == 1 and "foreign cohort c0-unknown" in net.rejections[0]


# ------------------------------------------------------------------------------- rejections
def _record(net: Net, sender: str, name: str, fields: dict[str, Any]) -> bytes:
    return net.factories[sender].build(name, fields).value


def _join_fields(cohort_id: str, site: str) -> dict[str, Any]:
    return {"cohort_id": cohort_id, "site_id": site, "dh_public_key": bytes(32),
            "enc_public_key": bytes([1]) * 32, "base_version": 5}


def test_foreign_duplicate_and_non_member_records_are_rejected() -> None:
    net = make_net(ALL_SITES)
    net.open(version=5)
    cohort = net.coord.cohort_id
    assert cohort is not None
    net.inject("site-events", AGG, _record(net, "s0", "CohortJoin", _join_fields("other", "s0")))
    net.inject("site-events", AGG, _record(net, "s0", "CohortJoin", _join_fields(cohort, "s1")))
    net.submit(ALL_SITES[:3])
    while net.deliver_one():
        pass
    dup = net.factories["s0"].build("CohortJoin", _join_fields(cohort, "s0")).value
    net.inject("site-events", AGG, dup)
    while net.deliver_one():
        pass
    net.submit(("s3", "s4"))  # s3 closes the roster; s4 arrives after it
    net.settle()
    reasons = "\n".join(net.rejections)
    assert "foreign cohort other" in reasons
    assert "site_id 's1' is not the signing sender 's0'" in reasons
    assert "DuplicateMessageError" in reasons and "CohortJoin from 's4'" in reasons
    assert finished_result(net).contributors == ALL_SITES[:4]
    masked = {"update_id": "x", "site_id": "s4", "base_version": 5, "n_samples": 1,
              "mode": "masked", "cohort_id": cohort, "weight": 0.0, "codec": "masked-u32",
              "vector": bytes(4 * D), "n_parameters": D, "train_loss": 0.0,
              "epsilon_spent": 0.0, "masked_weight": 0}
    rec = Inbound("ModelUpdate", {**net.factories["s4"].envelope(), **masked}, 0)
    out = net.coord.on_record(rec.name, rec.record, net.clock.now)
    assert "already finished" in out.rejections[0] and not out.finished


@pytest.mark.parametrize("restart", [False, True])
def test_after_the_run_ends_late_records_are_refused_saying_no_cohort_opens(
    restart: bool,
) -> None:
    net = make_net()
    net.open(version=5)
    cohort = str(net.coord.cohort_id)
    net.submit(base=5)
    net.settle()
    finished_result(net)
    net.coord.close("the run ended with the final version 6")
    if restart:  # closing is checkpointed
        _restarted(net)
    join = net.readers[AGG].read(_record(net, "s0", "CohortJoin", _join_fields(cohort, "s0")))
    assert isinstance(join, Inbound)
    out = net.coord.on_record(join.name, join.record, net.clock.now)
    assert len(out.rejections) == 1, out.rejections
    assert f"cohort {cohort} already finished; no later cohort opens (the run ended with the " \
        "final version 6)" in out.rejections[0]
    assert "rejoins" not in out.rejections[0]
    response = _record(net, "s1", "UnmaskResponse", {"cohort_id": cohort, "site_id": "s1",
                                                      "self_mask_shares": [], "key_shares": []})
    late = net.readers[AGG].read(response)
    assert isinstance(late, Inbound)
    out = net.coord.on_record(late.name, late.record, net.clock.now)
    assert out.rejections == [] and out.sends == []  # dropped as a finished cohort drops it
    with pytest.raises(ProtocolError, match="no cohort opens any more"):
        net.coord.open_cohort(6, net.clock.now)


def test_input_from_a_site_off_the_roster_and_plain_updates_are_rejected() -> None:
    coord = CohortCoordinator(config())
    coord.open_cohort(5, T0)
    cohort = coord.cohort_id
    env = MessageFactory(FED, "s4", KEYS["s4"]).envelope()
    masked = {**env, "update_id": "x", "site_id": "s4", "base_version": 5, "n_samples": 1,
              "mode": "masked", "cohort_id": cohort, "weight": 0.0, "codec": "masked-u32",
              "vector": bytes(4 * D), "n_parameters": D, "train_loss": 0.0,
              "epsilon_spent": 0.0, "masked_weight": 0}
    out = coord.on_record("ModelUpdate", masked, T0)
    assert "not accepted in stage joining" in out.rejections[0]
    plain = {**masked, "mode": "plain", "cohort_id": None, "masked_weight": None}
    assert "not a masked update" in coord.on_record("ModelUpdate", plain, T0).rejections[0]
    assert "not a message" in coord.on_record("Heartbeat", env, T0).rejections[0]
    assert "malformed" in coord.on_record("CohortJoin", {"sender": "s4"}, T0).rejections[0]
    foreign = {**env, "federation_id": "elsewhere", **_join_fields(str(cohort), "s4")}
    assert "federation 'elsewhere'" in coord.on_record("CohortJoin", foreign, T0).rejections[0]


def test_site_refuses_control_records_not_from_the_aggregator() -> None:
    site = SecureSite(SecureSiteConfig(FED, "s0", SPEC), np.random.default_rng(0))
    site.submit(update_of("s0"), T0)
    env = MessageFactory(FED, "s1", KEYS["s1"]).envelope()
    rec = {**env, "cohort_id": "c", "target_version": 5, "join_deadline_ms": int(T0 * 1000) + 1}
    assert site.on_record("CohortOpen", rec, T0) == []
    assert "not sent by the aggregator" in site.drain_rejections()[0]
    agg = {**rec, "sender": AGG}
    (name, fields), = site.on_record("CohortOpen", agg, T0)
    assert name == "CohortJoin" and fields["base_version"] == 5 and site.stage is ClientStage.JOINED
    with pytest.raises(ProtocolError):
        site.submit(update_of("s0"), T0)
    assert site.on_record("CohortOpen", agg, T0) == []  # never joins one cohort twice


# ------------------------------------------------------------------------------- deadlines
def test_join_deadline_cancels_a_small_cohort_and_late_sites_do_not_join() -> None:
    net = make_net(cfg=config(join_deadline_s=10.0))
    net.open(version=5)
    net.submit(("s0", "s1"))
    while net.deliver_one():
        pass
    assert net.coord.tick(T0 + 9.999).sends == [] and net.coord.stage is ServerStage.JOINING
    net.clock.now = T0 + 10.0
    out = net.coordinator(net.coord.tick(net.clock.now))
    assert out.finished and out.failed == "only 2 joins at the deadline"
    net.submit(("s2",))  # the CohortOpen it knows has expired: holds its update
    assert net.sites["s2"].has_pending_update and not net.sites["s2"].in_cohort
    net.open(version=5)
    net.settle()
    assert finished_result(net).contributors == ("s0", "s1", "s2")
    assert net.clock.now == T0 + 20.0  # the second cohort closed its roster at its join deadline


def test_stage_deadlines_run_from_the_start_of_each_stage() -> None:
    cfg = config(join_deadline_s=5, share_deadline_s=7, input_deadline_s=11, unmask_deadline_s=13)
    net = make_net(cfg=cfg, die_after={"s3": "EncryptedShare"})
    net.open(version=5)
    net.submit(ALL_SITES[:3])
    net.settle()  # join deadline at +5 (3 joins), all shares in, inputs: all 3 arrive
    assert finished_result(net).contributors == ALL_SITES[:3] and net.clock.now == T0 + 5
    net.open(version=6)
    net.submit(ALL_SITES[3:4], base=6)  # s3 will share, then vanish before masking
    for s in ALL_SITES[:3]:
        net.publish(s, net.sites[s].submit(update_of(s, 6), net.clock.now))
    net.settle()
    assert finished_result(net).contributors == ALL_SITES[:3] and net.clock.now == T0 + 5 + 11


# ------------------------------------------------------------------------------- staleness
def test_clients_prescale_by_staleness_of_the_target_version() -> None:
    cfg = config(staleness_kind="polynomial", staleness_a=0.5)
    net = make_net(cfg=cfg)
    bases = {"s0": 9, "s1": 8, "s2": 6, "s3": 1}
    net.open(version=9)
    for s, b in bases.items():
        net.publish(s, net.sites[s].submit(update_of(s, b), net.clock.now))
    net.settle()
    event = finished_result(net)
    s = make_staleness("polynomial", 0.5)
    wl = SPEC.weight_levels
    w = {k: np.floor(N_SAMPLES[k] * s(9 - b) * wl) / wl for k, b in bases.items()}
    assert event.weight_sum == pytest.approx(sum(w.values()), abs=1e-12)
    want = sum(w[k] * delta_of(k).astype(np.float64) for k in bases)
    assert np.max(np.abs(event.weighted_delta_sum - want)) <= 4 * SPEC.clip / SPEC.levels


def test_an_update_too_stale_for_the_open_cohort_is_dropped_not_kept_forever() -> None:
    site = SecureSite(
        SecureSiteConfig(FED, "s0", SPEC, config().staleness(), max_staleness=2),
        np.random.default_rng(1),
    )
    open_record = {
        "federation_id": FED, "sender": AGG, "cohort_id": "c-9", "target_version": 9,
        "join_deadline_ms": int(T0 * 1000) + 60_000,
    }
    assert site.submit(update_of("s0", base=7), T0) == []  # no cohort open yet
    assert site.has_pending_update
    sends = site.on_record("CohortOpen", open_record, T0)
    assert [name for name, _ in sends] == ["CohortJoin"]  # staleness 2: still within bounds
    fresh = SecureSite(
        SecureSiteConfig(FED, "s1", SPEC, config().staleness(), max_staleness=2),
        np.random.default_rng(2),
    )
    fresh.submit(update_of("s1", base=6), T0)
    assert fresh.on_record("CohortOpen", open_record, T0) == []
    assert not fresh.has_pending_update and fresh.last_outcome is SiteOutcome.STALE


# ------------------------------------------------------------------------------- restart
def _restarted(net: Net) -> None:
    """Replace the coordinator by one rebuilt from its checkpoint (JSON and a copy of each array),
    then send its last control records again, as a restarted aggregator resends its outbox."""
    state = json.loads(json.dumps(net.coord.to_state()))
    arrays = {k: v.copy() for k, v in net.coord.state_arrays().items()}
    net.coord = CohortCoordinator.from_state(config(), state, arrays)
    net.coord.restart_stage_clock(net.clock.now)
    for (topic, receiver), value in net.outbox:
        net.inject(topic, receiver, value)


def test_a_restart_at_any_point_resumes_the_cohort_with_every_update() -> None:
    steps = 0
    while True:  # a restart after 0, 1, 2, ... deliveries, until the cohort is over before it
        net = make_net()
        net.open(version=5)
        net.submit()
        for _ in range(steps):
            net.deliver_one()
        if net.outcomes:
            break
        before = (net.coord.cohort_id, net.coord.stage)
        _restarted(net)
        assert (net.coord.cohort_id, net.coord.stage) == before
        net.settle()
        event = finished_result(net)
        want_sum, want_w = expected(ALL_SITES[:4])
        assert np.array_equal(event.weighted_delta_sum, want_sum) and event.weight_sum == want_w
        assert event.cohort_id == before[0] and len(net.outcomes) == 1, steps
        assert net.rejections == [], (steps, net.rejections)
        assert all(s.last_outcome is SiteOutcome.SPENT for s in net.sites.values())
        steps += 1
    assert steps > 30  # joins, roster, 12 shares, masked chunks, unmask responses


def _in_stage(stage: ServerStage) -> Net:
    """A cohort for version 5 with every site's update submitted, settled until ``stage``."""
    net = make_net()
    net.open(version=5)
    net.submit()
    net.settle_until(lambda: net.coord.stage is stage)
    return net


def test_a_resumed_stage_gets_a_fresh_deadline() -> None:
    net = _in_stage(ServerStage.SHARING)
    net.clock.now += config().share_deadline_s - 1  # the aggregator was down most of the stage
    _restarted(net)
    assert net.coord.deadline() == net.clock.now + config().share_deadline_s


def test_a_pause_within_the_run_gives_the_stage_only_the_time_it_took() -> None:
    net = _in_stage(ServerStage.SHARING)
    deadline = net.coord.deadline()
    assert deadline is not None
    for paused in (3.0, 2.5):  # two rebalances
        net.clock.now += paused
        net.coord.restart_stage_clock(net.clock.now, paused)
    assert net.coord.deadline() == deadline + 5.5
    assert net.coord.stage is ServerStage.SHARING


def test_an_older_checkpoint_abandons_the_cohort_and_sites_rejoin_with_the_same_update() -> None:
    net = make_net()
    net.open(version=5)
    net.submit()
    for _ in range(12):  # joins and the roster, part of the shares
        net.deliver_one()
    old = net.coord.cohort_id
    state = net.coord.to_state()
    ids_only = {**state, "format": 1,
                "open": {k: state["open"][k] for k in ("cohort_id", "stage", "target_version")}}
    net.coord = CohortCoordinator.from_state(config(), json.loads(json.dumps(ids_only)))
    assert net.coord.stage is None
    net.open(version=5)
    assert net.coord.cohort_id != old
    net.settle()
    event = finished_result(net)
    want_sum, want_w = expected(ALL_SITES[:4])
    assert np.array_equal(event.weighted_delta_sum, want_sum) and event.weight_sum == want_w
    assert any("abandoned at an aggregator restart" in r for r in net.rejections)
    with pytest.raises(ConfigError):
        CohortCoordinator.from_state(config(), {**state, "format": 99})


def test_a_checkpoint_whose_sum_does_not_fit_abandons_the_cohort() -> None:
    net = _in_stage(ServerStage.UNMASKING)
    state = net.coord.to_state()
    bad = {"total": np.zeros(D, dtype=np.uint64)}  # one word short
    restored = CohortCoordinator.from_state(config(), state, bad)
    assert restored.stage is None
    assert "abandoned" in restored._why_foreign(str(state["open"]["cohort_id"]))


# ------------------------------------------------------------------------------- config
@pytest.mark.parametrize("changes", [
    {"min_members": 1}, {"min_members": 5}, {"degree": 3}, {"threshold": 1},
    {"join_deadline_s": 0.0}, {"max_staleness": -1}, {"staleness_kind": "cubic"},
    {"vector_length": 0},
    {"spec": FixedPointSpec(1.0, levels=1 << 31, max_weight=float(1 << 20)),
     "buffer_size": 1 << 12, "min_members": 3000},  # the sum could need 65 bits
])
def test_unsafe_or_inconsistent_config_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        config(**changes)


def test_default_threshold_rule() -> None:
    assert config(buffer_size=4, min_members=3).shamir_threshold == 3
    assert config(buffer_size=3, min_members=2).shamir_threshold == 2
    big = config(buffer_size=10, min_members=6, degree=4)
    assert (big.graph_degree, big.shamir_threshold) == (4, 4)
    assert config().site_terms()["staleness"] == {"kind": "constant", "a": 0.5, "b": 0.0}

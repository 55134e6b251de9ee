"""The agent's reading of the aggregator's audit chain (agents.suspension): when its site is
suspended, by which event, and which versions predate a reinstatement."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.site import EXIT_SUSPENDED, GlobalVersion, SiteAgent, _write_json
from agents.suspension import SuspensionWatch
from aggregator.audit import audit_record
from fedsynth.messages import MessageFactory, MessageReader
from observability.audit import AuditChain, AuditEvent
from schemas.signing import IdentityKey
from tests.unit.test_agent_histograms import _agent
from tests.unit.test_agent_secure_wait import _Done, _Quiet, scripted

SITE = "Hungary"


def chain(*steps: tuple[str, str, dict[str, Any]]) -> list[AuditEvent]:
    """Real, linked events: ``(actor, action, details)`` appended in turn."""
    audit = AuditChain()
    return [audit.append(actor, action, details) for actor, action, details in steps]


def publish(version: int) -> tuple[str, str, dict[str, Any]]:
    return "aggregator", "publish_version", {"version": version, "contributors": []}


Step = tuple[str, str, dict[str, Any]]


def suspend(site: str = SITE, reason: str = "its privacy ledger went back") -> Step:
    return "aggregator", "suspend_site", {"site": site, "reason": reason}


def reinstate(site: str = SITE) -> tuple[str, str, dict[str, Any]]:
    return "operator", "reinstate_site", {"site": site, "epsilon": 9.0}


def watched(events: list[AuditEvent], site: str = SITE) -> SuspensionWatch:
    """A watch of ``site`` that took ``events`` in turn."""
    watch = SuspensionWatch(site)
    for event in events:
        watch.observe(event)
    return watch


def test_a_suspension_of_the_site_is_in_force_until_a_reinstatement() -> None:
    events = chain(publish(0), publish(1), suspend(), publish(2), publish(3))
    watch = watched(events)
    assert watch.suspended is not None
    assert watch.suspended.reason == "its privacy ledger went back"
    assert (watch.suspended.seq, watch.suspended.event_hash) == (2, events[2].hash)
    assert not watch.lifted_since(1)  # in force: no version's infinity is stale

    events.append(AuditChain(head=events[-1]).append(*reinstate()))
    watch = watched(events)
    assert watch.suspended is None
    # versions 0-3 were published before the reinstatement; a later one was not
    assert all(watch.lifted_since(v) for v in range(4)) and not watch.lifted_since(4)


def test_other_sites_and_other_actions_leave_the_site_alone() -> None:
    watch = watched(chain(publish(0), suspend("Cleveland"), ("gateway", "release", {"site": SITE})))
    assert watch.suspended is None and not watch.lifted_since(0)


def test_suspended_again_after_a_reinstatement() -> None:
    events = chain(
        publish(0), suspend(), publish(1), reinstate(), publish(2), suspend(SITE, "forked")
    )
    watch = watched(events)
    assert watch.suspended is not None and watch.suspended.reason == "forked"
    assert watch.suspended.event_hash == events[-1].hash
    assert not watch.lifted_since(0)  # suspended now: nothing is stale


def test_events_sent_again_after_a_restart_are_taken_once() -> None:
    """An aggregator restarted from its checkpoint sends its outbox again: events already read
    come a second time, after later ones."""
    events = chain(publish(0), suspend(), publish(1), reinstate(), publish(2))
    watch = watched([*events, events[1], events[0]])
    assert watch.suspended is None and watch.lifted_since(1)


def test_a_new_chain_starts_over() -> None:
    """Another chain's first event (a new run of the federation, a fresh aggregator state) drops
    what the old chain said; its own first event sent again does not."""
    old = chain(publish(0), suspend())
    watch = watched(old)
    watch.observe(old[0])
    assert watch.suspended is not None
    new = chain(("aggregator", "start", {"run": 2}), publish(0))
    for event in new:
        watch.observe(event)
    assert watch.suspended is None and not watch.lifted_since(0)


@given(st.lists(st.sampled_from(["publish", "suspend", "reinstate", "other"]), max_size=30),
       st.randoms(use_true_random=False))
def test_the_state_is_the_last_word_on_the_site_whatever_is_sent_again(
    script: list[str], rnd: Any
) -> None:
    """Property: after any chain, with any of its events sent again (each after itself), the
    watch says what the chain's last suspend/reinstate of the site says, and a version counts as
    lifted exactly when it was published before that reinstatement."""
    version, steps = 0, []
    for kind in script:
        if kind == "publish":
            steps.append(publish(version))
            version += 1
        elif kind == "suspend":
            steps.append(suspend())
        elif kind == "reinstate":
            steps.append(reinstate())
        else:
            steps.append(suspend("Cleveland"))
    events = chain(*steps)
    delivered = []
    for i, event in enumerate(events):
        delivered.append(event)
        if rnd.random() < 0.3:
            delivered.append(events[rnd.randrange(i + 1)])
    watch = watched(delivered)
    last = next((s for s in reversed(script) if s in ("suspend", "reinstate")), None)
    assert (watch.suspended is not None) == (last == "suspend")
    if last == "reinstate":
        published_before = script[: len(script) - script[::-1].index("reinstate")].count("publish")
        for v in range(version + 1):
            assert watch.lifted_since(v) == (v < published_before)
    else:
        assert not any(watch.lifted_since(v) for v in range(version + 1))


@given(st.lists(st.sampled_from(["publish", "suspend", "reinstate", "other"]), max_size=20),
       st.randoms(use_true_random=False))
def test_a_watch_saved_and_restored_anywhere_reads_on_as_if_never_stopped(
    script: list[str], rnd: Any
) -> None:
    """Property: saving the watch's state (through JSON, as ``state.json`` keeps it) after any
    prefix of a delivery, with resends, and restoring it, then taking the rest, ends in the
    same state as taking it all at once; the saved state names the last event taken."""
    steps = {"publish": publish(0), "suspend": suspend(), "reinstate": reinstate(),
             "other": suspend("Cleveland")}
    events = chain(*(steps[k] for k in script))
    delivered = [e for i, e in enumerate(events)
                 for e in [e, *([events[rnd.randrange(i + 1)]] if rnd.random() < 0.3 else [])]]
    cut = rnd.randrange(len(delivered) + 1)
    first = watched(delivered[:cut])
    restored = SuspensionWatch.from_dict(SITE, json.loads(json.dumps(first.to_dict())))
    assert restored.to_dict() == first.to_dict()
    assert first.last_hash == (events[first.last_seq].hash if first.last_seq >= 0 else None)
    for event in delivered[cut:]:
        restored.observe(event)
    assert restored.to_dict() == watched(delivered).to_dict()


def test_a_saved_watch_that_does_not_read_is_refused() -> None:
    good = watched(chain(publish(0), suspend())).to_dict()
    assert SuspensionWatch.from_dict(SITE, good).suspended is not None
    for bad in ({**good, "last_seq": "3"}, {**good, "suspended": [1]},
                {k: v for k, v in good.items() if k != "published"}, {**good, "genesis": 5}):
        with pytest.raises(ValueError, match="not a saved suspension watch"):
            SuspensionWatch.from_dict(SITE, bad)


# ------------------------------------------------------------------------- the site's agent
def _deliver(
    agent: SiteAgent, event: AuditEvent, sender: str = "aggregator", offset: int | None = None
) -> bool:
    """``event`` as the audit topic carries it: an AuditEvent record signed by ``sender``,
    handed to the agent's reading of that topic (read at ``offset``)."""
    identity = IdentityKey.load(agent.s.keys_dir, sender)
    record = audit_record(MessageFactory(agent.s.federation_id, sender, identity), event)
    reader = MessageReader(agent.s.federation_id, agent.keys)
    return agent._on_audit_message(reader, record.value, offset)


def test_a_restarted_agent_goes_on_from_the_audit_event_it_took_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent notes in its state the offset of the last event it took and the watch after
    it; started again, it goes on from there once the event read there first is that one, and
    says so, keeping what it read, when it is not (the caller then reads from the beginning)."""
    agent = _agent(tmp_path)
    site = agent.s.site
    events = chain(publish(0), suspend(site), publish(1))
    for offset, event in enumerate(events):
        assert _deliver(agent, event, offset=offset)
    _deliver(agent, events[1], offset=3)  # sent again: not taken, the position stays
    assert agent.state["audit"]["offset"] == agent.audit_at == 2
    _write_json(agent.state_path, agent.state)

    again = _agent(tmp_path)
    assert again.audit_at == 2 and again.suspensions.to_dict() == agent.suspensions.to_dict()
    assert again.suspensions.suspended is not None  # before anything is read
    again.audit_check = again.suspensions.last_hash  # as _assign sets it
    assert _deliver(again, events[2], offset=2) and again.audit_check is None
    later = AuditChain(head=events[-1]).append(*reinstate(site))
    assert _deliver(again, later, offset=3)
    assert again.suspensions.suspended is None and again.audit_at == 3

    moved = _agent(tmp_path)  # the topic holds another event where the last one was read
    moved.audit_check = moved.suspensions.last_hash
    with caplog.at_level(logging.WARNING, logger="agents.site"):
        assert not _deliver(moved, events[0], offset=2)
    assert "reading the topic from its beginning" in caplog.text
    assert moved.suspensions.suspended is not None  # kept: the topic is read again into it
    assert all(_deliver(moved, e, offset=i) for i, e in enumerate([*events, later]))
    assert moved.suspensions.to_dict() == again.suspensions.to_dict()


def test_an_unreadable_audit_position_is_reported_and_the_topic_read_from_the_beginning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = _agent(tmp_path)
    agent.state["audit"] = {"offset": -1, "watch": SuspensionWatch(agent.s.site).to_dict()}
    _write_json(agent.state_path, agent.state)
    with caplog.at_level(logging.WARNING, logger="agents.site"):
        again = _agent(tmp_path)
    assert again.audit_at is None and "audit" not in again.state
    assert "audit position does not read" in caplog.text


def _see(agent: SiteAgent, version: int, eps: float, *events: AuditEvent) -> Callable[[], None]:
    def step() -> None:
        agent.latest = GlobalVersion(version, np.zeros(1, np.float32), None, False, [], eps)  # type: ignore[arg-type]
        for event in events:
            _deliver(agent, event)
    return step


async def test_the_agent_stops_when_the_audit_chain_suspends_its_site_and_waits_when_restarted(
    tmp_path: Path,
) -> None:
    """The suspension stops the agent before the next version says so (its latest one still
    gives a bounded epsilon); started again, it trains on nothing while the site stays
    suspended, and once the reinstatement is in the chain it trains from the version it found,
    whose provenance (made before the reinstatement) gives the site's epsilon as infinite."""
    agent = _agent(tmp_path)
    site = agent.s.site
    events = chain(publish(1), publish(2), suspend(site), publish(3))
    trained, beats = scripted(agent)
    steps = [_see(agent, 2, 1.5, *events[:2]), _see(agent, 2, 1.5, events[2])]
    assert await agent._follow(_Quiet(steps)) == EXIT_SUSPENDED
    assert trained == [2] and beats[-1] == "suspended"
    state = json.loads(agent.state_path.read_text())
    assert state["suspended_by"] == events[2].hash and state["suspended_at"] == 2

    again = _agent(tmp_path)  # the operator starts it again; the reinstatement comes later
    trained, beats = scripted(again)
    back = AuditChain(head=events[-1]).append(*reinstate(site))
    steps = [_see(again, 3, math.inf, *events), _see(again, 3, math.inf),
             _see(again, 3, math.inf, back)]
    with pytest.raises(_Done):
        await again._follow(_Quiet(steps))
    assert trained == [3] and "suspended" not in beats


async def test_an_agent_started_again_stops_at_a_later_version_while_still_suspended(
    tmp_path: Path,
) -> None:
    agent = _agent(tmp_path)
    events = chain(publish(1), suspend(agent.s.site))
    scripted(agent)
    assert await agent._follow(_Quiet([_see(agent, 1, 1.0, *events)])) == EXIT_SUSPENDED
    again = _agent(tmp_path)
    trained, _ = scripted(again)
    steps = [_see(again, 1, 1.0, *events), _see(again, 1, 1.0), _see(again, 2, math.inf)]
    assert await again._follow(_Quiet(steps)) == EXIT_SUSPENDED
    assert trained == [] and json.loads(again.state_path.read_text())["suspended_at"] == 2


async def test_another_sites_suspension_and_records_not_from_the_aggregator_change_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = _agent(tmp_path)
    trained, _ = scripted(agent)
    events = chain(publish(1), suspend("Hungary"))
    forged = chain(suspend(agent.s.site))[0]

    def forge() -> None:  # signed by a site's key, not the aggregator's
        _deliver(agent, forged, sender=agent.s.site)

    def foreign() -> None:  # another federation's aggregator suspends a site of this name
        key = IdentityKey.generate()
        record = audit_record(MessageFactory("another", "aggregator", key), forged)
        agent._on_audit_message(MessageReader(agent.s.federation_id, agent.keys), record.value)

    with caplog.at_level(logging.WARNING, logger="agents.site"):
        with pytest.raises(_Done):
            await agent._follow(_Quiet([_see(agent, 1, 1.0, *events), forge, foreign]))
    assert trained == [1] and agent.suspensions.suspended is None
    # the site-signed record is reported; the other federation's is skipped quietly
    assert [r.getMessage() for r in caplog.records if r.name == "agents.site"] == [
        "ignoring an audit record: signed by 'Cleveland', not the aggregator"
    ]

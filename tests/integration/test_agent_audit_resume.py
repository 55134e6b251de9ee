"""A site agent restarted on the embedded broker goes on reading the audit topic from the event it
took last, instead of from the topic's beginning; where the topic no longer holds that event it
reads it all again and ends where a full read ends."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from agents.site import EXIT_SUSPENDED, SiteAgent, _write_json
from aggregator.audit import audit_record
from fedsynth.messages import MessageFactory
from observability.audit import AuditChain, AuditEvent
from schemas.signing import IdentityKey
from tests.unit.test_agent_histograms import _agent
from tests.unit.test_agent_secure_wait import _Done, scripted
from tests.unit.test_agent_suspension import publish, reinstate, suspend, watched
from topics.broker import EmbeddedBroker
from topics.clients import make_consumer, make_producer
from topics.registry import ALL_TOPICS, AUDIT, ensure_topics

MAX_POLLS = 120  # 500 ms each: a minute, far more than reading a few records takes


class _Tap:
    """The agent's real consumer, noting the audit offsets it hands over; stops the agent's
    loop (``_Done``) once ``done()`` holds."""

    def __init__(self, consumer: Any, done: Callable[[], bool]) -> None:
        self.consumer, self.done = consumer, done
        self.offsets: list[int] = []
        self.polls = 0

    async def getmany(self, **kwargs: Any) -> dict[TopicPartition, list[Any]]:
        if self.done():
            raise _Done
        self.polls += 1
        assert self.polls < MAX_POLLS, f"the agent read audit offsets {self.offsets} only"
        batch: dict[TopicPartition, list[Any]] = await self.consumer.getmany(**kwargs)
        self.offsets += [r.offset for tp, recs in batch.items() if tp.topic == AUDIT.name
                         for r in recs]
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)


def _fed_agent(tmp_path: Path, federation: str) -> SiteAgent:
    """The test's agent (its data, keys and state in ``tmp_path``) in its own federation, so
    that other tests' records on the audit topic are not its; training and heartbeats stubbed."""
    settings = _agent(tmp_path).s.model_copy(update={"federation_id": federation})
    agent = SiteAgent(settings, "127.0.0.1:9")
    scripted(agent)
    return agent


async def _publish(agent: SiteAgent, bootstrap: str, events: list[AuditEvent]) -> list[int]:
    """The events as the aggregator sends them to the audit topic; their offsets."""
    factory = MessageFactory(agent.s.federation_id, "aggregator",
                             IdentityKey.load(agent.s.keys_dir, "aggregator"))
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        sent = [await producer.send_and_wait(AUDIT.name, audit_record(factory, e).value,
                                             key=b"aggregator") for e in events]
    finally:
        await producer.stop()
    return [meta.offset for meta in sent]


async def _run(agent: SiteAgent, bootstrap: str, done: Callable[[], bool]) -> tuple[Any, _Tap]:
    """The agent's loop on a real consumer assigned as the agent assigns it; its exit (or None
    when ``done()`` stopped it) and the tap."""
    consumer = make_consumer(bootstrap, group_id=None)
    await consumer.start()
    try:
        await agent._assign(consumer)
        tap = _Tap(consumer, done)
        try:
            return await agent._follow(tap), tap
        except _Done:
            return None, tap
    finally:
        await consumer.stop()


@pytest.fixture
async def broker() -> AsyncIterator[str]:
    """A broker of this test's own, its topics made as the registry says (the agent reads the
    audit topic's one partition; an auto-created topic would have four)."""
    async with EmbeddedBroker(record=False) as embedded:
        await ensure_topics(embedded.bootstrap, ALL_TOPICS)
        yield embedded.bootstrap


async def test_a_restarted_agent_reads_the_audit_topic_on_from_the_event_it_took_last(
    broker: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    federation = f"fed-resume-{uuid.uuid4().hex[:8]}"
    first = _fed_agent(tmp_path, federation)
    site = first.s.site
    events = AuditChain()
    trail = [events.append(*step) for step in (publish(0), publish(1), suspend(site), publish(2))]
    offsets = await _publish(first, broker, trail)

    code, tap = await _run(first, broker, lambda: False)
    assert code == EXIT_SUSPENDED  # it read the suspension, noted where, and stopped
    assert first.audit_at == offsets[-1] and tap.offsets[0] <= offsets[0]

    # the operator reinstates the site; started again, the agent reads from the event it took
    # last (checked), not from the topic's beginning, and ends as a full read of the trail
    trail += [events.append(*reinstate(site)), events.append(*publish(3))]
    offsets += await _publish(first, broker, trail[4:])
    again = _fed_agent(tmp_path, federation)
    assert again.audit_at == offsets[3] and again.suspensions.suspended is not None
    code, tap = await _run(again, broker, lambda: again.suspensions.last_seq == 5)
    assert code is None and tap.offsets[0] == offsets[3]
    assert again.suspensions.suspended is None
    assert again.suspensions.to_dict() == watched(trail, site).to_dict()
    _write_json(again.state_path, again.state)

    # the topic holds another event where the agent read the one it took last (a broker that
    # lost its topics and was filled again): read again from the beginning, into the watch it
    # had, it ends the same, its position where that event lies
    moved = _fed_agent(tmp_path, federation)
    moved.audit_at = offsets[1]
    with caplog.at_level(logging.WARNING, logger="agents.site"):
        code, tap = await _run(moved, broker, lambda: moved.audit_at == offsets[-1])
    assert code is None and tap.offsets[0] == offsets[1] and offsets[0] in tap.offsets
    assert moved.suspensions.to_dict() == watched(trail, site).to_dict()
    assert "reading the topic from its beginning" in caplog.text

    # a position past the topic's end (a broker that lost its topics, now holding fewer
    # records; it answers a fetch there with nothing): read from the beginning, as above
    lost = _fed_agent(tmp_path, federation)
    lost.audit_at = offsets[-1] + 1000
    with caplog.at_level(logging.WARNING, logger="agents.site"):
        code, tap = await _run(lost, broker, lambda: lost.audit_at == offsets[-1])
    assert code is None and tap.offsets[0] <= offsets[0]
    assert lost.suspensions.to_dict() == watched(trail, site).to_dict()
    assert f"not {offsets[-1] + 1000} where this agent read" in caplog.text

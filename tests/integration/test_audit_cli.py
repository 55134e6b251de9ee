"""`fedsynth audit` on the embedded broker: the trail read back from its topic, checked and
shown; a forged or changed record makes it say the trail does not hold (exit 3)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from pathlib import Path

import pytest

from aggregator.audit import audit_record
from aggregator.audit_cli import EXIT_BROKEN
from fedsynth.cli import main
from fedsynth.messages import MessageFactory
from observability.audit import AuditChain
from schemas.signing import IdentityKey
from topics.clients import make_consumer, make_producer
from topics.registry import AUDIT, GLOBAL_MODEL, ensure_topics

FEDERATION = "fed-audit-cli"


async def _send(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"aggregator")
    finally:
        await producer.stop()


def test_the_trail_is_shown_checked_and_a_forgery_found(
    broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    aggregator = IdentityKey.generate()
    aggregator.save(keys, "aggregator")
    IdentityKey.generate().save(keys, "Hungary")
    spec = dataclasses.replace(AUDIT, name=f"fedsynth.test-audit.{uuid.uuid4().hex[:8]}")
    asyncio.run(ensure_topics(broker, [spec]))
    chain = AuditChain()
    events = [
        chain.append("aggregator", "publish_version", {"version": 0}),
        chain.append("aggregator", "suspend_site", {"site": "Hungary", "reason": "went back"}),
        chain.append("operator", "reinstate_site", {"site": "Hungary", "epsilon": 9.0}),
        chain.append("aggregator", "publish_version", {"version": 1}),
    ]
    factory = MessageFactory(FEDERATION, "aggregator", aggregator)
    records = [audit_record(factory, e).value for e in events]
    other = MessageFactory("another-federation", "aggregator", IdentityKey.generate())
    foreign = audit_record(other, events[0]).value
    asyncio.run(_send(broker, spec.name, [*records, records[1], foreign]))
    argv = ["audit", "--bootstrap", broker, "--run-dir", str(tmp_path), "--federation",
            FEDERATION, "--topic", spec.name]

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 events in 1 chain(s)" in out and "1 sent again" in out and "1 records of other" in out
    assert "The trail holds" in out and "suspend_site" in out

    assert main([*argv, "--site", "Hungary", "--json"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["action"] for e in shown] == ["suspend_site", "reinstate_site"]

    # a record signed with a site's key, and one whose event was changed after it was hashed
    site = MessageFactory(FEDERATION, "Hungary", IdentityKey.load(keys, "Hungary"))
    changed = dataclasses.replace(chain.append("aggregator", "publish_version", {"version": 2}),
                                  action="publish_versions")
    asyncio.run(_send(broker, spec.name, [audit_record(site, events[3]).value,
                                          audit_record(factory, changed).value]))
    assert main(argv) == EXIT_BROKEN
    out = capsys.readouterr().out
    assert "does NOT hold" in out
    assert "signed by 'Hungary', not the aggregator" in out
    assert "breaks at its event seq 4 (publish_versions): hash does not match" in out


def test_without_the_aggregators_key_it_says_so(
    broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    IdentityKey.generate().save(tmp_path / "keys", "Hungary")
    assert main(["audit", "--bootstrap", broker, "--run-dir", str(tmp_path)]) == 1
    assert "no aggregator.pub" in capsys.readouterr().err


def test_a_trail_cut_short_is_found_by_the_newest_global_version(
    broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The chain's links cannot show events cut off its end; the global-model topic's newest
    version, whose publication the trail does not record, does."""
    keys = tmp_path / "keys"
    aggregator = IdentityKey.generate()
    aggregator.save(keys, "aggregator")
    tag = uuid.uuid4().hex[:8]
    audit = dataclasses.replace(AUDIT, name=f"fedsynth.test-audit.{tag}")
    models = dataclasses.replace(GLOBAL_MODEL, name=f"fedsynth.test-global-model.{tag}")
    asyncio.run(ensure_topics(broker, [audit, models]))
    factory = MessageFactory(FEDERATION, "aggregator", aggregator)
    chain = AuditChain()

    def publish(version: int) -> None:  # as the aggregator does: the version, then its event
        fields = {"model_name": "m", "version": version, "vector": bytes(1_500_000),
                  "codec": "float32|zstd", "n_parameters": 375_000, "encoder": b"{}",
                  "contributors": [], "epsilon_by_site": {}}
        chunks = [c.value for c in factory.build_chunked("GlobalModel", fields)]
        asyncio.run(_send(broker, models.name, chunks))
        event = chain.append("aggregator", "publish_version", {"version": version})
        asyncio.run(_send(broker, audit.name, [audit_record(factory, event).value]))

    publish(0)
    publish(1)
    argv = ["audit", "--bootstrap", broker, "--run-dir", str(tmp_path), "--federation",
            FEDERATION, "--topic", audit.name, "--model-topic", models.name]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"the newest global version on {models.name} is 1" in out and "The trail holds" in out

    # version 2 is sent, its event is not (cut off the topic, or never sent)
    fields = {"model_name": "m", "version": 2, "vector": b"v", "codec": "float32|zstd",
              "n_parameters": 1, "encoder": b"{}", "contributors": [], "epsilon_by_site": {}}
    asyncio.run(_send(broker, models.name,
                      [c.value for c in factory.build_chunked("GlobalModel", fields)]))
    assert main(argv) == EXIT_BROKEN
    out = capsys.readouterr().out
    assert "does NOT hold" in out
    assert (f"{models.name} holds global version 2" in out
            and "the last it records is version 1" in out)


def test_reading_a_trail_creates_no_topic(
    broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Topics that do not exist are read as empty: assigning them would have the broker create
    them with its own layout (the embedded broker gives 4 partitions), which the registry's
    `fedsynth topics` would then refuse."""
    IdentityKey.generate().save(tmp_path / "keys", "aggregator")
    tag = uuid.uuid4().hex[:8]
    audit, models = f"fedsynth.test-no-audit.{tag}", f"fedsynth.test-no-models.{tag}"
    argv = ["audit", "--bootstrap", broker, "--run-dir", str(tmp_path), "--federation",
            FEDERATION, "--topic", audit, "--model-topic", models]
    assert main(argv) == 0
    assert "0 events in 0 chain(s)" in capsys.readouterr().out

    async def topics() -> set[str]:
        consumer = make_consumer(broker, group_id=None)
        await consumer.start()
        try:
            return set(await consumer.topics())
        finally:
            await consumer.stop()

    assert not {audit, models} & asyncio.run(topics())

"""A malformed or forged message on the aggregator's topics goes to the dead-letter topic with
its reason, and the aggregator carries on with honest messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas.signing import IdentityKey
from tests.integration.harness import (
    Federation,
    dump,
    notices,
    produce,
    read_all,
    start_aggregator,
    stop,
)
from topics.broker import EmbeddedBroker
from topics.registry import CONTROL, DEAD_LETTER, SITE_EVENTS, UPDATES, ensure_topics


@pytest.fixture
async def fresh() -> AsyncIterator[str]:
    async with EmbeddedBroker(record=False) as broker:
        await ensure_topics(broker.bootstrap)
        yield broker.bootstrap


@pytest.mark.slow
async def test_bad_messages_are_dead_lettered_and_honest_ones_applied(
    fresh: str, tmp_path: Path
) -> None:
    fed = Federation.create(tmp_path, ["A", "B"])
    proc = start_aggregator(fed, fresh, rounds=2)
    try:
        impostor = (
            fed.factory("A", IdentityKey.generate())
            .build(
                "Heartbeat",
                {"site_id": "A", "model_version": 0, "status": "x", "epsilon_spent": 0.0},
            )
            .value
        )
        stranger = (
            fed.factory("Mallory", IdentityKey.generate())
            .build(
                "Heartbeat",
                {"site_id": "Mallory", "model_version": 0, "status": "x", "epsilon_spent": 0.0},
            )
            .value
        )
        await produce(
            fresh,
            SITE_EVENTS.name,
            [b"not avro at all", impostor, stranger, fed.hello("A"), fed.hello("B", seed=1)],
        )
        await produce(fresh, UPDATES.name, [b"\xc3\x01" + b"\x00" * 20])
        control = await read_all(fresh, CONTROL.name, 1, until=lambda d: 0 in notices(d))
        assert 0 in notices(control), dump(tmp_path / "aggregator.log")
        dead = await read_all(
            fresh, DEAD_LETTER.name, DEAD_LETTER.partitions, until=lambda d: len(d) >= 4
        )
        reasons = {r["error_class"]: r for n, r in dead if n == "DeadLetter"}
        assert {
            "BadMarkerError",
            "BadSignatureError",
            "UnknownSenderError",
            "UnknownFingerprintError",
        } <= set(reasons), reasons.keys()
        assert reasons["BadMarkerError"]["payload"] == b"not avro at all"
        assert reasons["UnknownSenderError"]["origin_topic"] == SITE_EVENTS.name
        assert "Mallory" in reasons["UnknownSenderError"]["reason"]
        assert all(r["sender"] == "aggregator" for _, r in dead)
    finally:
        stop(proc)
    assert proc.returncode is not None

"""What the aggregator runtime does at assignments (no broker; see tests/unit/standin_app.py):
it handles nothing while another member of its group holds some inbound partitions, gives an
open cohort's stage its whole time again after a restart and the time a rebalance took after
one, and seeks every partition it holds
to its checkpoint's offset, or to the beginning."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from faust.types import TP

from aggregator.app import INBOUND_PARTITIONS, AggregatorRuntime
from aggregator.settings import AggregatorSettings
from tests.integration.harness import FED, Federation
from tests.unit.standin_app import StandInApp

EVERY = {TP(topic, partition) for topic, partition in INBOUND_PARTITIONS}


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[AggregatorRuntime]:
    fed = Federation.create(tmp_path, ["A", "B"])
    settings = AggregatorSettings(run_dir=tmp_path, federation_id=FED, sites=fed.sites)
    got = AggregatorRuntime(StandInApp(), settings, bytes(32))  # type: ignore[arg-type]
    yield got
    got.pool.shutdown()
    got.engine_thread.shutdown()
    got.telemetry.shutdown()


async def test_a_partial_assignment_stops_everything_until_every_partition_is_back(
    runtime: AggregatorRuntime, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    restarts: list[float | None] = []
    monkeypatch.setattr(runtime.service, "restart_deadlines", restarts.append)
    now = [1000.0]
    monkeypatch.setattr(runtime.service, "wall_clock", lambda: now[0])
    ticks: list[bool] = []
    monkeypatch.setattr(runtime.service, "tick", lambda: ticks.append(True))
    other = sorted(EVERY)[::3]  # what another member of the group holds
    with caplog.at_level(logging.ERROR, logger="aggregator.app"):
        await runtime.on_assigned(EVERY - set(other))
    assert not runtime.whole.is_set() and not runtime.consuming
    assert "a second aggregator?" in caplog.text
    assert all(f"{tp.topic}[{tp.partition}]" in caplog.text for tp in other)
    await runtime.on_tick()
    assert ticks == [] and restarts == []  # no deadline runs while shared

    await runtime.on_assigned(EVERY)
    assert runtime.whole.is_set() and runtime.consuming
    assert restarts == [None], "after a restart: the stage's whole time"
    await runtime.on_revoked(EVERY)  # a rebalance
    assert not runtime.whole.is_set()
    now[0] += 4.0
    await runtime.on_assigned(EVERY - set(other))  # a second member for a while
    now[0] += 3.0
    await runtime.on_assigned(EVERY)
    assert runtime.whole.is_set() and restarts == [None, 7.0], "the time the pause took"
    await runtime.on_revoked(EVERY)
    now[0] += 2.0
    await runtime.on_assigned(EVERY)
    assert restarts == [None, 7.0, 2.0], "each pause once, never the whole stage again"


async def test_reposition_seeks_to_the_checkpoint_or_the_beginning(
    runtime: AggregatorRuntime,
) -> None:
    held = sorted(EVERY)[:3]
    runtime.app.consumer.assigned = set(held)  # type: ignore[attr-defined]
    runtime.resume = {(held[1].topic, held[1].partition): 7}
    await runtime.reposition()
    assert runtime.app.consumer.seeks == [  # type: ignore[attr-defined]
        (held[0].topic, held[0].partition, 0),
        (held[1].topic, held[1].partition, 7),
        (held[2].topic, held[2].partition, 0),
    ]

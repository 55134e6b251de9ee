"""The embedded broker's life cycle: start, answer, record, stop, and never leave a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsynth.errors import ConfigError
from topics import broker as broker_module
from topics.broker import BrokerStartError, EmbeddedBroker
from topics.discovery import pid_alive, read_record, resolve_bootstrap
from topics.probe import metadata_broker_count

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_session_broker_answers_metadata(broker: str) -> None:
    host, port = broker.split(":")
    assert host == "127.0.0.1"
    assert metadata_broker_count(host, int(port)) == 1


def test_start_stop_twice_records_and_leaves_no_process(tmp_path: Path) -> None:
    embedded = EmbeddedBroker(home=tmp_path)
    first = embedded.start()
    assert embedded.start() == first  # second start is a no-op
    pid = embedded.pid
    assert pid is not None and pid_alive(pid)
    record = read_record(tmp_path)
    assert record is not None and (record.bootstrap, record.pid) == (first, pid)
    assert resolve_bootstrap(None, tmp_path) == first
    embedded.stop()
    embedded.stop()
    assert not pid_alive(pid)
    assert not embedded.running
    assert read_record(tmp_path) is None
    with pytest.raises(ConfigError, match="no broker"):
        resolve_bootstrap(None, tmp_path)


def test_port_in_use_is_refused(embedded_broker: EmbeddedBroker) -> None:
    clash = EmbeddedBroker(embedded_broker.port, record=False, startup_timeout_s=10)
    with pytest.raises(BrokerStartError, match="already in use"):
        clash.start()
    assert not clash.running


def test_failed_start_reports_broker_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that exits at start (here: a bad storage URL) gives an error with its output."""
    monkeypatch.setattr(broker_module, "STORAGE_URL", "nonsense://x/")
    embedded = EmbeddedBroker(record=False, startup_timeout_s=10)
    with pytest.raises(BrokerStartError, match="exited with code") as info:
        embedded.start()
    assert "nonsense" in str(info.value)
    assert not embedded.running


def test_stale_record_is_ignored(tmp_path: Path) -> None:
    dead = subprocess.Popen([PYTHON, "-c", "pass"])
    dead.wait()
    (tmp_path / "broker.json").write_text(
        json.dumps({"bootstrap": "127.0.0.1:1", "pid": dead.pid, "started_at": 0.0})
    )
    with pytest.raises(ConfigError):
        resolve_bootstrap(None, tmp_path)


_CHILD = """
import sys, time
from topics.broker import EmbeddedBroker
b = EmbeddedBroker(record=False)
b.start()
print(b.pid, flush=True)
if sys.argv[1] == "hang":
    time.sleep(60)
"""


@pytest.mark.parametrize("ending", ["exit", "hang"])
def test_owner_exit_or_kill_takes_broker_down(ending: str) -> None:
    """atexit stops the broker on a normal exit; PDEATHSIG kills it when the owner is SIGKILLed."""
    owner = subprocess.Popen(
        [PYTHON, "-c", _CHILD, ending], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    pid = int(owner.stdout.readline())
    if ending == "hang":
        assert pid_alive(pid)
        owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=30)
    assert _wait_gone(pid), f"broker pid {pid} outlived its owner"


def test_cli_broker_runs_until_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "FEDSYNTH_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    cli = subprocess.Popen(
        [PYTHON, "-m", "fedsynth.cli", "broker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert cli.stdout is not None
    try:
        lines = []
        while not any("Ctrl-C to stop" in line for line in lines):
            line = cli.stdout.readline()
            assert line, "".join(lines)  # EOF before the broker came up
            lines.append(line)
        record = read_record(tmp_path)
        assert record is not None
        host, port = record.bootstrap.split(":")
        assert metadata_broker_count(host, int(port)) == 1
        cli.send_signal(signal.SIGTERM)
        out = "".join(lines) + cli.communicate(timeout=30)[0]
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, out
    assert "broker up" in out and record.bootstrap in out
    assert _wait_gone(record.pid)
    assert read_record(tmp_path) is None

"""Where commands find Kafka: ``--bootstrap``, ``FEDSYNTH_BOOTSTRAP`` or ``broker.json``.

``fedsynth broker`` records the address of the broker it started in
``$FEDSYNTH_HOME/broker.json`` (``FEDSYNTH_HOME`` defaults to ``./.fedsynth``); every other command
resolves its bootstrap servers with :func:`resolve_bootstrap`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fedsynth.errors import ConfigError

__all__ = [
    "BOOTSTRAP_ENV",
    "HOME_ENV",
    "BrokerRecord",
    "clear_record",
    "fedsynth_home",
    "pid_alive",
    "read_record",
    "record_path",
    "resolve_bootstrap",
    "write_record",
]

log = logging.getLogger(__name__)

HOME_ENV = "FEDSYNTH_HOME"
BOOTSTRAP_ENV = "FEDSYNTH_BOOTSTRAP"
_RECORD_NAME = "broker.json"


@dataclass(frozen=True, slots=True)
class BrokerRecord:
    """What ``broker.json`` holds about a running embedded broker."""

    bootstrap: str
    pid: int
    started_at: float


def fedsynth_home() -> Path:
    """The state directory: ``$FEDSYNTH_HOME`` or ``./.fedsynth``."""
    return Path(os.environ.get(HOME_ENV) or ".fedsynth")


def record_path(home: Path | None = None) -> Path:
    """Path of ``broker.json`` under ``home`` (default :func:`fedsynth_home`)."""
    return (home or fedsynth_home()) / _RECORD_NAME


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        # field 3 is the state; 'Z' is a zombie (exited, not yet reaped)
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def write_record(bootstrap: str, pid: int, home: Path | None = None) -> Path:
    """Write ``broker.json`` atomically; returns its path."""
    path = record_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(BrokerRecord(bootstrap, pid, time.time()))))
    os.replace(tmp, path)
    return path


def read_record(home: Path | None = None) -> BrokerRecord | None:
    """Read ``broker.json``; None when missing or unreadable."""
    path = record_path(home)
    try:
        data = json.loads(path.read_text())
        return BrokerRecord(str(data["bootstrap"]), int(data["pid"]), float(data["started_at"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None


def clear_record(pid: int, home: Path | None = None) -> None:
    """Remove ``broker.json`` if it still describes the broker with ``pid``."""
    record = read_record(home)
    if record is not None and record.pid == pid:
        record_path(home).unlink(missing_ok=True)


def resolve_bootstrap(cli_value: str | None, home: Path | None = None) -> str:
    """The bootstrap servers a command should use.

    Order: the ``--bootstrap`` value, then ``$FEDSYNTH_BOOTSTRAP``, then the address recorded in
    ``broker.json`` by ``fedsynth broker`` if that broker's process is still alive.

    Args:
        cli_value: The value of ``--bootstrap`` (None or empty when not given).
        home: State directory (default :func:`fedsynth_home`).

    Returns:
        ``host:port[,host:port...]``.

    Raises:
        ConfigError: When none of the three names a broker.
    """
    if cli_value:
        return cli_value
    env_value = os.environ.get(BOOTSTRAP_ENV)
    if env_value:
        return env_value
    record = read_record(home)
    if record is not None:
        if pid_alive(record.pid):
            return record.bootstrap
        log.warning("%s names pid %d, which is gone", record_path(home), record.pid)
    raise ConfigError("no broker: run `fedsynth broker` or pass --bootstrap")

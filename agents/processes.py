"""Start and stop the federation's processes on one machine, leaving none behind.

Each child runs in its own session (process group), with its output in a log file. ``stop``
sends SIGTERM to every group, waits a grace period, then SIGKILLs what is left; it is safe to
call twice and runs from ``__exit__`` and at interpreter exit, so Ctrl-C, SIGTERM or an
exception in the parent all end with no child running.

SIGTERM (:func:`raise_on_sigterm`) stops the children of every live group and the embedded
brokers *in the handler*, before unwinding starts: a KeyboardInterrupt raised at an arbitrary
point of an asyncio program can leave the unwinding stuck (a CI run once saw a demo hang for a
minute after SIGTERM and its children outlive it). If unwinding still takes longer than a grace
period, the process exits anyway.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Child", "ProcessGroup", "raise_on_sigterm", "stop_everything"]

log = logging.getLogger(__name__)
_GROUPS: weakref.WeakSet[ProcessGroup] = weakref.WeakSet()


@dataclass
class Child:
    """A started child process and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class ProcessGroup:
    """The children of one run; a context manager that always stops them."""

    def __init__(self, log_dir: Path, grace_s: float = 8.0) -> None:
        self.log_dir = Path(log_dir)
        self.grace_s = grace_s
        self.children: list[Child] = []
        atexit.register(self.stop)
        _GROUPS.add(self)

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        """Start ``argv`` as ``name`` in its own process group, logging to ``log_dir/name.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        child = Child(name, popen, log_path)
        self.children.append(child)
        log.debug("started %s pid=%d", name, popen.pid)
        return child

    def dead(self) -> list[Child]:
        """Children that have exited."""
        return [c for c in self.children if not c.alive()]

    def stop_one(self, child: Child) -> None:
        """Stop one child (TERM, then KILL after the grace period)."""
        _signal_group(child.popen.pid, signal.SIGTERM)
        try:
            child.popen.wait(timeout=self.grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(child.popen.pid, signal.SIGKILL)
            child.popen.wait(timeout=5)
        _signal_group(child.popen.pid, signal.SIGKILL)  # anything the child left in its group

    def stop(self) -> None:
        """Stop every child, newest first; safe to call twice."""
        for child in self.children:
            if child.alive():
                _signal_group(child.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for child in reversed(self.children):
            try:
                child.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", child.name, self.grace_s)
            _signal_group(child.popen.pid, signal.SIGKILL)
            try:
                child.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.error("%s (pid %d) survived SIGKILL", child.name, child.popen.pid)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_everything() -> None:
    """Stop the children of every live :class:`ProcessGroup`, then every embedded broker."""
    from topics.broker import stop_all_brokers

    for group in list(_GROUPS):
        group.stop()
    stop_all_brokers()


def raise_on_sigterm(exit_after_s: float = 30.0) -> None:
    """On SIGTERM: stop every child and broker at once, then raise KeyboardInterrupt so that
    ``finally`` blocks run; exit with status 143 if that unwinding is not done in
    ``exit_after_s`` seconds."""

    def _handler(signum: int, frame: object) -> None:
        stop_everything()
        timer = threading.Timer(exit_after_s, os._exit, (128 + signum,))
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _handler)

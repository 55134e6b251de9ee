"""``fedsynth broker``: run the embedded Tansu broker until Ctrl-C or SIGTERM.

Starts the broker on 127.0.0.1 (a free port unless ``--port`` is given), creates every registered
topic, records the address in ``$FEDSYNTH_HOME/broker.json`` for the other commands, prints it, and
stops the broker cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from types import FrameType
from typing import Any

from rich.console import Console

from topics.broker import EmbeddedBroker
from topics.discovery import record_path
from topics.registry import ALL_TOPICS, ensure_topics

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``fedsynth broker`` options."""
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    parser.add_argument(
        "--startup-timeout", type=float, default=20.0, help="seconds to wait for the broker"
    )


class _StopSignals:
    """Turns SIGINT/SIGTERM into an event while active (installed before anything starts)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._done = threading.Event()
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        self._done.set()

    def __enter__(self) -> _StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)

    def wait(self) -> int:
        """Block until a signal arrives; returns its number."""
        while not self._done.wait(0.5):
            pass
        return self.received[0]


def run(args: argparse.Namespace) -> int:
    """Start the broker, create the topics, wait for a stop signal, stop."""
    console = Console()
    broker = EmbeddedBroker(args.port, startup_timeout_s=args.startup_timeout)
    with _StopSignals() as signals:
        try:
            bootstrap = broker.start()
            counts = asyncio.run(ensure_topics(bootstrap, ALL_TOPICS))
            console.print(f"[bold green]broker up[/] at [bold]{bootstrap}[/] (pid {broker.pid})")
            console.print(f"created {len(counts)} topics; address recorded in {record_path()}")
            console.print(f"use it with --bootstrap {bootstrap}; Ctrl-C to stop")
            signum = signals.wait()
            console.print(f"{signal.Signals(signum).name}: stopping broker")
        finally:
            broker.stop()
    return 0

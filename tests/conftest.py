"""Shared fixtures: one embedded broker per test session, unique topic names, an isolated home.

Tests marked ``slow`` run first (stable order otherwise): ``make test`` spreads the suite over
several test processes (pytest-xdist, one test handed out at a time), and starting the longest
tests first keeps one of them from being the last thing the whole run waits for.

The broker starts only when a test asks for it (``broker``, ``bootstrap`` or ``embedded_broker``),
once per session, and is stopped at the end; ``topics.broker`` also stops it at interpreter exit
and the child dies with the test process, so no test run leaves a broker behind.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from topics.broker import EmbeddedBroker
from topics.discovery import pid_alive


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first; otherwise the collection order (identical in every xdist worker)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def fedsynth_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private ``$FEDSYNTH_HOME`` so tests never read or overwrite the user's broker.json."""
    home = tmp_path_factory.mktemp("fedsynth-home")
    saved = {k: os.environ.get(k) for k in ("FEDSYNTH_HOME", "FEDSYNTH_BOOTSTRAP")}
    os.environ["FEDSYNTH_HOME"] = str(home)
    os.environ.pop("FEDSYNTH_BOOTSTRAP", None)
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """The session's embedded Tansu broker (started on first use, stopped at session end)."""
    broker = EmbeddedBroker(record=False)
    broker.start()
    pid = broker.pid
    try:
        yield broker
    finally:
        broker.stop()
    if pid is not None and pid_alive(pid):
        pytest.fail(f"embedded broker pid {pid} still alive after stop")


@pytest.fixture(scope="session")
def broker(embedded_broker: EmbeddedBroker) -> str:
    """Bootstrap address (``127.0.0.1:PORT``) of the session's embedded broker."""
    return embedded_broker.bootstrap


@pytest.fixture(scope="session")
def bootstrap(broker: str) -> str:
    """Alias of :func:`broker`: the bootstrap string to pass to clients."""
    return broker


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """A factory of topic names unique to this test: ``unique_topic("updates")``.

    Names look like ``test.<test-name>.<label>.<8 hex>``; the broker is shared by the session, so
    tests that create topics should use these to stay independent.
    """

    def make(label: str = "t") -> str:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:80]
        return f"test.{stem}.{label}.{uuid.uuid4().hex[:8]}"

    return make

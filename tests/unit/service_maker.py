"""A pytest fixture, offered to every unit test by conftest.py, that makes the aggregator's real
service without a broker: the runtime is built (with its reader, thread pool and engine thread)
but never started, and ``service.handle`` is fed signed records directly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.app import AggregatorRuntime
from aggregator.service import AggregatorService
from aggregator.settings import AggregatorSettings
from tests.integration.harness import FED, Federation

__all__ = ["Maker", "make_service"]

Maker = tuple[Federation, Callable[..., AggregatorService]]


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Maker]:
    fed = Federation.create(tmp_path, ["A", "B"])
    runtimes: list[AggregatorRuntime] = []

    def make(**settings: Any) -> AggregatorService:
        config = AggregatorSettings(
            run_dir=tmp_path, federation_id=FED, sites=fed.sites, hidden=(16, 16),
            n_timesteps=5, **settings,
        )
        runtime = AggregatorRuntime(None, config, bytes(32))  # type: ignore[arg-type]
        runtimes.append(runtime)
        return runtime.service

    try:
        yield fed, make
    finally:
        for runtime in runtimes:
            runtime.pool.shutdown()
            runtime.engine_thread.shutdown()
            runtime.telemetry.shutdown()

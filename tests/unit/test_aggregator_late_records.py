"""Records that come too early or too late for the aggregator are dead-lettered with a reason.

No broker: the runtime's real service is fed signed records directly (``AggregatorService.handle``
is pure). Before, a cohort record read before any cohort was open (one from before a restart) and
a plain update after the final version were dropped without a trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.app import AggregatorRuntime
from aggregator.service import AggregatorService, Phase
from aggregator.settings import AggregatorSettings
from tests.integration.feeder import Feeder
from tests.integration.harness import FED, Federation

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


def test_a_cohort_record_before_any_cohort_is_open_is_dead_lettered(make_service: Maker) -> None:
    fed, make = make_service
    service = make()  # secure mode, gathering hellos
    join = fed.factory("A").build(
        "CohortJoin",
        {"cohort_id": "c1-old", "site_id": "A", "dh_public_key": bytes(32),
         "enc_public_key": bytes(32), "base_version": 0},
    )
    fx = service.handle(join.value)
    assert service.phase is Phase.GATHERING
    assert [d.error_class for d in fx.dead] == ["CohortRejected"]
    assert "c1-old" in fx.dead[0].reason and "no cohort is open yet" in fx.dead[0].reason


def test_a_plain_update_after_the_final_version_is_dead_lettered(make_service: Maker) -> None:
    fed, make = make_service
    service = make(mode="plain", rounds=1)
    feeder = Feeder(fed)
    for hello in feeder.hellos:
        assert not service.handle(hello).dead
    assert service.phase is Phase.TRAINING and service.state is not None
    n = int(service.state.params.size)
    for site in ("A", "B"):
        for chunk in feeder.update(site, 0, n):
            assert not service.handle(chunk).dead
    assert service.phase is Phase.DONE and service.state.model_version == 1
    late = [service.handle(chunk) for chunk in feeder.update("A", 1, n)]
    reasons = [d.reason for fx in late for d in fx.dead]
    assert len(reasons) == 1 and "after the final version 1" in reasons[0], reasons
    assert service.state.model_version == 1

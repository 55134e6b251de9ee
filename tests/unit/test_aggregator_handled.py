"""What the runtime tells the app's group commit about each handled message (aggregator.app.
Handled): whether it changed checkpointed state, and whether a checkpoint was written on the way;
and what a fresh runtime loads ahead for version 0.

No broker: a stand-in for the faust app records what is sent; the runtime, its service and the
engine thread are the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from aggregator.app import AggregatorRuntime, Handled
from aggregator.settings import AggregatorSettings
from tests.integration.harness import FED, Federation
from tests.unit.standin_app import StandInApp
from topics.registry import SITE_EVENTS


def _settings(
    tmp_path: Path, mode: Literal["plain", "secure"]
) -> tuple[Federation, AggregatorSettings]:
    """Four sites' keys and hellos, and an aggregator's settings for them in ``mode``."""
    fed = Federation.create(tmp_path, ["A", "B", "C", "D"])
    return fed, AggregatorSettings(run_dir=tmp_path, federation_id=FED, sites=fed.sites, mode=mode)


@contextmanager
def _runtime(settings: AggregatorSettings, app: StandInApp) -> Iterator[AggregatorRuntime]:
    runtime = AggregatorRuntime(app, settings, bytes(32))  # type: ignore[arg-type]
    try:
        yield runtime
    finally:
        runtime.pool.shutdown()
        runtime.engine_thread.shutdown()
        runtime.telemetry.shutdown()


async def _hellos(runtime: AggregatorRuntime, fed: Federation) -> list[Handled]:
    """Every site's hello, in turn, and what handling each one did."""
    return [
        await runtime.on_message(SITE_EVENTS.name, 0, offset, b"k", fed.hello(site), [])
        for offset, site in enumerate(fed.sites)
    ]


async def test_the_message_that_makes_a_version_says_its_checkpoint_was_written(
    tmp_path: Path,
) -> None:
    """Plain mode: the last hello makes version 0, written ahead of its records, so its group
    may end there (aggregator.pipeline.GroupCommit)."""
    fed, settings = _settings(tmp_path, "plain")
    app = StandInApp()
    with _runtime(settings, app) as runtime:
        handled = await _hellos(runtime, fed)
    assert handled == [Handled(False)] * 3 + [Handled(changed=True, checkpointed=True)]
    assert app.producer.sent
    assert (settings.state_dir / "checkpoint.bin").exists()


async def test_records_sent_before_version_0_write_no_checkpoint(tmp_path: Path) -> None:
    """Secure mode: the last hello opens the histogram cohort (a control record is sent), but
    before version 0 nothing is checkpointed, so no group may end on its account."""
    fed, settings = _settings(tmp_path, "secure")
    app = StandInApp()
    with _runtime(settings, app) as runtime:
        handled = await _hellos(runtime, fed)
    assert app.producer.sent
    assert handled == [Handled(False)] * 4
    assert not (settings.state_dir / "checkpoint.bin").exists()


async def test_a_fresh_aggregator_loads_the_model_code_while_sites_gather(tmp_path: Path) -> None:
    """Version 0 builds the model: a fresh runtime loads torch ahead on a worker thread (not when
    version 0 is due, on the engine thread); one resumed from a checkpoint builds no model."""
    fed, settings = _settings(tmp_path, "plain")
    with _runtime(settings, StandInApp()) as fresh:
        assert fresh.warming is not None
        fresh.warming.result(timeout=120)  # loaded without error
        await _hellos(fresh, fed)  # version 0, checkpointed
    with _runtime(settings, StandInApp()) as resumed:
        assert resumed.service.state is not None
        assert resumed.warming is None

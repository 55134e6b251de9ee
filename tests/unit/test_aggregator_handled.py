"""What the runtime tells the app's group commit about each handled message (aggregator.app.
Handled): whether it changed checkpointed state, and whether a checkpoint was written on the way.

No broker: a stand-in for the faust app records what is sent; the runtime, its service and the
engine thread are the real ones.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from aggregator.app import AggregatorRuntime, Handled
from aggregator.settings import AggregatorSettings
from tests.integration.harness import FED, Federation
from tests.unit.standin_app import StandInApp
from topics.registry import SITE_EVENTS


async def _hellos(
    tmp_path: Path, mode: Literal["plain", "secure"]
) -> tuple[list[Handled], int, Path]:
    """Every site's hello, in turn: what each was, how many records were sent, the checkpoint."""
    fed = Federation.create(tmp_path, ["A", "B", "C", "D"])
    settings = AggregatorSettings(run_dir=tmp_path, federation_id=FED, sites=fed.sites, mode=mode)
    app = StandInApp()
    runtime = AggregatorRuntime(app, settings, bytes(32))  # type: ignore[arg-type]
    try:
        handled = [
            await runtime.on_message(SITE_EVENTS.name, 0, offset, b"k", fed.hello(site), [])
            for offset, site in enumerate(fed.sites)
        ]
        return handled, len(app.producer.sent), settings.state_dir / "checkpoint.bin"
    finally:
        runtime.pool.shutdown()
        runtime.engine_thread.shutdown()
        runtime.telemetry.shutdown()


async def test_the_message_that_makes_a_version_says_its_checkpoint_was_written(
    tmp_path: Path,
) -> None:
    """Plain mode: the last hello makes version 0, written ahead of its records, so its group
    may end there (aggregator.pipeline.GroupCommit)."""
    handled, sent, checkpoint = await _hellos(tmp_path, "plain")
    assert handled == [Handled(False)] * 3 + [Handled(changed=True, checkpointed=True)]
    assert sent > 0
    assert checkpoint.exists()


async def test_records_sent_before_version_0_write_no_checkpoint(tmp_path: Path) -> None:
    """Secure mode: the last hello opens the histogram cohort (a control record is sent), but
    before version 0 nothing is checkpointed, so no group may end on its account."""
    handled, sent, checkpoint = await _hellos(tmp_path, "secure")
    assert sent > 0
    assert handled == [Handled(False)] * 4
    assert not checkpoint.exists()


async def test_a_fresh_aggregator_loads_the_model_code_while_sites_gather(tmp_path: Path) -> None:
    """Version 0 builds the model: a fresh runtime loads torch ahead on a worker thread (not when
    version 0 is due, on the engine thread); one resumed from a checkpoint builds no model."""
    fed = Federation.create(tmp_path, ["A", "B"])
    settings = AggregatorSettings(
        run_dir=tmp_path, federation_id=FED, sites=fed.sites, mode="plain"
    )
    for resumed in (False, True):
        runtime = AggregatorRuntime(StandInApp(), settings, bytes(32))  # type: ignore[arg-type]
        try:
            if resumed:
                assert runtime.warming is None
                assert runtime.service.state is not None
                continue
            assert runtime.warming is not None
            runtime.warming.result(timeout=120)  # loaded without error
            assert "torch" in sys.modules
            for offset, site in enumerate(fed.sites):  # version 0, checkpointed
                await runtime.on_message(SITE_EVENTS.name, 0, offset, b"k", fed.hello(site), [])
            assert runtime.service.state is not None
        finally:
            runtime.pool.shutdown()
            runtime.engine_thread.shutdown()
            runtime.telemetry.shutdown()

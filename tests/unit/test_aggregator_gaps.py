"""The aggregator runtime reads again a record its consumer was never handed (topics.gaps).

No broker: a stand-in for the faust app records the seeks; the runtime, its service and the
engine thread are the real ones.
"""

from __future__ import annotations

from pathlib import Path

from aggregator.app import AggregatorRuntime
from aggregator.settings import AggregatorSettings
from tests.integration.harness import FED, Federation
from tests.unit.standin_app import StandInApp
from topics.registry import SITE_EVENTS


async def test_a_skipped_hello_is_read_again_and_nothing_twice(tmp_path: Path) -> None:
    fed = Federation.create(tmp_path, ["A", "B", "C", "D"])
    settings = AggregatorSettings(run_dir=tmp_path, federation_id=FED, sites=fed.sites)
    app = StandInApp()
    runtime = AggregatorRuntime(app, settings, bytes(32))  # type: ignore[arg-type]
    hellos = {offset: fed.hello(site) for offset, site in enumerate(["A", "B", "C"])}

    async def deliver(offset: int) -> None:
        await runtime.on_message(SITE_EVENTS.name, 0, offset, b"k", hellos[offset], [])

    try:
        await deliver(0)
        await deliver(2)  # offset 1 (B's hello) was never handed over
        assert app.consumer.seeks == [(SITE_EVENTS.name, 0, 1)]
        assert sorted(runtime.service.sites) == ["A", "C"]  # the record after the gap counts
        await deliver(1)  # the seek back brings it
        await deliver(2)  # and C's again, which is not handled twice
        assert sorted(runtime.service.sites) == ["A", "B", "C"]
        assert app.consumer.seeks == [(SITE_EVENTS.name, 0, 1)]
        assert runtime.gaps.first_open((SITE_EVENTS.name, 0)) is None
        assert runtime.next_offset[(SITE_EVENTS.name, 0)] == 3
        assert app.producer.sent == []  # nothing dead-lettered (a second hello would be)
    finally:
        runtime.pool.shutdown()
        runtime.engine_thread.shutdown()
        runtime.telemetry.shutdown()


def test_the_app_skips_the_crc_its_signatures_make_redundant_unless_asked(tmp_path: Path) -> None:
    """Every inbound record is signed over SHA-256 of its bytes, so the fetch's CRC is off."""
    from aggregator.app import build_app

    fed = Federation.create(tmp_path, ["A", "B"])
    for asked, expected in ((None, False), (True, True)):
        extra = {} if asked is None else {"check_crcs": asked}
        settings = AggregatorSettings(
            run_dir=tmp_path, federation_id=FED, sites=fed.sites, **extra
        )
        app = build_app(settings, "127.0.0.1:1", bytes(32))
        runtime = app.fedsynth_runtime  # type: ignore[attr-defined]
        try:
            assert app.conf.broker_check_crcs is expected
        finally:
            runtime.pool.shutdown()
            runtime.engine_thread.shutdown()
            runtime.telemetry.shutdown()

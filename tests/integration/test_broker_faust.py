"""faust on the embedded broker: with our settings an agent gets its first record, and the time it
takes to join grows with ``broker_session_timeout`` (about half of it), hence 10 s in
``topics.clients.faust_settings``. Runs faust in a child process to keep its services and signal
handlers out of the test session."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

from topics.registry import TopicSpec, ensure_topics

ROOT = Path(__file__).resolve().parents[2]

_APP = """
import asyncio, json, sys, time, uuid
import faust
from topics.clients import faust_settings, make_producer

async def first_record_after(bootstrap, topic, session_timeout):
    app = faust.App(f"t-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}", store="memory://",
                    **faust_settings(broker_session_timeout=session_timeout))
    got = asyncio.Event()

    @app.agent(app.topic(topic, key_serializer="raw", value_serializer="raw"))
    async def handle(stream):
        async for _ in stream:
            got.set()

    start = time.monotonic()
    await app.start()
    try:
        await asyncio.wait_for(got.wait(), 60)
        return time.monotonic() - start
    finally:
        await app.stop()

async def main(bootstrap, topic, timeouts):
    producer = make_producer(bootstrap)
    await producer.start()
    await producer.send_and_wait(topic, b"hello", key=b"k")
    await producer.stop()
    return [await first_record_after(bootstrap, topic, t) for t in timeouts]

print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], [float(t) for t in sys.argv[3:]]))))
"""


async def test_faust_join_time_follows_session_timeout(broker: str) -> None:
    topic = f"fedsynth.test-faust-{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker, [TopicSpec(topic, 3, "k", ("X",), 60_000)])
    short, long = 2.0, 6.0
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _APP, broker, topic, str(short), str(long)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    t_short, t_long = json.loads(done.stdout.strip().splitlines()[-1])
    assert t_long < long  # joins (and gets the record) before one session timeout has passed
    assert t_long - t_short >= 0.25 * (long - short)  # but the wait grows with the timeout

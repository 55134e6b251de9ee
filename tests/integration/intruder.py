"""A faust worker that joins the aggregator's consumer group and reads its inbound topics without
handling anything, acking (so committing) what it reads: for the partitions it is given, another
member that moves the group's committed offsets past records the aggregator never handled. Its
joining and leaving are each a rebalance for the aggregator.

``python -m tests.integration.intruder BOOTSTRAP GROUP DATADIR``; stop it with SIGTERM (it leaves
the group as it stops).
"""

from __future__ import annotations

import sys
from typing import Any

import faust
from faust.worker import Worker

from topics.clients import faust_settings
from topics.registry import SHARE_RELAY, SITE_EVENTS, UNMASK, UPDATES


def main(argv: list[str]) -> None:
    bootstrap, group, datadir = argv
    app = faust.App(
        group, broker=f"kafka://{bootstrap}", datadir=datadir, **faust_settings(
            broker_session_timeout=3.0, broker_commit_interval=0.5
        )
    )
    for spec in (SITE_EVENTS, UPDATES, SHARE_RELAY, UNMASK):
        topic = app.topic(spec.name, value_serializer="raw", key_serializer="raw")

        async def read(stream: Any) -> None:
            async for value in stream:
                print("read", len(value), flush=True)

        app.agent(topic, name=f"intruder-{spec.name}")(read)
    Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])

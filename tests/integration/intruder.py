"""A faust worker that joins the aggregator's consumer group and reads its inbound topics without
handling anything, acking (so committing) what it reads: for the partitions it is given, another
member that moves the group's committed offsets past records the aggregator never handled. Its
joining and leaving are each a rebalance for the aggregator.

``python -m tests.integration.intruder BOOTSTRAP GROUP DATADIR``, or :func:`start_intruder`; stop
it with SIGTERM (it leaves the group as it stops).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import faust
from faust.worker import Worker

from aggregator.app import INBOUND, consumer_group
from topics.clients import faust_settings

ROOT = Path(__file__).resolve().parents[2]


def start_intruder(bootstrap: str, run_dir: Path, federation: str) -> subprocess.Popen[bytes]:
    """The intruder as a child process in its own process group, logging to
    ``run_dir/intruder.log``, in the group of the aggregator of ``federation``."""
    with open(run_dir / "intruder.log", "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.intruder",
                bootstrap,
                consumer_group(federation),
                str(run_dir / "intruder"),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def main(argv: list[str]) -> None:
    bootstrap, group, datadir = argv
    app = faust.App(
        group, broker=f"kafka://{bootstrap}", datadir=datadir, **faust_settings(
            broker_session_timeout=3.0, broker_commit_interval=0.5
        )
    )
    for spec in INBOUND:
        topic = app.topic(spec.name, value_serializer="raw", key_serializer="raw")

        async def read(stream: Any) -> None:
            async for value in stream:
                print("read", len(value), flush=True)

        app.agent(topic, name=f"intruder-{spec.name}")(read)
    Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])

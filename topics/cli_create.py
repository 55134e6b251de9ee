"""``fedsynth topics``: create every registered topic on a cluster (Tansu or Apache Kafka).

Waits for the cluster for up to ``--wait`` seconds (a container that has just started may not
accept connections yet), then creates each topic of the registry with its partitions and configs,
plus ``fedsynth.synthetic.<dataset>`` for each ``--dataset``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from rich.console import Console
from rich.table import Table

from fedsynth.errors import TransportError
from topics.discovery import resolve_bootstrap
from topics.registry import ALL_TOPICS, TopicSpec, ensure_topics, synthetic_topic

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``fedsynth topics`` options."""
    parser.add_argument("--bootstrap", default=None, help="host:port (default: FEDSYNTH_BOOTSTRAP "
                        "or the broker recorded by `fedsynth broker`)")
    parser.add_argument("--dataset", action="append", default=[],
                        help="also create fedsynth.synthetic.DATASET (repeatable)")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to keep retrying while the cluster is unreachable")


async def _create_with_retry(
    bootstrap: str, specs: list[TopicSpec], wait_s: float
) -> dict[str, int]:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await ensure_topics(bootstrap, specs)
        except TransportError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(2.0)


def run(args: argparse.Namespace) -> int:
    """Create the topics and print what the cluster reports."""
    bootstrap = resolve_bootstrap(args.bootstrap)
    specs = list(ALL_TOPICS) + [synthetic_topic(d) for d in args.dataset]
    counts = asyncio.run(_create_with_retry(bootstrap, specs, args.wait))
    table = Table(title=f"topics on {bootstrap}")
    for column in ("topic", "partitions", "cleanup", "retention ms", "max bytes"):
        table.add_column(column)
    for spec in specs:
        table.add_row(spec.name, str(counts[spec.name]), str(spec.cleanup_policy),
                      str(spec.retention_ms), str(spec.max_message_bytes))
    Console().print(table)
    return 0

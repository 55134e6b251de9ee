"""An in-memory cohort: drives clients and server through every stage, with scheduled dropouts.

For tests, benchmarks and demonstrations; the Kafka adapters replace it in production. Broadcasts
(roster, mask request, unmask request, result) reach every site still present; shares are relayed
through the server; when nothing is in flight the driver fires the server's current deadline.
An optional ``carry`` hook sees every message that travels (with its sender) and returns what the
receiver gets, e.g. the message after a round trip through the wire encoding.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from fedsynth.secagg.client import (
    ClientConfig,
    ClientMessage,
    ClientState,
    ClientUpdate,
    client_step,
    start_client,
)
from fedsynth.secagg.messages import Deadline, EncryptedShare
from fedsynth.secagg.server import (
    ServerConfig,
    ServerMessage,
    ServerStage,
    ServerState,
    server_step,
    start_server,
)

__all__ = ["AGGREGATOR", "Carry", "CohortRun", "Vanish", "run_cohort"]

_TERMINAL = frozenset({ServerStage.DONE, ServerStage.FAILED})
AGGREGATOR = "aggregator"
"""The sender name of the server's messages as passed to ``carry``."""

Carry = Callable[[str, object], object]
"""``carry(sender, message) -> message as delivered``."""


def _direct(sender: str, message: object) -> object:
    return message


class Vanish(StrEnum):
    """When a site disappears for good."""

    BEFORE_ROSTER = "before_roster"
    MID_SHARES = "mid_shares"
    BEFORE_INPUT = "before_input"
    BEFORE_UNMASK = "before_unmask"


_BLOCKS: Mapping[Vanish, tuple[str, ...]] = {
    Vanish.BEFORE_ROSTER: ("CohortRoster", "EncryptedShare", "MaskRequest", "UnmaskRequest"),
    Vanish.MID_SHARES: ("EncryptedShare", "MaskRequest", "UnmaskRequest"),
    Vanish.BEFORE_INPUT: ("MaskRequest", "UnmaskRequest"),
    Vanish.BEFORE_UNMASK: ("UnmaskRequest",),
}


@dataclass(slots=True)
class CohortRun:
    """The outcome of :func:`run_cohort`: final states and every message the server accepted."""

    server: ServerState
    clients: dict[str, ClientState]
    transcript: list[ServerMessage] = field(default_factory=list)


def run_cohort(
    config: ServerConfig,
    updates: Mapping[str, ClientUpdate],
    seeds: Mapping[str, int],
    vanish: Mapping[str, Vanish] | None = None,
    carry: Carry = _direct,
) -> CohortRun:
    """Run one cohort to DONE or FAILED.

    Args:
        config: the server's cohort configuration.
        updates: each site's update.
        seeds: each site's stochastic-rounding seed.
        vanish: sites that disappear, and when.
        carry: applied to every message between parties (not to local deadlines) before delivery.
    """
    gone = dict(vanish or {})
    run = CohortRun(start_server(config), {})
    queue: deque[tuple[str, object]] = deque()  # (sender, message); sites send to the server
    for site, update in updates.items():
        cfg = ClientConfig(config.federation_id, config.cohort_id, site, config.spec,
                           np.random.default_rng(seeds[site]))
        run.clients[site], joins = start_client(cfg, update)
        queue.extend((site, j) for j in joins)
    while run.server.stage not in _TERMINAL:
        if not queue:
            deadline = Deadline(config.cohort_id, run.server.stage)
            run.server, out = server_step(run.server, deadline)
            run.transcript.append(deadline)
            queue.extend((AGGREGATOR, m) for m in out)
            continue
        sender, message = queue.popleft()
        message = carry(sender, message)
        if sender != AGGREGATOR:
            run.server, out = server_step(run.server, message)  # type: ignore[arg-type]
            run.transcript.append(message)  # type: ignore[arg-type]
            queue.extend((AGGREGATOR, m) for m in out)
        else:
            _to_clients(run, message, queue, gone)  # type: ignore[arg-type]
    return run


def _to_clients(
    run: CohortRun, message: ClientMessage, queue: deque[tuple[str, object]],
    gone: Mapping[str, Vanish],
) -> None:
    targets = [message.recipient] if isinstance(message, EncryptedShare) else sorted(run.clients)
    for site in targets:
        if site in gone and type(message).__name__ in _BLOCKS[gone[site]]:
            continue
        run.clients[site], out = client_step(run.clients[site], message)
        if gone.get(site) == Vanish.MID_SHARES:
            out = out[: len(out) // 2]
        queue.extend((site, m) for m in out)

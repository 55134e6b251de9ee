"""Commands of the federation's operator to the running aggregator, over Kafka.

``fedsynth aggregator --reinstate SITE --epsilon TOTAL --send`` takes a suspended site back
without stopping the aggregator: it signs an ``OperatorCommand`` with the ``operator`` identity
key of the key folder (``fedsynth keys new --site operator``; the aggregator finds its public
half there with the sites' keys) and sends it on the site-events topic, keyed by the site it
concerns. The aggregator reads it in order with the site's other events and applies it as the
offline command does (:meth:`aggregator.service.AggregatorService._on_operator`): a refusal
(the site is not suspended, the total is too small, the command is not the operator's) goes to
the dead-letter topic with its reason; a reinstatement goes into the audit chain, with the
command's id and note. The command's time dates the reinstatement: the operator sends it once
the site's other agents are stopped.

This departs from ARCHITECTURE.md's topic table, where site-events carries the sites' own
events only: the operator's commands ride there because the aggregator already reads that topic
in order and checkpoints its offsets, so a command is applied exactly once, in the order of the
site's events, with no topic or consumer more.
"""

from __future__ import annotations

import math

from aiokafka.errors import KafkaError

from aggregator.settings import OPERATOR
from fedsynth.errors import ConfigError
from fedsynth.messages import MessageFactory, Outgoing
from schemas.signing import IdentityKey
from topics.clients import make_producer
from topics.registry import SITE_EVENTS

__all__ = ["reinstate_command", "send_command"]


def reinstate_command(
    federation_id: str, key: IdentityKey, site: str, epsilon: float, note: str = "",
    absorbed_write: str | None = None,
) -> Outgoing:
    """The signed ``reinstate_site`` command for ``site`` at ledger total ``epsilon``, naming
    the last write of the ledger added to the site's when known (``absorbed_write``).

    Raises:
        ConfigError: ``epsilon`` is not a finite positive total, or ``site`` is empty.
    """
    if not site:
        raise ConfigError("the site to reinstate must be named")
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise ConfigError(f"epsilon {epsilon} is not a privacy total")
    factory = MessageFactory(federation_id, OPERATOR, key)
    fields = {"action": "reinstate_site", "site_id": site, "epsilon": epsilon, "note": note,
              "absorbed_write": absorbed_write or None}
    return factory.build("OperatorCommand", fields)


async def send_command(bootstrap: str, command: Outgoing, site: str) -> None:
    """Send ``command`` on the site-events topic, keyed by ``site``, and wait for the ack.

    Raises:
        ConfigError: the broker cannot be reached or refuses the record (nothing was sent).
    """
    producer = make_producer(bootstrap)
    try:
        await producer.start()
        await producer.send_and_wait(SITE_EVENTS.name, command.value, key=site.encode())
    except KafkaError as exc:
        raise ConfigError(
            f"the command was not sent: broker {bootstrap}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        await producer.stop()

"""Take a suspended site back: lift its suspension in the aggregator's checkpoint, offline.

A site is suspended when its reports show a second privacy ledger (:mod:`aggregator.ledgers`).
Once its operator has stopped the site's other agents and added their ledgers to the one that
goes on (``fedsynth ledger absorb``, which prints the new total), the aggregator's operator
stops the aggregator and runs ``fedsynth aggregator --reinstate SITE --epsilon TOTAL``. That
holds the state folder's lock (so it refuses to run beside the aggregator), loads the encrypted
checkpoint, lifts the suspension (the site's next report must be at least ``TOTAL`` and each
later one larger, and later versions' provenance gives the site's epsilon as ``TOTAL`` until it
reports more; a record the site created before the reinstatement that reports less, a stopped
agent's last one still on its way, is refused without suspending the site again),
appends an ``operator`` event to the audit chain and writes the checkpoint again with that
event's record in its outbox: the restarted aggregator sends it with the rest of the outbox
when it takes its partitions. Crash-only: the checkpoint write is atomic, so a reinstatement
either happened in full or not at all.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from aggregator.audit import audit_record
from aggregator.checkpoint import CheckpointStore
from aggregator.service import AggregatorService, SiteReinstated
from aggregator.settings import OPERATOR, AggregatorSettings
from fedsynth.durable import StateLock
from fedsynth.errors import ConfigError
from fedsynth.messages import MessageFactory
from observability import AuditChain, AuditEvent
from schemas.signing import IdentityKey

__all__ = ["reinstate_site"]

log = logging.getLogger(__name__)


def reinstate_site(
    settings: AggregatorSettings, key: bytes, site: str, epsilon: float, note: str = "",
    absorbed_write: str | None = None,
) -> str:
    """Lift ``site``'s suspension in the checkpoint at ``epsilon``; returns why it had been
    suspended. ``absorbed_write``: the last write id of the ledger added to the site's
    (:meth:`aggregator.ledgers.PrivacyLedgers.reinstate`).

    Raises:
        StateInUseError: the aggregator (or another command) holds the state folder.
        ConfigError: no checkpoint yet, or the reinstatement is refused
            (:meth:`AggregatorService.reinstated`).
        CheckpointError: the checkpoint cannot be read with ``key``.
    """
    with StateLock(settings.state_dir, "reinstating a site"):
        store = CheckpointStore(
            settings.state_dir / "checkpoint.bin", key, settings.federation_id
        )
        ckpt = store.load()
        if ckpt is None:
            raise ConfigError(
                f"no checkpoint in {settings.state_dir}: the aggregator has not published "
                "version 0, so no site can be suspended"
            )
        now_ms = int(time.time() * 1000)  # the other agents are stopped by now
        service, why = AggregatorService.reinstated(
            ckpt.extra["service"], site, epsilon, now_ms, absorbed_write
        )
        head = ckpt.extra.get("audit_head")
        chain = AuditChain(head=AuditEvent.from_dict(head) if head else None)
        event = SiteReinstated(site, epsilon, why, now_ms, note, None, absorbed_write)
        entry = chain.append(OPERATOR, "reinstate_site", event.audit_detail())
        identity = IdentityKey.load(settings.keys_dir, "aggregator")
        record = audit_record(MessageFactory(settings.federation_id, "aggregator", identity), entry)
        store.save(
            dataclasses.replace(
                ckpt,
                extra={**ckpt.extra, "service": service, "audit_head": entry.to_dict()},
                outbox=(*ckpt.outbox, record),
            )
        )
    log.warning("site %s reinstated at epsilon %r in %s", site, epsilon, store.path)
    return why

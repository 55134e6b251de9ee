"""What the aggregator's audit chain says about one site's suspension: pure bookkeeping.

The aggregator records each suspension of a site (``aggregator``/``suspend_site``: a second
privacy ledger of it was caught, :mod:`aggregator.ledgers`) and each reinstatement
(``operator``/``reinstate_site``) in its audit chain, on ``fedsynth.audit``, with the
publication of every global version (``aggregator``/``publish_version``) in between. A site's
agent reads that topic and feeds each event, in the topic's order, to a
:class:`SuspensionWatch`, which answers two questions:

* :attr:`SuspensionWatch.suspended`: is the site suspended now, and by which event? The agent
  stops as soon as it reads the suspension, instead of learning it from the next global
  version's provenance (which gives the site's epsilon as infinite), and so trains no updates
  that would all be refused.
* :meth:`SuspensionWatch.lifted_since`: was the site reinstated after a given version was
  published? Then that version's infinite epsilon for the site predates the reinstatement and
  is no reason to stop: the agent started again after a reinstatement trains from the version
  it finds, instead of waiting for a later one.

Events are taken once each: a record the aggregator sent again from its checkpoint's outbox
after a restart carries an event already read (its ``seq`` is not past the last one) and is
skipped. A first event (``seq`` 0) other than the chain's own starts a new chain (an aggregator
given a fresh state folder): what was known of the old one is dropped. Records of other
federations never reach the watch (the agent's reader refuses them), so a new run that takes a
new federation id, as it must on topics that keep an old run's records (the global-model topic's
old versions would otherwise be read as the new run's too), starts from nothing.

The watch's state is small (:meth:`SuspensionWatch.to_dict`): the agent keeps it in its
``state.json`` with the offset of the last event it took, and a restarted agent goes on from
that event instead of reading a trail that grows with every version from its beginning. It
reads that event again first and goes on only if its hash is the one the saved state took last
(:attr:`SuspensionWatch.last_hash`); otherwise the topic changed under it (a broker that lost
its topics, a trail cut short) and it reads the topic from its beginning into the watch it had,
which skips the events it took already and starts over at another chain's first event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from observability.audit import AuditEvent

__all__ = ["Suspension", "SuspensionWatch"]


@dataclass(frozen=True, slots=True)
class Suspension:
    """A suspension of the site, as its audit event gives it.

    Attributes:
        reason: Why the aggregator suspended the site.
        seq: The event's position in the chain.
        event_hash: The event's hash: names this suspension (an agent that stopped for it notes
            it, and started again before the reinstatement waits instead of stopping again).
    """

    reason: str
    seq: int
    event_hash: str


class SuspensionWatch:
    """One site's suspension state, read from the aggregator's audit events in chain order.

    Example::

        watch = SuspensionWatch("Hungary")
        for event in events:  # AuditEvent, in the order of the audit topic
            watch.observe(event)
        if watch.suspended is not None: ...
    """

    def __init__(self, site: str) -> None:
        """Args: site: the site whose suspension is followed."""
        self.site = site
        self._start(None)

    def _start(self, genesis: str | None) -> None:
        """Forget everything: a chain whose first event has hash ``genesis`` begins."""
        self._genesis = genesis
        self._last_seq = -1
        self._last_hash: str | None = None
        self._published = -1  # the last version the chain says was published
        self._suspended: Suspension | None = None
        self._lifted_after: int | None = None  # the last version published before a reinstatement

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last event taken (-1 before the first)."""
        return self._last_seq

    @property
    def last_hash(self) -> str | None:
        """The hash of the last event taken (None before the first): names the point a restart
        goes on from."""
        return self._last_hash

    @property
    def suspended(self) -> Suspension | None:
        """The suspension in force, or None (never suspended, or reinstated since)."""
        return self._suspended

    def lifted_since(self, version: int) -> bool:
        """Whether the site was reinstated after ``version`` was published (and not suspended
        again since): that version's provenance predates the reinstatement."""
        if self._suspended is not None or self._lifted_after is None:
            return False
        return version <= self._lifted_after

    def observe(self, event: AuditEvent) -> None:
        """Take the next event of the chain (one already taken, or of an older chain, is
        skipped; another chain's first event starts over)."""
        if event.seq == 0 and event.hash != self._genesis:
            self._start(event.hash)  # a new chain: a fresh aggregator state
        elif event.seq <= self._last_seq:
            return  # sent again after an aggregator's restart: taken already
        self._last_seq, self._last_hash = event.seq, event.hash
        details = event.details
        if event.action == "publish_version":
            self._published = max(self._published, _int(details.get("version"), -1))
            return
        if details.get("site") != self.site:
            return
        if event.action == "suspend_site":
            self._suspended = Suspension(str(details.get("reason", "")), event.seq, event.hash)
        elif event.action == "reinstate_site":
            self._suspended = None
            self._lifted_after = self._published

    def to_dict(self) -> dict[str, Any]:
        """The watch's state as JSON-ready values (:meth:`from_dict` reads it back)."""
        s = self._suspended
        return {
            "genesis": self._genesis,
            "last_seq": self._last_seq,
            "last_hash": self._last_hash,
            "published": self._published,
            "suspended": None if s is None else [s.reason, s.seq, s.event_hash],
            "lifted_after": self._lifted_after,
        }

    @classmethod
    def from_dict(cls, site: str, data: Mapping[str, Any]) -> SuspensionWatch:
        """A watch of ``site`` in the state :meth:`to_dict` gave.

        Raises:
            ValueError: ``data`` is not such a state (a field missing or of the wrong type).
        """
        watch = cls(site)
        try:
            suspended = data["suspended"]
            watch._genesis = _opt_str(data["genesis"])
            watch._last_seq = _req_int(data["last_seq"])
            watch._last_hash = _opt_str(data["last_hash"])
            watch._published = _req_int(data["published"])
            watch._lifted_after = None if data["lifted_after"] is None else _req_int(
                data["lifted_after"]
            )
            if suspended is not None:
                reason, seq, event_hash = suspended
                watch._suspended = Suspension(str(reason), _req_int(seq), str(event_hash))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a saved suspension watch: {exc!r}") from exc
        return watch


def _req_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{value!r} is not an integer")
    return value


def _opt_str(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default

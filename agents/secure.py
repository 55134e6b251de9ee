"""The site side of secure mode, without I/O: one finished update waits for a SecAgg+ cohort.

SecAgg+ (Bell et al., CCS 2020; Bonawitz et al., CCS 2017) inside FedBuff cohorts (Nguyen et al.,
AISTATS 2022). :class:`SecureSite` wraps the pure client of :mod:`fedsynth.secagg.client`: it takes
decoded, signature-verified records (``CohortOpen``, ``CohortRoster``, ``MaskRequest``,
``UnmaskRequest`` from the aggregator on ``fedsynth.control``; ``EncryptedShare`` from peers on
``fedsynth.share-relay``) and returns ``(schema name, fields)`` records for the adapter to sign and
send: ``CohortJoin`` to site-events, ``EncryptedShare`` to share-relay keyed by ``recipient``, the
masked ``ModelUpdate`` to updates, ``UnmaskResponse`` to unmask. No clock is read (``now`` is passed
in, seconds since the Unix epoch) and stochastic rounding draws from the Generator passed in.

Weight: the masked weight is ``min(n_samples, spec.max_weight) * s(v_c - b)`` with ``s`` clamped
to ``[0, 1]``, where ``v_c`` is the roster's target version (the version the cohort's sum is applied
to, see :mod:`aggregator.cohorts`). The quantization terms ``FixedPointSpec`` and ``s`` are not in
the roster: they come from the federation's secure terms (``CohortConfig.site_terms()`` on the
aggregator), which both sides must hold identically; the roster supplies ``modulus_bits`` (checked
against the spec: a modulus that could wrap is refused), ``threshold``, ``degree``,
``vector_length`` and ``target_version``.

Update lifetime: an update stays pending through cancelled, abandoned and failed cohorts and through
being left out (not a sharer, or dropped for a late input), and rejoins the next cohort with fresh
keys. It is dropped when a cohort opens for a version more than ``max_staleness`` past its base
(the site then trains a new one from the newest version). Once an ``UnmaskRequest`` names the
site a survivor its update is *spent*, even if that cohort then fails: the aggregator may already
hold enough shares to unmask a sum containing it, and putting the same update into a second sum
would let two sums be subtracted (a differencing leak). The site's next update is then trained
from the version that cohort's sum makes (:attr:`SecureSite.train_from`), not from an older one
that lacks the site's own contribution; a later cohort opened for the same version (the spent one
failed) lifts the wait. The agent keeps the wait across its own restart
(:meth:`SecureSite.resume_wait`): it reads the control topic again from the start, and cohorts
opened *before* the spent one must not lift the wait then, so a resumed wait is lifted only by
opens read after the spent cohort's own ``CohortOpen`` or after the agent has caught up with the
topic (:meth:`SecureSite.caught_up`, for when retention has removed that record).

A crash after the masked input went out: the agent keeps the update on disk, marked with the
cohort (:mod:`agents.pending`), and the restarted site holds it back
(:meth:`SecureSite.resume_masked`) until the replayed control topic shows how that cohort ended:
named a survivor in its ``UnmaskRequest`` (spent, as above), or the cohort ended without counting
it (the update rejoins the next cohort, as after a live failure).

Repeats: a control record whose ``message_id`` was already handled is ignored. A restarted
aggregator sends its checkpoint's outbox again and then goes on with the same cohort, so a second
copy of a roster or request must not look like a new one (a second roster would otherwise make the
site refuse the cohort).

Shares may arrive before the roster (the two topics are not ordered with each other): they wait and
are applied after it. An ``UnmaskRequest`` waits until the shares of every neighbouring sharer have
arrived, so the response holds all the shares the aggregator expects from this site.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsynth.errors import FedSynthError, ProtocolError
from fedsynth.secagg.client import (
    ClientConfig,
    ClientStage,
    ClientState,
    ClientUpdate,
    client_step,
    start_client,
)
from fedsynth.secagg.fixedpoint import FixedPointSpec
from fedsynth.secagg.messages import (
    CohortRoster,
    EncryptedShare,
    MaskedInput,
    MaskRequest,
    UnmaskRequest,
)
from fedsynth.secagg.wire import MaskedUpdateInfo, from_record, to_fields

__all__ = ["PendingUpdate", "SecureSite", "SecureSiteConfig", "Send", "SiteOutcome"]

log = logging.getLogger(__name__)

Send = tuple[str, dict[str, Any]]
"""``(schema name, record fields without the envelope)``."""

_FROM_AGGREGATOR = frozenset({"CohortOpen", "CohortRoster", "MaskRequest", "UnmaskRequest"})
_CONTROL_IDS_KEPT = 256


def _constant(_t: int) -> float:
    return 1.0


@dataclass(frozen=True, slots=True, eq=False)
class PendingUpdate:
    """A finished local update waiting for a cohort.

    Attributes:
        update_id: unique id (kept across cohorts the update joins).
        delta: the float update (``local - global_b``), flattened.
        n_samples: training rows behind it (the base weight).
        base_version: the global version ``b`` it was trained from.
        train_loss: mean local training loss.
        epsilon_spent: privacy spent including this update.
        ledger_sequence: the site ledger's sequence once the update was charged (None: no
            ledger).
        ledger_writes: the ids of the ledger's last writes then, the update's charge last
            (None: no ledger).
    """

    update_id: str
    delta: npt.NDArray[np.floating]
    n_samples: int
    base_version: int
    train_loss: float = 0.0
    epsilon_spent: float = 0.0
    ledger_sequence: int | None = None
    ledger_writes: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True, eq=False)
class SecureSiteConfig:
    """Who the site is and the federation's secure terms.

    Attributes:
        federation_id: bound into keys and shares.
        site_id: this site (the envelope sender of what it sends).
        spec: the federation's fixed-point parameters (identical to the aggregator's).
        staleness: ``s(t)``, identical to the aggregator's ``CohortConfig.staleness()``.
        max_staleness: skip cohorts with ``v_c - b`` above it (``None``: never).
        aggregator_id: the only sender trusted for control records.
    """

    federation_id: str
    site_id: str
    spec: FixedPointSpec
    staleness: Callable[[int], float] = _constant
    max_staleness: int | None = None
    aggregator_id: str = "aggregator"


class SiteOutcome(StrEnum):
    """How the site's last cohort ended for it."""

    SPENT = "spent"
    """Named a survivor: the update is in (or lost with) that cohort's sum; never reused."""
    EXCLUDED = "excluded"
    """Left out (not on the roster, not a sharer, or dropped): the update stays pending."""
    ABANDONED = "abandoned"
    """A newer cohort opened (the old one failed or was cancelled): the update stays pending."""
    REFUSED = "refused"
    """The site refused the cohort's parameters: the update stays pending."""
    STALE = "stale"
    """A cohort opened for a version too far past the update's base (``max_staleness``): the
    update is dropped, so that the site trains a fresh one instead of waiting forever."""
    UNKNOWN = "unknown"
    """After a restart, the cohort the update's masked input went to is no longer on the control
    topic, so whether its sum counted the update cannot be told: the update is dropped."""


class SecureSite:
    """One site's secure-mode participation (see the module docstring)."""

    def __init__(self, config: SecureSiteConfig, rng: np.random.Generator) -> None:
        self.config = config
        self.rng = rng
        self.pending: PendingUpdate | None = None
        self.last_outcome: SiteOutcome | None = None
        self.spent: list[str] = []
        self._client: ClientState | None = None
        self._open: tuple[str, int, int] | None = None  # cohort id, target version, deadline ms
        self._tried: str | None = None  # the last cohort joined: never joined twice
        self._early: list[EncryptedShare] = []
        self._deferred: UnmaskRequest | None = None
        self._rejections: list[str] = []
        self._spent_here = False  # named a survivor in the current cohort
        self._awaiting: tuple[str, int] | None = None  # (cohort, version) holding the spent update
        self._armed = True  # False while a resumed wait may still see cohorts older than its own
        self._masked_in: str | None = None  # the cohort the pending update's masked input went to
        self._unresolved = False  # _masked_in comes from before a restart: its fate is unknown
        self._seen_masked_open = False  # the replay has passed that cohort's CohortOpen
        self._handled: deque[str] = deque(maxlen=_CONTROL_IDS_KEPT)  # control message ids

    # ------------------------------------------------------------------ queries
    @property
    def has_pending_update(self) -> bool:
        """An update waits for (or is in) a cohort; train the next one only when this is False."""
        return self.pending is not None

    @property
    def in_cohort(self) -> bool:
        """The site is a member of a cohort that has not ended for it."""
        return self._client is not None

    @property
    def cohort_id(self) -> str | None:
        """The cohort the site is in, if any."""
        return None if self._client is None else self._client.config.cohort_id

    @property
    def stage(self) -> ClientStage | None:
        """The site's stage in its cohort, if any."""
        return None if self._client is None else self._client.stage

    @property
    def train_from(self) -> int:
        """Oldest global version the site should train its next update from.

        After its update was spent in a cohort for target version ``v_c``, that is ``v_c + 1``,
        the version the cohort's sum makes: an update trained from an older version would not
        contain the site's own last contribution, and the two would both push the model along
        the site's local gradient (measured in ``bench.staleness``: the secure FedBuff curve then
        oscillates and ends well below plain FedBuff's). Released when a later cohort opens for
        ``v_c`` or earlier (the spent cohort failed, so that version may never come). 0 when
        there is nothing to wait for.
        """
        return 0 if self._awaiting is None else self._awaiting[1]

    @property
    def awaiting(self) -> tuple[str, int] | None:
        """``(spent cohort, version its sum makes)`` while :attr:`train_from` waits, else None;
        the agent stores it so that a restart keeps the wait (:meth:`resume_wait`)."""
        return self._awaiting

    @property
    def waits_for_the_topic(self) -> bool:
        """Something taken back after a restart waits until the control topic has been read to
        its end (:meth:`caught_up`)."""
        return (self._awaiting is not None and not self._armed) or (
            self._unresolved and not self._seen_masked_open
        )

    @property
    def masked_in(self) -> str | None:
        """The cohort the pending update's masked input went to while that cohort may still
        count it (the agent keeps this on disk: :mod:`agents.pending`), else None."""
        return None if self.pending is None else self._masked_in

    @property
    def cohort_done(self) -> bool:
        """The last cohort consumed the update (it was named a survivor)."""
        return self.last_outcome is SiteOutcome.SPENT

    def drain_rejections(self) -> list[str]:
        """Reasons for records this site refused since the last call (for the dead-letter topic)."""
        out, self._rejections = self._rejections, []
        return out

    # ------------------------------------------------------------------ commands
    def resume_wait(self, cohort_id: str, version: int) -> None:
        """Take back a wait saved before a restart (see :attr:`awaiting`).

        The restarted agent replays the control topic from its start, where every cohort opened
        before ``cohort_id`` would otherwise look like a later one for an older version and lift
        the wait. So nothing lifts it until the replay reaches ``cohort_id``'s own open record, or
        :meth:`caught_up` says the agent has read all there was.
        """
        self._awaiting, self._armed = (cohort_id, version), False

    def resume_masked(self, cohort_id: str) -> None:
        """The pending update's masked input went to ``cohort_id`` before a restart.

        The update joins no cohort until the control topic, read again from its start, says how
        that cohort ended: an ``UnmaskRequest`` of it naming this site a survivor spends the
        update; one that does not, or a later ``CohortOpen`` with no such request before it, frees
        it; if :meth:`caught_up` comes without the cohort's own ``CohortOpen`` having been read,
        retention removed the cohort's records and the update is dropped
        (:attr:`SiteOutcome.UNKNOWN`).
        """
        self._masked_in, self._unresolved, self._seen_masked_open = cohort_id, True, False
        self._tried = cohort_id  # its shares, read again, are not strangers

    def caught_up(self) -> None:
        """The agent has read the control topic to its end: from now on every ``CohortOpen`` is
        newer than a resumed wait's cohort (whose open record retention may have removed)."""
        self._armed = True
        if self._unresolved and not self._seen_masked_open and self.pending is not None:
            log.warning(
                "site %s drops update %s: cohort %s, which got its masked input before a "
                "restart, is no longer on the control topic",
                self.config.site_id,
                self.pending.update_id,
                self._masked_in,
            )
            self.pending, self.last_outcome = None, SiteOutcome.UNKNOWN
            self._masked_in, self._unresolved = None, False

    def submit(self, update: PendingUpdate, now: float) -> list[Send]:
        """Hold a finished update (replacing a pending one); join the open cohort if possible.

        Raises:
            ProtocolError: the site is in a cohort with its current update.
        """
        if self._client is not None:
            raise ProtocolError(f"site is in cohort {self.cohort_id}; its update is locked in")
        self.pending = update
        return self._try_join(now)

    def on_record(self, name: str, record: Mapping[str, Any], now: float) -> list[Send]:
        """One decoded, verified record; refusals go to :meth:`drain_rejections`, never raises."""
        short = name.removeprefix("fedsynth.")
        try:
            return self._dispatch(short, record, now)
        except FedSynthError as exc:
            self._reject(short, record, f"{type(exc).__name__}: {exc}")
        except (KeyError, TypeError, ValueError) as exc:
            self._reject(short, record, f"malformed record ({type(exc).__name__}: {exc})")
        return []

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, name: str, record: Mapping[str, Any], now: float) -> list[Send]:
        if record["federation_id"] != self.config.federation_id:
            self._reject(name, record, f"federation {record['federation_id']!r}")
            return []
        if name in _FROM_AGGREGATOR and record["sender"] != self.config.aggregator_id:
            self._reject(name, record, "control record not sent by the aggregator")
            return []
        message_id = record.get("message_id")
        if name in _FROM_AGGREGATOR and message_id is not None:
            if message_id in self._handled:
                log.debug("site %s: %s %s again; ignored", self.config.site_id, name, message_id)
                return []  # a restarted aggregator resends its outbox
            self._handled.append(message_id)
        if name == "CohortOpen":
            return self._on_open(record, now)
        if name not in _FROM_AGGREGATOR and name != "EncryptedShare":
            self._reject(name, record, "not a secure-mode record for sites")
            return []
        message = from_record(name, record)
        if isinstance(message, UnmaskRequest) and self._unresolved:
            if message.cohort_id == self._masked_in:
                self._resolve(message)
                return []
        if isinstance(message, EncryptedShare) and message.recipient != self.config.site_id:
            return []  # share-relay carries every site's shares; not ours
        if self._client is None or message.cohort_id != self.cohort_id:
            if isinstance(message, EncryptedShare) and message.cohort_id != self._tried:
                # a share for a cohort this process never joined: after a restart the agent reads
                # share-relay again from its start, and every old share addressed to it is one
                log.debug("site %s: share for cohort %s ignored (not one it is in)",
                          self.config.site_id, message.cohort_id)
            return []  # broadcasts of cohorts this site is not in
        return self._on_message(message)

    def _on_open(self, record: Mapping[str, Any], now: float) -> list[Send]:
        cohort_id = str(record["cohort_id"])
        self._open = (cohort_id, int(record["target_version"]), int(record["join_deadline_ms"]))
        if self._unresolved and cohort_id == self._masked_in:
            self._seen_masked_open = True
        elif self._unresolved and self._seen_masked_open:
            self._resolve(None)  # the cohort ended with no UnmaskRequest: nothing was unmasked
        awaiting = self._awaiting
        if awaiting is not None and cohort_id == awaiting[0]:
            self._armed = True  # a replay reached the spent cohort: later opens are newer
        elif awaiting is not None and self._armed and self._open[1] < awaiting[1]:
            self._awaiting = None  # the spent cohort made no version: train from the newest
        if self._client is not None and self.cohort_id != cohort_id:
            log.info(
                "site %s leaves cohort %s: cohort %s opened",
                self.config.site_id,
                self.cohort_id,
                cohort_id,
            )
            self._leave(SiteOutcome.ABANDONED)
        return self._try_join(now)

    def _try_join(self, now: float) -> list[Send]:
        upd, opened = self.pending, self._open
        if upd is None or opened is None or self._client is not None or opened[0] == self._tried:
            return []
        if self._unresolved:
            return []  # a cohort from before a restart may still count this update
        cohort_id, target, deadline_ms = opened
        staleness = target - upd.base_version
        limit = self.config.max_staleness
        if limit is not None and staleness > limit:
            log.info(
                "site %s drops update %s: cohort %s is for version %d, %d past its base "
                "(max_staleness %d)",
                self.config.site_id,
                upd.update_id,
                cohort_id,
                target,
                staleness,
                limit,
            )
            self.pending, self.last_outcome = None, SiteOutcome.STALE
            return []
        if now * 1000 >= deadline_ms or staleness < 0:
            return []
        cfg = self.config
        client_cfg = ClientConfig(cfg.federation_id, cohort_id, cfg.site_id, cfg.spec, self.rng)
        weight = float(upd.n_samples)
        if weight > cfg.spec.max_weight:
            log.warning(
                "site %s: weight %d clamped to max_weight %g",
                cfg.site_id,
                upd.n_samples,
                cfg.spec.max_weight,
            )
            weight = cfg.spec.max_weight
        update = ClientUpdate(
            np.asarray(upd.delta).reshape(-1), weight, upd.base_version, self._clamped_staleness
        )
        self._client, joins = start_client(client_cfg, update)
        self._tried, self._early, self._deferred = cohort_id, [], None
        self._spent_here = False
        return [to_fields(j) for j in joins]

    def _clamped_staleness(self, t: int) -> float:
        return min(1.0, max(0.0, float(self.config.staleness(t))))

    def _on_message(self, message: object) -> list[Send]:
        client = self._client
        if client is None:  # pragma: no cover - checked by the caller
            return []
        if isinstance(message, CohortRoster):
            return self._on_roster(message)
        if isinstance(message, EncryptedShare):
            if client.stage == ClientStage.JOINED:
                self._early.append(message)
                return []
            return self._step(message) + self._maybe_unmask()
        if isinstance(message, UnmaskRequest):
            return self._on_unmask_request(message)
        if isinstance(message, MaskRequest):
            return self._step(message)
        raise ProtocolError(f"{type(message).__name__} is not for sites")

    def _on_roster(self, roster: CohortRoster) -> list[Send]:
        if self.config.site_id not in {m[0] for m in roster.members}:
            log.info("site %s is not on the roster of %s", self.config.site_id, roster.cohort_id)
            self._leave(SiteOutcome.EXCLUDED)
            return []
        out = self._step(roster)
        early, self._early = self._early, []
        for share in early:
            out += self._step(share)
        return out

    def _resolve(self, request: UnmaskRequest | None) -> None:
        """How the cohort that got the update's masked input before a restart ended."""
        upd, cohort_id = self.pending, self._masked_in
        self._unresolved, self._masked_in = False, None
        if upd is None:
            return
        if request is not None and self.config.site_id in request.survivors:
            self.spent.append(upd.update_id)
            self.pending, self.last_outcome = None, SiteOutcome.SPENT
            opened = self._open
            if opened is not None and opened[0] == request.cohort_id:
                self._awaiting, self._armed = (request.cohort_id, opened[1] + 1), True
            log.info(
                "site %s: update %s was counted in cohort %s before the restart",
                self.config.site_id,
                upd.update_id,
                cohort_id,
            )
            return
        log.info(
            "site %s: cohort %s ended without counting update %s; it waits for the next cohort",
            self.config.site_id,
            cohort_id,
            upd.update_id,
        )

    def _on_unmask_request(self, request: UnmaskRequest) -> list[Send]:
        if self.config.site_id in request.survivors and self.pending is not None:
            self.spent.append(self.pending.update_id)
            self.pending, self._spent_here = None, True
            opened = self._open  # the cohort the site is in (another CohortOpen makes it leave)
            if opened is not None and opened[0] == request.cohort_id:
                self._awaiting, self._armed = (request.cohort_id, opened[1] + 1), True
        self._deferred = request
        return self._maybe_unmask()

    def _maybe_unmask(self) -> list[Send]:
        client, request = self._client, self._deferred
        if client is None or request is None or client.stage != ClientStage.MASKED:
            return []
        if (
            self.config.site_id in request.survivors
            and not (client.neighbours & client.sharers) <= client.held.keys()
        ):
            return []  # wait for the remaining shares of neighbouring sharers
        self._deferred = None
        out = self._step(request)
        if self._client is not None and self._client.stage == ClientStage.UNMASKED:
            self._leave(SiteOutcome.SPENT)  # this site's part is over
        return out

    def _step(self, message: object) -> list[Send]:
        client = self._client
        if client is None:
            return []
        try:
            state, outbound = client_step(client, message)  # type: ignore[arg-type]
        except FedSynthError as exc:
            self._rejections.append(f"{type(message).__name__}: {type(exc).__name__}: {exc}")
            if isinstance(message, CohortRoster):
                self._leave(SiteOutcome.REFUSED)
            return []
        self._client = state
        sends = [self._to_send(state, m) for m in outbound]
        if state.stage == ClientStage.EXCLUDED:
            self._leave(SiteOutcome.EXCLUDED)
        return sends

    def _to_send(self, state: ClientState, message: object) -> Send:
        if not isinstance(message, MaskedInput):
            return to_fields(message)
        upd, roster = self.pending, state.roster
        if upd is None or roster is None:  # pragma: no cover - masking needs both
            raise ProtocolError("masked input without a pending update and roster")
        self._masked_in = state.config.cohort_id
        info = MaskedUpdateInfo(
            upd.update_id,
            upd.n_samples,
            upd.base_version,
            upd.train_loss,
            upd.epsilon_spent,
            roster.modulus_bits,
            upd.ledger_sequence,
            upd.ledger_writes,
        )
        return to_fields(message, info)

    def _leave(self, outcome: SiteOutcome) -> None:
        self._client, self._early, self._deferred = None, [], None
        self._masked_in = None  # spent, or the cohort ended without counting it
        self.last_outcome = SiteOutcome.SPENT if self._spent_here else outcome
        self._spent_here = False

    def _reject(self, name: str, record: Mapping[str, Any], why: str) -> None:
        reason = f"{name} from {record.get('sender', '?')!r}: {why}"
        log.warning("site %s refused %s", self.config.site_id, reason)
        self._rejections.append(reason)

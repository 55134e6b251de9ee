"""One privacy ledger per site: the epsilon a site reports must grow with every update it releases.

Each site agent keeps its privacy spending in a ledger in its state folder and reports the total
spent so far, this update included, as ``epsilon_spent`` in every update. One ledger only ever
grows: every update takes at least one DP-SGD step. So a site whose update reports an epsilon no
larger than one it already had applied has a second ledger: a second agent of the site running
with its own state folder (on another host: the folder lock covers one host only), or a state
folder lost or restored from a backup. Either way the site's real spending is more than any one
ledger says, and the reports can no longer be trusted. The aggregator then suspends the site
for the rest of the run: the update is refused, and so is everything the site sends later,
whatever epsilon it reports (a second ledger would otherwise be let in again once its total
passed the first one's). The operator sees why in the dead-letter topic and the error log, and
may take the site back once its other agents are stopped and their ledgers added to the one
that goes on (:meth:`PrivacyLedgers.reinstate`, run on the checkpoint by ``fedsynth aggregator
--reinstate`` while the aggregator is stopped).

Only applied updates are recorded (a plain update the engine took; a masked update in a cohort
sum), so a masked update whose cohort failed and which rejoins a later cohort with the same
epsilon is not compared against itself. Every other report is compared, applied or not, except
a replay (an old report again) and a malformed update (:data:`NOT_A_REPORT`): a lockstep twin
under FedAvg is refused as its site's second update of the round, and only its epsilon gives it
away. A site that trains without DP reports infinity, which is not compared. Epsilons are kept
as floats in the checkpoint's JSON, infinity included, as the service keeps the sites' own.

Epsilon alone misses two ledgers whose reports arrive in strictly increasing turns (one trains
more steps per update than the other: 1.2, then 1.35 from the other, then 1.45 ...). So an update
also reports its ledger's ``sequence`` (``ledger_sequence``: every write of one ledger adds one,
and every update is charged before it trains), and it must be larger than the last applied
update's too. Two ledgers copied from one folder count from the same sequence, so the second to
report a number the other already reported is caught; to slip by, each would have to skip the
numbers the other used, in turn. An update without one (an agent from before the field, or no
ledger) is compared by epsilon only.

Those two miss ledgers that do skip each other's numbers (each charges a round it never reports,
say, after a crash). So an update also reports the ids of its ledger's last writes
(``ledger_writes``: every write draws a random id, :meth:`fedsynth.privacy.SiteLedger.
recent_writes`; an agent sends the last 8, its own charge last). One ledger's writes form one
line, so in every report of it an id is followed by the same next id, whatever was skipped.
Two ledgers copied from one folder share their writes up to the copy (at least the
creation's: a new ledger draws an id too) and then go on with different ids: the first report
of the second ledger whose ids reach back to the last shared write shows it followed by another
id than an applied report of the first did, and the site is suspended as for a ledger that went
back. The aggregator keeps, per site, which id followed which in applied updates (the last
:data:`KEPT_LINKS` pairs). A twin whose reports never reach back to the shared write (8 or more
unreported writes before its first report) is left to the sequence, which is then far behind
the other ledger's. This is the fork check of a hash-chained
log (as in Certificate Transparency's consistency proofs: Laurie, Langley and Kasper, RFC 6962,
2013), made with ids instead of hashes: a site's own ledger is trusted not to lie, only to be
copied.

Pure: no I/O, no clock; the service and the cohort coordinator own one and checkpoint it.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.validation import ReasonCode
from fedsynth.errors import ConfigError

__all__ = ["KEPT_LINKS", "MAX_WRITES", "NOT_A_REPORT", "PrivacyLedgers", "Report", "reported"]

log = logging.getLogger(__name__)

_FORMAT = 1
KEPT_LINKS = 16
"""Per site, how many ``(write id, next write id)`` pairs of applied updates are kept (the
newest). Enough: a second ledger whose 8 reported ids reach back to the copy passes the first
one's sequence only if the first wrote at most 6 times since the copy, so the link that gives
it away is among the first ledger's newest 8; and it keeps each site's share of every
checkpoint small (about 1 KB)."""
MAX_WRITES = 64
"""Most write ids an update may report (an agent sends 8); more is not a ledger's report."""
_MAX_ID = 128

NOT_A_REPORT = frozenset({
    ReasonCode.UNKNOWN_SITE, ReasonCode.REPLAY, ReasonCode.FUTURE_BASE,
    ReasonCode.BAD_SAMPLE_COUNT, ReasonCode.BAD_SHAPE, ReasonCode.NON_FINITE,
})
"""Refusals of a plain update after which its epsilon is not held against its site's ledger: a
replay and malformed updates. Any other update, applied or refused (too stale, over the norm
bound, not wanted by the strategy this round), is a report of the site's ledger."""


@dataclass(frozen=True, slots=True)
class Report:
    """What one update says of its site's ledger.

    Attributes:
        epsilon: the site's total spent, this update included.
        sequence: the ledger's sequence once the update was charged (None: not reported).
        created_ms: when the site created the record (its ``created_at``; None: unknown).
        writes: the ids of the ledger's last writes, oldest first (empty: not reported).
    """

    epsilon: float
    sequence: int | None = None
    created_ms: int | None = None
    writes: tuple[str, ...] = ()


def reported(record: Mapping[str, Any]) -> Report:
    """The :class:`Report` of a ``ModelUpdate`` record."""
    sequence, created = record.get("ledger_sequence"), record.get("created_at")
    writes = record.get("ledger_writes")
    return Report(
        float(record["epsilon_spent"]),
        None if sequence is None else int(sequence),
        None if created is None else int(created),
        () if writes is None else tuple(str(w) for w in writes),
    )


class PrivacyLedgers:
    """The epsilon of each site's last applied update, and the sites suspended for a ledger
    that went back."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._sequence: dict[str, int] = {}
        self._links: dict[str, dict[str, str]] = {}  # write id -> the next one, in applied order
        self._suspended: dict[str, str] = {}
        self._reinstated: dict[str, int] = {}  # when, in ms since the epoch
        self._absorbed: dict[str, str] = {}  # the last write id of the ledger a reinstatement took
        self._new: list[tuple[str, str]] = []  # suspensions not yet taken (not state)

    def last(self, site: str) -> float | None:
        """The epsilon the site's last applied update reported (None: none applied yet)."""
        return self._last.get(site)

    def suspended(self, site: str) -> str | None:
        """Why the site is suspended, or None when it is not."""
        return self._suspended.get(site)

    def take_suspensions(self) -> list[tuple[str, str]]:
        """The sites suspended since the last call, each with why, in order (then forgotten:
        the caller records each once, e.g. in the audit chain)."""
        new, self._new = self._new, []
        return new

    def refusal(self, site: str, report: Report) -> str | None:
        """Why an update of ``site`` with ``report`` may not be applied (None: it may);
        changes nothing."""
        found = self._check(site, report)
        return None if found is None else found[1]

    def admit(self, site: str, report: Report) -> str | None:
        """As :meth:`refusal`, for an update that is otherwise valid: an epsilon or a sequence no
        larger than the last applied update's, or a write id followed by another id than in an
        applied update, also suspends the site (a NaN or negative epsilon, a negative sequence
        or write ids no ledger writes is refused without suspending: it is no ledger's report;
        so is a record of a reinstated site created before its reinstatement, see
        :meth:`reinstate`)."""
        found = self._check(site, report)
        if found is None:
            return None
        regressed, why = found
        if regressed:
            self._suspended[site] = why
            self._new.append((site, why))
            log.error("site %s suspended: %s", site, why)
            return f"site {site!r} is suspended for this run: {why}"
        return why

    def _check(self, site: str, report: Report) -> tuple[bool, str] | None:
        """None to admit; else whether the ledger went back, and why the update is refused."""
        why = self._suspended.get(site)
        if why is not None:
            return False, f"site {site!r} is suspended for this run: {why}"
        epsilon, sequence, writes = report.epsilon, report.sequence, report.writes
        if math.isnan(epsilon) or epsilon < 0:
            return False, f"site {site!r} reports epsilon {epsilon}, not a privacy total"
        if sequence is not None and sequence < 0:
            return False, f"site {site!r} reports ledger sequence {sequence}, not a ledger's"
        last = self._last.get(site)
        if last is not None and not (math.isinf(epsilon) or math.isinf(last) or epsilon > last):
            return self._went_back(site, report, f"epsilon {epsilon:.6g}", f"{last:.6g}")
        last_seq = self._sequence.get(site)
        if sequence is not None and last_seq is not None and sequence <= last_seq:
            return self._went_back(site, report, f"ledger sequence {sequence}", str(last_seq))
        malformed = _malformed(writes)
        if malformed is not None:
            return False, f"site {site!r} reports ledger writes {malformed}, not a ledger's"
        links = self._links.get(site, {})
        for write, after in itertools.pairwise(writes):
            applied = links.get(write)
            if applied is not None and applied != after:
                return self._went_back(
                    site, report, f"ledger write {write} followed by {after}", applied,
                    went="forked",
                )
        return None

    def _went_back(
        self, site: str, report: Report, claim: str, applied: str, went: str = "went back"
    ) -> tuple[bool, str]:
        writes, created_ms = report.writes, report.created_ms
        absorbed = self._absorbed.get(site)
        if absorbed is not None and absorbed in writes:
            if writes[-1] == absorbed:
                return False, (
                    f"site {site!r} reports {claim} after {applied} in a record charged to "
                    f"write {absorbed}, the last of the ledger its reinstatement took in: its "
                    "steps are in the total (refused; the site stays admitted)"
                )
            return True, (
                f"its privacy ledger {went}: an update reports {claim} after one applied at "
                f"{applied}, from a ledger that wrote after write {absorbed}, the last of the "
                "ledger the reinstatement took in (an agent of the site still running on it)"
            )
        since = self._reinstated.get(site)
        if since is not None and created_ms is not None and created_ms < since:
            return False, (
                f"site {site!r} reports {claim} after {applied} in a record created before "
                "its reinstatement: a ledger the reinstatement took in, whose record was still "
                "on its way (refused; the site stays admitted)"
            )
        return True, (
            f"its privacy ledger {went}: an update reports {claim} after one applied at "
            f"{applied} (a second agent of the site with its own state folder, or a state "
            "folder lost or restored from a backup)"
        )

    def reinstate(
        self, site: str, epsilon: float, reported: float, at_ms: int | None = None,
        absorbed_write: str | None = None,
    ) -> str:
        """Lift ``site``'s suspension, its ledger now standing at ``epsilon``; returns why it had
        been suspended.

        For an operator who stopped the site's other agents and added their ledgers to the one
        that goes on (``fedsynth ledger absorb``): ``epsilon`` is that ledger's total. The
        site's next report must be at least that (an update trained before the absorb has its
        steps in the total and reports it, :meth:`agents.pending.PendingStore.restore`), and
        each later one larger, as before. It must be larger than ``reported``, the largest
        epsilon the site reported so far: a total that holds a second ledger's steps is larger
        than either ledger's.

        ``at_ms``: when (ms since the epoch) the reinstatement is made, after the other agents
        were stopped. A record the site created before then that goes back (a stopped agent's
        last record, still on its way) is refused without suspending the site again: its
        ledger's steps are in the total. Records are dated by the site's clock, so one running
        ahead of this one by more than the time from the stop to the reinstatement makes such a
        record suspend the site again, as before; one running behind leaves a twin still
        running unsuspended while its records are refused.

        ``absorbed_write``: the id of the last write of the ledger added to the site's
        (``fedsynth ledger absorb`` prints it). Records that report their ledger's write ids
        are then judged by them, not by the clock: one that goes back and was charged to that
        write is refused without suspending (the stopped agent's last record); one whose
        ledger wrote after it suspends the site again (an agent still running on the added
        ledger). A record whose ids do not reach that write is dated as above.

        Raises:
            ConfigError: the site is not suspended, ``epsilon`` is not finite or not larger
                than ``reported``, or ``absorbed_write`` was followed by another write in an
                applied update (the absorbed ledger's last write cannot have been).
        """
        why = self._suspended.get(site)
        if why is None:
            raise ConfigError(f"site {site!r} is not suspended")
        if not math.isfinite(epsilon) or epsilon <= 0:
            raise ConfigError(f"site {site!r}: epsilon {epsilon} is not a privacy total")
        if not epsilon > reported:
            raise ConfigError(
                f"site {site!r} reported epsilon {reported:.6g} already; a total with its second "
                f"ledger added must be larger, not {epsilon:.6g} (run `fedsynth ledger absorb` "
                "on the site first)"
            )
        followed = self._links.get(site, {}).get(absorbed_write) if absorbed_write else None
        if followed is not None:
            raise ConfigError(
                f"site {site!r}: write {absorbed_write} was followed by {followed} in an update "
                "applied before the suspension, so it is not the last write of a stopped ledger "
                "(a ledger that never wrote after it was copied has none of its own: leave the "
                "absorbed write out)"
            )
        del self._suspended[site]
        self._last[site] = math.nextafter(epsilon, 0.0)  # a report equal to the total passes
        # The ledger that goes on may stand at a lower sequence than the other one reported:
        # its next report sets the bar again (a record the other sent before it was stopped
        # reports less than the total, and the epsilon bar refuses it). The same for the
        # writes: the links of the applied reports are forgotten (they may be either ledger's).
        self._sequence.pop(site, None)
        self._links.pop(site, None)
        if at_ms is not None:
            self._reinstated[site] = at_ms
        if absorbed_write:
            self._absorbed[site] = absorbed_write
        else:
            self._absorbed.pop(site, None)
        log.warning("site %s reinstated at epsilon %.6g (it was suspended: %s)", site, epsilon, why)
        return why

    def record(self, site: str, report: Report) -> None:
        """An update of ``site`` with ``report`` was applied: its epsilon and sequence set the
        bars (a report without a sequence keeps the last one's), and its write ids' links join
        the site's (the oldest beyond :data:`KEPT_LINKS` forgotten)."""
        self._last[site] = report.epsilon
        if report.sequence is not None:
            self._sequence[site] = report.sequence
        if len(report.writes) > 1:
            links = self._links.setdefault(site, {})
            for write, after in itertools.pairwise(report.writes):
                links.pop(write, None)  # re-inserted as the newest
                links[write] = after
            for stale in list(itertools.islice(links, max(0, len(links) - KEPT_LINKS))):
                del links[stale]

    def to_state(self) -> dict[str, Any]:
        """JSON-ready state."""
        return {
            "format": _FORMAT,
            "last": dict(self._last),
            "sequence": dict(self._sequence),
            "links": {s: list(map(list, links.items())) for s, links in self._links.items()},
            "suspended": dict(self._suspended),
            "reinstated": dict(self._reinstated),
            "absorbed": dict(self._absorbed),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> PrivacyLedgers:
        """Restore :meth:`to_state`'s output; None (a checkpoint from before ledgers) is empty.

        Raises:
            ConfigError: a state of an unknown format.
        """
        ledgers = cls()
        if state is None:
            return ledgers
        if state.get("format") != _FORMAT:
            raise ConfigError(f"privacy ledger state format {state.get('format')!r} is not 1")
        ledgers._last = {str(s): float(e) for s, e in state["last"].items()}
        # absent in checkpoints from before sequences were reported
        ledgers._sequence = {str(s): int(q) for s, q in state.get("sequence", {}).items()}
        ledgers._reinstated = {str(s): int(t) for s, t in state.get("reinstated", {}).items()}
        ledgers._absorbed = {str(s): str(w) for s, w in state.get("absorbed", {}).items()}
        links = state.get("links", {})  # absent in checkpoints from before write ids
        ledgers._links = {str(s): {str(a): str(b) for a, b in p} for s, p in links.items()}
        ledgers._suspended = {str(s): str(w) for s, w in state["suspended"].items()}
        return ledgers



def _malformed(writes: Sequence[str]) -> str | None:
    """What makes ``writes`` no ledger's (None: nothing): too many, an empty or overlong id, or
    an id twice (each write draws a fresh random id)."""
    if len(writes) > MAX_WRITES:
        return f"of {len(writes)} ids (at most {MAX_WRITES})"
    bad = next((w for w in writes if not 0 < len(w) <= _MAX_ID), None)
    if bad is not None:
        return f"with an id of {len(bad)} characters (1 to {_MAX_ID})"
    if len(set(writes)) != len(writes):
        return "naming one id twice"
    return None

"""The site ledger: one accountant per site, on disk, across rounds and restarts.

Spent privacy never resets. The ledger is a JSON file written atomically (temporary file in the same
folder, ``fsync``, ``os.replace``, ``fsync`` of the folder), so a crash leaves either the old or the
new ledger, never a torn one. Design rules that keep a site from re-spending privacy:

* **Explicit creation.** :meth:`SiteLedger.create` makes a new ledger and refuses to overwrite
  one; :meth:`SiteLedger.open` never creates. :meth:`SiteLedger.open_or_create` takes the site's
  own word (``trained_before``, derived by the agent from its checkpoint or outbox): a missing file
  for a site that has trained before raises :class:`LedgerMissingError` instead of silently
  starting from zero.
* **Identity.** The file records the site id and delta; opening it for another site or delta raises
  :class:`LedgerMismatchError`.
* **Integrity.** A SHA-256 checksum over the canonical body catches truncation and hand edits
  (:class:`LedgerCorruptError`).
* **No rollback.** Every write increments ``sequence``. The agent stores the sequence with each
  model checkpoint and passes it back as ``min_sequence``; an older file (a restored backup) is
  refused.
* **Write ahead.** :meth:`SiteLedger.record` persists the steps *before* the caller trains them,
  so a crash mid-round over-counts (safe) rather than under-counts.

* **Absorbing a second ledger.** A second agent of the site that kept its own ledger (on another
  host, or on a copy of the folder) spent the same records' privacy again.
  :meth:`SiteLedger.absorb` adds that ledger's steps to this one (DP-SGD steps on the same data
  compose, so the site's spending is at most the two histories composed) and records the absorbed
  file's checksum, so that the same file is not added twice. Steps both ledgers hold because one
  was copied from the other were spent once and are counted once: the creation and every write
  that adds steps append a random id and the step count reached (0 at the creation) to the
  ledger's ``writes``, so the writes two files share name the steps they share (a copy keeps the
  ids; two ledgers that happen to record the same steps do not share them). Without shared write
  ids (a ledger from before ``writes``) every step of the other ledger is added: an over-count,
  never an under-count.
* **Write ids on the wire.** Each update reports the ids of the ledger's last writes
  (:meth:`SiteLedger.recent_writes`): one ledger's ids form one line, two copies part after
  their last shared write, and the aggregator suspends a site whose reports part
  (:mod:`aggregator.ledgers`). ``fedsynth ledger absorb`` prints the absorbed file's last id
  (:meth:`SiteLedger.last_write_of`) for the reinstatement, which then tells that ledger's last
  record from one of an agent still running on it.

Not handled: two processes writing the same ledger at once (one agent per site is assumed).
Accounting: DP-SGD (Abadi et al. 2016) with the accountants of :mod:`fedsynth.privacy.accountant`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from fedsynth.privacy.accountant import Accountant, accountant_from_state, copy_accountant
from fedsynth.privacy.accountant import make_accountant as _make_accountant
from fedsynth.privacy.budget import BudgetGuard, PrivacyBudget
from fedsynth.privacy.errors import (
    AccountantStateError,
    LedgerCorruptError,
    LedgerError,
    LedgerMismatchError,
    LedgerMissingError,
    PrivacyConfigError,
)
from fedsynth.privacy.history import StepSegment

__all__ = ["LEDGER_FORMAT", "REPORTED_WRITES", "SiteLedger"]

logger = logging.getLogger(__name__)

LEDGER_FORMAT = "fedsynth-privacy-ledger/1"
REPORTED_WRITES = 8
"""How many of its ledger's last write ids an update reports (:meth:`SiteLedger.recent_writes`)."""


def _checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _write_atomically(path: Path, text: str) -> None:
    folder = path.parent
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    with contextlib.suppress(OSError):  # folder fsync is not possible on every platform
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _read_body(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LedgerCorruptError(f"privacy ledger {path} cannot be read: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != LEDGER_FORMAT:
        raise LedgerCorruptError(f"privacy ledger {path} is not a {LEDGER_FORMAT} file")
    stored = raw.pop("checksum", None)
    if stored != _checksum(raw):
        raise LedgerCorruptError(f"privacy ledger {path} fails its checksum (truncated or edited)")
    return raw


class SiteLedger:
    """A site's persistent privacy accountant. Build it with :meth:`create` or :meth:`open`."""

    __slots__ = (
        "_absorbed", "_accountant", "_delta", "_path", "_sequence", "_site_id", "_writes"
    )

    def __init__(
        self,
        path: Path,
        site_id: str,
        delta: float,
        accountant: Accountant,
        sequence: int,
        absorbed: tuple[str, ...] = (),
        writes: tuple[tuple[str, int], ...] = (),
    ) -> None:
        self._path = path
        self._site_id = site_id
        self._delta = delta
        self._accountant = accountant
        self._sequence = sequence
        self._absorbed = absorbed  # checksums of the ledgers added by absorb()
        self._writes = writes  # (random id, total steps after it): the creation, then each
        # write adding steps

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], *, site_id: str, delta: float, mechanism: str = "rdp"
    ) -> SiteLedger:
        """Creates and persists an empty ledger; refuses when the file already exists.

        Raises:
            LedgerError: When a ledger is already at ``path``.
            PrivacyConfigError: For an empty site id, a bad delta or an unknown mechanism.
        """
        target = Path(path)
        if not site_id:
            raise PrivacyConfigError("site_id must not be empty")
        PrivacyBudget(1.0, delta)  # validates delta
        if target.exists():
            raise LedgerError(f"privacy ledger {target} already exists; open it instead")
        # The creation draws a write id too (no steps behind it), so that copies made before
        # the first round already share a write and part after it (see the module docstring).
        ledger = cls(target, site_id, float(delta), _make_accountant(mechanism), 0,
                     writes=((secrets.token_hex(16), 0),))
        ledger._persist(ledger._accountant, 0)
        logger.info("privacy ledger created", extra={"site_id": site_id, "path": str(target)})
        return ledger

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, site_id: str, delta: float, min_sequence: int = 0
    ) -> SiteLedger:
        """Loads an existing ledger; checks it is this site's, at this delta, not rolled back.

        Args:
            path: The ledger file.
            site_id: The site opening it.
            delta: The delta the site accounts at.
            min_sequence: The last sequence the agent saw (from its checkpoint); older files
                are refused.

        Raises:
            LedgerMissingError: No file at ``path``.
            LedgerCorruptError: Unreadable, malformed or failing its checksum.
            LedgerMismatchError: Another site, another delta, or a sequence below ``min_sequence``.
        """
        target = Path(path)
        try:
            body = _read_body(target)
        except FileNotFoundError:
            raise LedgerMissingError(
                f"privacy ledger {target} for site {site_id!r} is missing"
            ) from None
        ledger = cls._from_body(target, body)
        ledger._check_identity(site_id, delta, min_sequence)
        return ledger

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike[str],
        *,
        site_id: str,
        delta: float,
        trained_before: bool,
        mechanism: str = "rdp",
        min_sequence: int = 0,
    ) -> SiteLedger:
        """Opens the ledger, creating it only for a site that has never trained.

        Raises:
            LedgerMissingError: The file is missing but ``trained_before`` is true: spent privacy
                would otherwise silently reset to zero.
        """
        if Path(path).exists() or trained_before:
            return cls.open(path, site_id=site_id, delta=delta, min_sequence=min_sequence)
        return cls.create(path, site_id=site_id, delta=delta, mechanism=mechanism)

    @classmethod
    def _from_body(cls, path: Path, body: dict[str, Any]) -> SiteLedger:
        site_id, delta, sequence = body.get("site_id"), body.get("delta"), body.get("sequence")
        if not isinstance(site_id, str) or not isinstance(delta, float):
            raise LedgerCorruptError(f"privacy ledger {path} lacks a site_id or delta")
        if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
            raise LedgerCorruptError(f"privacy ledger {path} has a bad sequence {sequence!r}")
        absorbed = body.get("absorbed", [])
        if not isinstance(absorbed, list) or not all(isinstance(a, str) for a in absorbed):
            raise LedgerCorruptError(f"privacy ledger {path} has a bad absorbed list")
        try:
            accountant = accountant_from_state(body.get("accountant"))  # type: ignore[arg-type]
        except AccountantStateError as exc:
            raise LedgerCorruptError(f"privacy ledger {path}: {exc}") from exc
        writes = _writes_from(path, body.get("writes", []), accountant.total_steps)
        return cls(path, site_id, delta, accountant, sequence, tuple(absorbed), writes)

    def _check_identity(self, site_id: str, delta: float, min_sequence: int) -> None:
        if self._site_id != site_id:
            raise LedgerMismatchError(
                f"privacy ledger {self._path} belongs to site {self._site_id!r}, not {site_id!r}"
            )
        if self._delta != float(delta):
            raise LedgerMismatchError(
                f"privacy ledger {self._path} accounts at delta={self._delta:g}, not {delta:g}; "
                "changing delta mid-life is not allowed"
            )
        if self._sequence < min_sequence:
            raise LedgerMismatchError(
                f"privacy ledger {self._path} is at sequence {self._sequence}, older than the "
                f"{min_sequence} last seen: a rolled-back ledger would re-spend privacy"
            )

    def _persist(
        self,
        accountant: Accountant,
        sequence: int,
        absorbed: tuple[str, ...] | None = None,
        writes: tuple[tuple[str, int], ...] | None = None,
    ) -> None:
        body: dict[str, Any] = {
            "format": LEDGER_FORMAT,
            "site_id": self._site_id,
            "delta": self._delta,
            "sequence": sequence,
            "accountant": accountant.to_state(),
        }
        absorbed = self._absorbed if absorbed is None else absorbed
        if absorbed:  # absent until a first absorb, so older files keep their bytes
            body["absorbed"] = list(absorbed)
        writes = self._writes if writes is None else writes
        if writes:  # absent in a ledger created before write ids, until its first write
            body["writes"] = [list(w) for w in writes]
        body["checksum"] = _checksum(body)
        try:
            _write_atomically(self._path, json.dumps(body, indent=2, sort_keys=True))
        except OSError as exc:
            raise LedgerError(f"privacy ledger {self._path} could not be written: {exc}") from exc

    @property
    def path(self) -> Path:
        """The ledger file."""
        return self._path

    @property
    def site_id(self) -> str:
        """The site this ledger belongs to."""
        return self._site_id

    @property
    def delta(self) -> float:
        """The delta this site accounts at."""
        return self._delta

    @property
    def sequence(self) -> int:
        """Number of writes so far; store it with checkpoints and pass it as ``min_sequence``."""
        return self._sequence

    def recent_writes(self, n: int = REPORTED_WRITES) -> tuple[str, ...]:
        """The ids of the last ``n`` writes, oldest first: the creation's and those that added
        steps (fewer in a young ledger; none in one from before write ids).

        An update reports them: one ledger's writes form one line, so each id is always followed
        by the same next id, while two ledgers copied from one folder follow their last shared
        write with different ids. The aggregator holds what applied updates showed against every
        later report (:mod:`aggregator.ledgers`).
        """
        if n < 0:
            raise PrivacyConfigError(f"n must be >= 0, got {n}")
        return tuple(w[0] for w in self._writes[-n:]) if n else ()

    def holds_write(self, write_id: str) -> bool:
        """Whether this ledger made the write ``write_id`` (or holds it from the ledger it was
        copied from)."""
        return any(w[0] == write_id for w in self._writes)

    @property
    def total_steps(self) -> int:
        """Steps recorded over the site's life."""
        return self._accountant.total_steps

    @property
    def accountant(self) -> Accountant:
        """A copy of the accountant (changes go through :meth:`record` only)."""
        return copy_accountant(self._accountant)

    def spent(self, delta: float | None = None) -> float:
        """Epsilon spent over the site's life, at ``delta`` (the ledger's delta by default)."""
        return self._accountant.epsilon(self._delta if delta is None else delta)

    def record(
        self,
        noise_multiplier: float,
        sample_rate: float,
        steps: int = 1,
        *,
        budget: PrivacyBudget | None = None,
    ) -> float:
        """Persists ``steps`` more steps (call before training them); returns the new epsilon.

        Args:
            noise_multiplier: Noise multiplier of the steps.
            sample_rate: Poisson sample rate of the steps.
            steps: How many steps.
            budget: When given, the steps are refused (nothing written) if they would exceed it.

        Raises:
            BudgetExceededError: The steps would exceed ``budget``; ledger and file unchanged.
            LedgerError: The file could not be written; the in-memory ledger is unchanged.
        """
        if budget is not None:
            if budget.delta != self._delta:
                raise PrivacyConfigError(
                    f"budget delta={budget.delta:g} differs from the ledger's delta={self._delta:g}"
                )
            BudgetGuard(self._accountant, budget).check(noise_multiplier, sample_rate, steps)
        updated = copy_accountant(self._accountant)
        updated.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        writes = (*self._writes, (secrets.token_hex(16), updated.total_steps))
        self._persist(updated, self._sequence + 1, writes=writes)
        self._accountant, self._sequence, self._writes = updated, self._sequence + 1, writes
        spent = self.spent()
        logger.info(
            "privacy spent recorded",
            extra={"site_id": self._site_id, "steps": steps, "epsilon": spent},
        )
        return spent

    @staticmethod
    def last_write_of(path: str | os.PathLike[str]) -> str | None:
        """The id of the last write of the ledger file at ``path`` (None: a ledger without
        write ids), read and checked as :meth:`open` does, for any site and delta.

        Raises:
            LedgerMissingError: No file at ``path``.
            LedgerCorruptError: Unreadable, malformed or failing its checksum.
        """
        source = Path(path)
        try:
            body = _read_body(source)
        except FileNotFoundError:
            raise LedgerMissingError(f"privacy ledger {source} is missing") from None
        writes = SiteLedger._from_body(source, body)._writes
        return writes[-1][0] if writes else None

    def absorb(self, other: str | os.PathLike[str]) -> float:
        """Adds the steps of another ledger of this site to this one; returns the new epsilon.

        For a site where a second agent kept its own ledger (see the module docstring). The other
        file is read and checked as :meth:`open` does (it may account at another delta or with
        another accountant: its steps are composed in this ledger's). Steps the two hold from
        the writes they share (one was copied from the other) are not added again. No budget is
        applied: the privacy was spent already, and a total over the site's budget stops its
        training.

        Raises:
            LedgerMissingError: No file at ``other``.
            LedgerCorruptError: The other file is unreadable or fails its checksum.
            LedgerMismatchError: The other ledger is another site's.
            LedgerError: It is this very file, or a file absorbed before; or the two share
                writes but not the steps those writes recorded; or this file could not be
                written (the in-memory ledger is then unchanged).
        """
        source = Path(other)
        if source.resolve() == self._path.resolve():
            raise LedgerError(f"privacy ledger {source} is this ledger; absorb another one")
        try:
            body = _read_body(source)
        except FileNotFoundError:
            raise LedgerMissingError(f"privacy ledger {source} to absorb is missing") from None
        checksum = _checksum(body)
        theirs = SiteLedger._from_body(source, body)
        if theirs.site_id != self._site_id:
            raise LedgerMismatchError(
                f"privacy ledger {source} belongs to site {theirs.site_id!r}, not "
                f"{self._site_id!r}"
            )
        if checksum in self._absorbed:
            raise LedgerError(f"privacy ledger {source} was absorbed into {self._path} before")
        shared = self._shared_steps(theirs, source)
        updated = copy_accountant(self._accountant)
        for seg in _split(theirs._accountant.history, shared)[1]:
            updated.step(
                noise_multiplier=seg.noise_multiplier, sample_rate=seg.sample_rate, steps=seg.steps
            )
        absorbed = (*self._absorbed, checksum)
        writes = (*self._writes, (secrets.token_hex(16), updated.total_steps))
        self._persist(updated, self._sequence + 1, absorbed, writes)
        self._accountant, self._sequence = updated, self._sequence + 1
        self._absorbed, self._writes = absorbed, writes
        spent = self.spent()
        logger.warning(
            "privacy ledger absorbed a second ledger of the site",
            extra={"site_id": self._site_id, "source": str(source), "epsilon": spent,
                   "shared_steps": shared},
        )
        return spent

    def _shared_steps(self, theirs: SiteLedger, source: Path) -> int:
        """How many first steps ``theirs`` holds from writes this ledger holds too."""
        common = 0
        for mine, other in zip(self._writes, theirs._writes, strict=False):
            if mine[0] != other[0]:
                break
            if mine[1] != other[1]:
                raise LedgerError(
                    f"privacy ledger {source} shares write {mine[0]} with {self._path} but "
                    f"records {other[1]} steps after it, not {mine[1]}"
                )
            common += 1
        shared = self._writes[common - 1][1] if common else 0
        ours_first = _split(self._accountant.history, shared)[0]
        if ours_first != _split(theirs._accountant.history, shared)[0]:
            raise LedgerError(
                f"privacy ledger {source} shares {common} writes with {self._path} but not "
                f"their {shared} steps"
            )
        return shared

    def __repr__(self) -> str:
        return (
            f"SiteLedger(site_id={self._site_id!r}, delta={self._delta:g}, "
            f"sequence={self._sequence}, total_steps={self.total_steps})"
        )


def _writes_from(path: Path, raw: object, total_steps: int) -> tuple[tuple[str, int], ...]:
    """The ``writes`` of a ledger body, checked: ids, and step counts that grow to the total."""
    if not isinstance(raw, list):
        raise LedgerCorruptError(f"privacy ledger {path} has a bad writes list")
    out: list[tuple[str, int]] = []
    for item in raw:
        ok = isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
        if not ok or isinstance(item[1], bool) or not isinstance(item[1], int):
            raise LedgerCorruptError(f"privacy ledger {path} has a bad write {item!r}")
        if out and item[1] < out[-1][1]:
            raise LedgerCorruptError(f"privacy ledger {path}: its writes' steps go back")
        out.append((item[0], item[1]))
    if out and out[-1][1] > total_steps:
        raise LedgerCorruptError(f"privacy ledger {path}: its writes count more steps than it has")
    return tuple(out)


def _split(
    history: tuple[StepSegment, ...], n: int
) -> tuple[list[StepSegment], list[StepSegment]]:
    """The first ``n`` steps of ``history`` and the rest, as segments."""
    first: list[StepSegment] = []
    rest: list[StepSegment] = []
    left = n
    for seg in history:
        take = min(left, seg.steps)
        if take:
            first.append(StepSegment(seg.noise_multiplier, seg.sample_rate, take))
        if seg.steps > take:
            rest.append(StepSegment(seg.noise_multiplier, seg.sample_rate, seg.steps - take))
        left -= take
    return first, rest


"""A secure-mode update that waits for a cohort survives a crash of its agent.

In secure mode an update cannot go through the outbox: what is sent depends on the cohort (keys,
roster, masks), and the cohort's in-memory keys die with the process. What can survive is the
update itself. The agent writes it here when training finishes and reads it back after a restart,
so the restarted site joins the next cohort with the same update instead of training a new one
(which would spend privacy budget again) or losing it.

Never counted twice: *before* the site sends its masked input, the store writes a mark naming the
cohort (``pending-update.npz.masked``), because from that moment the update may end up in that
cohort's sum (the survivor set is fixed by who sent masked inputs). A restarted agent that finds
the mark does not offer the update to any cohort until the control topic, read again from its
start, tells how that cohort ended (:meth:`agents.secure.SecureSite.resume_masked`): an
``UnmaskRequest`` naming the site a survivor spends it (deleted); one that does not, or a later
cohort's ``CohortOpen`` with no such request before it, frees it for the next cohort (the mark is
removed); a cohort no longer on the topic (retention) drops it, since nobody can say. A crash
before the mark (join, shares) makes the site a dropout whose update is resubmitted.

Format: one ``.npz`` file (numpy, no pickling) with the delta and a JSON header, and the mark as a
small JSON file; each written to a temporary name, fsynced and renamed, so a crash while writing
leaves the old file or none.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agents.secure import PendingUpdate, SecureSite
from fedsynth.durable import fsync_dir, write_atomic
from fedsynth.errors import ConfigError

__all__ = ["PendingStore"]

_FIELDS = ("update_id", "n_samples", "base_version", "train_loss", "epsilon_spent",
           "ledger_sequence", "ledger_writes")


class PendingStore:
    """The one pending secure update of a site, on disk (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, update: PendingUpdate) -> None:
        """Write ``update`` atomically, replacing any earlier one."""
        self._write(update)
        self.clear_mark()  # a mark of an earlier update names that one, never this

    def _write(self, update: PendingUpdate) -> None:
        header = {name: getattr(update, name) for name in _FIELDS}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            delta=np.asarray(update.delta),
            header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
        )
        write_atomic(self.path, buffer.getvalue())

    def load(self) -> PendingUpdate | None:
        """The saved update, or None when there is none.

        Raises:
            ConfigError: The file exists but cannot be read (named, with the cause).
        """
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                header = _header(data)
                delta = np.array(data["delta"])
            return PendingUpdate(
                str(header["update_id"]),
                delta,
                int(header["n_samples"]),
                int(header["base_version"]),
                float(header["train_loss"]),
                float(header["epsilon_spent"]),
                _sequence(header.get("ledger_sequence")),  # absent in older files
                _writes(header.get("ledger_writes")),  # absent in older files
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"pending update file {self.path} is unreadable: {exc}") from exc

    def saved_id(self) -> str | None:
        """The saved update's id, reading only the header (not the delta); None when none."""
        try:
            with np.load(self.path, allow_pickle=False) as data:
                return str(_header(data)["update_id"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"pending update file {self.path} is unreadable: {exc}") from exc

    @property
    def mark_path(self) -> Path:
        """Where the mark of a sent masked input is kept."""
        return self.path.with_name(self.path.name + ".masked")

    def before_send(self, name: str, fields: Mapping[str, Any]) -> None:
        """Call before sending any cohort message: a masked input of the saved update marks it
        with its cohort first (write-ahead), so that a restart never offers it to a second cohort
        while the first may still count it."""
        if name == "ModelUpdate" and self.saved_id() == str(fields["update_id"]):
            mark = {"update_id": str(fields["update_id"]), "cohort_id": str(fields["cohort_id"])}
            write_atomic(self.mark_path, json.dumps(mark).encode())

    def masked_in(self) -> str | None:
        """The cohort the saved update's masked input went to, or None (not masked, no update).

        Raises:
            ConfigError: The mark exists but cannot be read.
        """
        try:
            mark = json.loads(self.mark_path.read_bytes())
            update_id, cohort_id = str(mark["update_id"]), str(mark["cohort_id"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"masked-input mark {self.mark_path} is unreadable: {exc}") from exc
        return cohort_id if self.saved_id() == update_id else None

    def restore(self, site: SecureSite, spent: float | None = None) -> PendingUpdate | None:
        """After a restart: give ``site`` the saved update, held back until the cohort its
        masked input went to (if it went out) is known to have ended; the update, or None.

        ``spent`` is the site's ledger total now. The update's steps are in it (charged before
        training); a larger total than the update was saved with means a second ledger of the
        site was added since (``fedsynth ledger absorb``), and the update then reports that
        total: the aggregator refuses, from a site it reinstated, a report below the total it
        was reinstated at (the file is rewritten; a mark naming the update is kept).

        Raises:
            ConfigError: The update or its mark cannot be read.
        """
        update = self.load()
        if update is None:
            return None
        if spent is not None and spent > update.epsilon_spent:
            update = dataclasses.replace(update, epsilon_spent=spent)
            self._write(update)
        site.pending = update
        masked_in = self.masked_in()
        if masked_in is not None:
            site.resume_masked(masked_in)
        return update

    def follow(self, site: SecureSite) -> None:
        """Bring the disk in line with ``site`` after it took a record: the update is deleted
        once spent or dropped, its mark once its cohort ended without counting it."""
        if site.pending is None:
            self.discard()
        elif site.masked_in is None:
            self.clear_mark()

    def clear_mark(self) -> bool:
        """Forget the masked input (its cohort ended without counting it); True if there was one."""
        return _unlink(self.mark_path)

    def discard(self) -> bool:
        """Delete the saved update and its mark; True if there was an update."""
        deleted = _unlink(self.path)
        _unlink(self.mark_path)
        return deleted


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def _header(data: Any) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(bytes(data["header"]).decode())
    return header


def _writes(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
        raise TypeError(f"ledger_writes {value!r} is not a list of write ids")
    return tuple(value)


def _sequence(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"ledger_sequence {value!r} is not an integer")
    return value

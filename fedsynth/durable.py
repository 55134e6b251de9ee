"""Durable writes on local disk: the one helper every crash-safe file in the project shares.

A file written to a temporary name, fsynced and renamed survives a crash only once its directory
entry is durable too; :func:`fsync_dir` makes it so, and :func:`write_atomic` does all three (the
outbox, the pending secure update, the site's state and released histograms and the aggregator's
checkpoints rely on them). :class:`StateLock` keeps a second process off a folder of such files
while one works on it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from fedsynth.errors import StateInUseError

__all__ = ["StateLock", "fsync_dir", "write_atomic"]


def write_atomic(path: Path, data: bytes, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data``: a crash at any point leaves the old file or the new one.

    ``sync_dir=False`` leaves the directory fsync to the caller (one for several files).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (creations, renames, deletions) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateLock:
    """An exclusive claim on a state folder, held while one process works on it.

    Two processes on one folder would each read the same state and then overwrite each other's:
    two agents of one site would each see the privacy spent so far and each spend more (the
    ledger would keep only one of them), and two aggregators would publish different models
    under the same version. The claim is a ``flock`` on ``<folder>/.lock``, so the kernel drops
    it when its holder exits in any way, ``kill -9`` included: a crash-only restart never finds
    a stale claim. The file records the holder's pid and host for the error a second process
    gets. A ``flock`` covers the processes of one host (and of hosts sharing a local-lock
    filesystem); it cannot fence a process on another host that works on a copy of the state.

    Args:
        folder: The state folder (created if missing).
        owner: What holds it, for messages ("the aggregator", "the agent of site X").
    """

    def __init__(self, folder: Path, owner: str) -> None:
        self.path = Path(folder) / ".lock"
        self.owner = owner
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the claim."""
        return self._fd is not None

    def acquire(self) -> StateLock:
        """Take the claim, or fail at once.

        Raises:
            StateInUseError: another process (or another :class:`StateLock` of this one) holds
                it; the message names the holder as its lock file records it.
        """
        if self._fd is not None:
            raise StateInUseError(f"{self.owner} already holds {self.path.parent}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise StateInUseError(
                f"{self.path.parent} is in use ({holder}); {self.owner} cannot start while "
                "another process works on the same state, as both would overwrite it; stop the "
                "other one, or give this one its own --run-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"held by pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the claim up (closing the file drops the ``flock``); idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

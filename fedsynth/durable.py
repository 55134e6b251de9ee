"""Durable writes on local disk: the one helper every crash-safe file in the project shares.

A file written to a temporary name, fsynced and renamed survives a crash only once its directory
entry is durable too; :func:`fsync_dir` makes it so, and :func:`write_atomic` does all three (the
outbox, the pending secure update, the site's state and released histograms and the aggregator's
checkpoints rely on them).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path

__all__ = ["fsync_dir", "write_atomic"]


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

"""Durable writes on local disk: the one helper every crash-safe file in the project shares.

A file written to a temporary name, fsynced and renamed survives a crash only once its directory
entry is durable too; :func:`fsync_dir` makes it so (the outbox, the pending secure update and the
aggregator's checkpoints all rely on it).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir"]


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (creations, renames, deletions) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

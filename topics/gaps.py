"""Offset-gap guard: notice records a consumer was never handed, and read them again.

Offsets of one partition of a topic that is neither compacted nor written in transactions are
contiguous, so a consumer that handled offset ``n`` and is then handed ``n + k`` (``k > 1``) was
never handed ``n + 1 .. n + k - 1``. That happened once on the embedded broker: an aggregator
polling with 50 ms fetch waits was never handed one share record of a cohort (the records before
and after it were handled), so the cohort waited for it until its sharing deadline and finished
without that site. Which layer dropped it (the broker's fetch answer, aiokafka or faust) is not
known, and it did not recur in later runs; the guard makes such a loss visible and repairs it.

How: the record after a gap is handled as usual, and the guard asks the adapter to seek back to
the gap's first offset. The consumer then reads the gap (new records: handled) and the records
after it again (re-reads, which the aggregator already drops quietly: replay protection and
the high-water mark). A gap is *lost* when the consumer passes it again without filling it,
``max_seeks`` times; consumption goes on and the caller reports it. The first offset of an open
gap bounds the resume offset the caller checkpoints, so a restart reads the gap again too.

Pure bookkeeping, no I/O: the caller does the seek and writes :meth:`Verdict.report` to its log.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import StrEnum

from fedsynth.errors import ConfigError

__all__ = ["GapGuard", "Verdict", "VerdictKind"]


class VerdictKind(StrEnum):
    """What the record the consumer was handed is."""

    NEW = "new"
    """Not handled before: handle it."""
    FILL = "fill"
    """A record of a gap, handed over at last: handle it (it is new although its offset is
    below records already handled)."""
    REREAD = "reread"
    """Handled before (the consumer was positioned back): handle it as a re-read."""
    GAP = "gap"
    """New, after a gap: handle it, then seek back to ``seek_to``."""
    RESEEK = "reseek"
    """A re-read past a gap that is still open: seek back to ``seek_to`` again."""
    LOST = "lost"
    """A re-read past a gap that seeking back did not fill: ``missing`` is given up."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guard's answer for one record.

    Attributes:
        kind: What the record is (see :class:`VerdictKind`).
        seek_to: For GAP and RESEEK, where to position the consumer.
        missing: For GAP, RESEEK and LOST, the gap as ``(first, last)`` offsets.
    """

    kind: VerdictKind
    seek_to: int | None = None
    missing: tuple[int, int] | None = None

    @property
    def handle(self) -> bool:
        """Whether the record is new and must be handled as such."""
        return self.kind in (VerdictKind.NEW, VerdictKind.FILL, VerdictKind.GAP)

    def report(self, where: str) -> tuple[int, str] | None:
        """The log level and line for a gap verdict (``where`` names the partition), else None."""
        if self.kind is VerdictKind.LOST:
            return logging.ERROR, (
                f"{where}: offsets {self.missing} were never delivered, also after seeking back; "
                "going on without them"
            )
        if self.seek_to is not None:
            return logging.WARNING, (
                f"{where}: offsets {self.missing} were not delivered; seeking back to "
                f"{self.seek_to} ({self.kind})"
            )
        return None


@dataclass(slots=True)
class _Gap:
    first: int
    last: int
    seeks: int = 1
    filled: set[int] = field(default_factory=set)

    def open(self) -> bool:
        return len(self.filled) < self.last - self.first + 1


@dataclass(slots=True)
class _Partition:
    next: int | None = None
    last: int | None = None  # the offset handed over last
    returned: bool = False  # handed an offset at or below the previous one since the last seek
    gaps: list[_Gap] = field(default_factory=list)


class GapGuard:
    """Tracks, per partition, the next offset and the gaps not yet filled."""

    def __init__(self, max_seeks: int = 3) -> None:
        """Args:
            max_seeks: Times the consumer is sent back to one gap before it is given up (>= 1).

        Raises:
            ConfigError: ``max_seeks`` < 1.
        """
        if max_seeks < 1:
            raise ConfigError(f"max_seeks must be >= 1, got {max_seeks}")
        self.max_seeks = max_seeks
        self._parts: dict[Hashable, _Partition] = {}

    def positioned(self, tp: Hashable, offset: int) -> None:
        """The consumer was positioned at ``offset`` by something else (an assignment, a resume
        from a checkpoint): gaps at or after it will be read again anyway."""
        part = self._parts.setdefault(tp, _Partition())
        part.next, part.last, part.returned = offset, None, False
        part.gaps = [g for g in part.gaps if g.last < offset]

    def first_open(self, tp: Hashable) -> int | None:
        """The first offset of ``tp`` that is in an open gap, if any (bounds a resume offset)."""
        part = self._parts.get(tp)
        starts = [g.first for g in part.gaps if g.open()] if part else []
        return min(starts, default=None)

    def check(self, tp: Hashable, offset: int) -> Verdict:
        """Judge the record at ``offset`` of ``tp``, handed to the consumer just now."""
        part = self._parts.setdefault(tp, _Partition())
        previous, part.last = part.last, offset
        if previous is not None and offset <= previous:
            part.returned = True  # the consumer went back: a seek took effect
        expected = part.next
        if expected is None or offset == expected:
            part.next = offset + 1
            return Verdict(VerdictKind.NEW)
        if offset > expected:
            gap = _Gap(expected, offset - 1)
            part.gaps.append(gap)
            part.next, part.returned = offset + 1, False
            return Verdict(VerdictKind.GAP, self.first_open(tp), (gap.first, gap.last))
        for gap in part.gaps:
            if gap.first <= offset <= gap.last:
                if offset in gap.filled:
                    return Verdict(VerdictKind.REREAD)
                gap.filled.add(offset)
                if not gap.open():
                    part.gaps.remove(gap)
                return Verdict(VerdictKind.FILL)
        passed = [g for g in part.gaps if g.last < offset and g.open()]
        if not passed or not part.returned:
            # not returned yet: a record read ahead before the seek back took effect
            return Verdict(VerdictKind.REREAD)
        gap = passed[0]  # the consumer, sent back, went past the gap again
        if gap.seeks < self.max_seeks:
            gap.seeks += 1
            part.returned = False
            return Verdict(VerdictKind.RESEEK, self.first_open(tp), (gap.first, gap.last))
        part.gaps.remove(gap)
        return Verdict(VerdictKind.LOST, None, (gap.first, gap.last))

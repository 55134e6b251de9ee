"""topics.gaps.GapGuard against a simulated consumer that is sometimes not handed a record.

The consumer reads ahead (records fetched before a seek are still handed over after it, as faust
does), seeks back when the guard says so, and loses each record in ``transient`` on its first
delivery only and each one in ``persistent`` on every delivery.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.errors import ConfigError
from topics.gaps import GapGuard, VerdictKind


def _consume(
    n: int, transient: set[int], persistent: set[int], ahead: int, max_seeks: int = 3
) -> tuple[list[int], list[tuple[int, int]], int]:
    """Handled offsets (in order), lost ranges, and how many seeks the guard asked for."""
    guard = GapGuard(max_seeks)
    guard.positioned("tp", 0)  # the consumer starts at 0 (an assignment)
    dropped_once = set(transient)
    handled: list[int] = []
    lost: list[tuple[int, int]] = []
    queue: list[int] = []
    pos, seeks = 0, 0
    for _ in range(50 * n + 100):
        if not queue:
            while pos < n and len(queue) < ahead:
                if pos in persistent or pos in dropped_once:
                    dropped_once.discard(pos)
                else:
                    queue.append(pos)
                pos += 1
            if not queue:
                break
        offset = queue.pop(0)
        verdict = guard.check("tp", offset)
        if verdict.handle:
            handled.append(offset)
        if verdict.kind in (VerdictKind.GAP, VerdictKind.RESEEK):
            assert verdict.seek_to is not None
            pos, seeks = verdict.seek_to, seeks + 1  # the read-ahead queue stays
        if verdict.kind is VerdictKind.LOST:
            assert verdict.missing is not None
            lost.append(verdict.missing)
    else:
        raise AssertionError("the consumer never finished")
    return handled, lost, seeks


offsets = st.integers(min_value=0, max_value=38)


@settings(max_examples=300, deadline=None)
@given(st.sets(offsets, max_size=10), st.integers(min_value=1, max_value=6))
def test_records_lost_once_are_handled_exactly_once(transient: set[int], ahead: int) -> None:
    handled, lost, _ = _consume(40, transient, set(), ahead)
    assert sorted(handled) == list(range(40))  # each exactly once
    assert lost == []


@settings(max_examples=300, deadline=None)
@given(
    st.sets(offsets, max_size=6),
    st.sets(offsets, min_size=1, max_size=4),
    st.integers(min_value=1, max_value=6),
)
def test_records_never_delivered_are_reported_lost_and_the_rest_handled_once(
    transient: set[int], persistent: set[int], ahead: int
) -> None:
    handled, lost, seeks = _consume(40, transient - persistent, persistent, ahead)
    assert sorted(handled) == sorted(set(range(40)) - persistent)
    reported = {o for first, last in lost for o in range(first, last + 1)}
    assert persistent <= reported
    assert seeks >= len(lost)


def test_the_observed_case_share_212_missing_once() -> None:
    guard = GapGuard()
    for offset in range(207, 212):
        assert guard.check("share-relay-0", offset).kind is VerdictKind.NEW
    verdict = guard.check("share-relay-0", 213)
    assert (verdict.kind, verdict.seek_to, verdict.missing) == (VerdictKind.GAP, 212, (212, 212))
    assert guard.first_open("share-relay-0") == 212
    assert guard.check("share-relay-0", 214).kind is VerdictKind.NEW  # fetched before the seek
    assert guard.check("share-relay-0", 212).kind is VerdictKind.FILL
    assert guard.first_open("share-relay-0") is None
    assert guard.check("share-relay-0", 213).kind is VerdictKind.REREAD
    assert guard.check("share-relay-0", 214).kind is VerdictKind.REREAD
    assert guard.check("share-relay-0", 215).kind is VerdictKind.NEW
    assert verdict.report("share-relay[0]") is not None
    assert guard.check("share-relay-0", 216).report("share-relay[0]") is None


def test_a_gap_that_seeking_back_does_not_fill_is_given_up_after_max_seeks() -> None:
    guard = GapGuard(max_seeks=2)
    guard.check("tp", 0)
    assert guard.check("tp", 2).kind is VerdictKind.GAP  # seek 1
    assert guard.check("tp", 2).kind is VerdictKind.RESEEK  # passed it again: seek 2
    verdict = guard.check("tp", 2)
    assert (verdict.kind, verdict.missing) == (VerdictKind.LOST, (1, 1))
    assert verdict.report("tp") == (
        logging.ERROR,
        "tp: offsets (1, 1) were never delivered, also after seeking back; going on without them",
    )
    assert guard.first_open("tp") is None
    assert guard.check("tp", 3).kind is VerdictKind.NEW


def test_positioning_forgets_gaps_at_or_after_the_new_position() -> None:
    guard = GapGuard()
    guard.check("tp", 0)
    guard.check("tp", 5)
    guard.positioned("tp", 1)  # a resume from a checkpoint reads 1.. again anyway
    assert guard.first_open("tp") is None
    assert guard.check("tp", 1).kind is VerdictKind.NEW
    with pytest.raises(ConfigError, match="max_seeks"):
        GapGuard(0)

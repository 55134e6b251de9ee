"""The app's group commit rule (aggregator.pipeline.GroupCommit): which handled messages end a
group that shares one checkpoint before its acks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.pipeline import GroupCommit
from aggregator.settings import UNACKED_PER_CHANGE, AggregatorSettings
from fedsynth.errors import ConfigError


def test_a_group_ends_at_its_changes_not_at_messages_that_change_nothing() -> None:
    """Masked inputs of 9 chunks each (8 change nothing, the last one adds the input) make one
    group of 4 inputs, where counting messages made two and a half."""
    group = GroupCommit(every=4, limit=64)
    ends = [group.ends(changed=(i % 9 == 8), backlog=5) for i in range(36)]
    assert [i for i, end in enumerate(ends) if end] == [35]


def test_a_group_ends_at_its_message_limit_and_when_nothing_waits() -> None:
    group = GroupCommit(every=4, limit=6)
    assert [group.ends(False, backlog=5) for _ in range(7)] == [False] * 5 + [True, False]
    assert group.ends(False, backlog=0)  # nothing prefetched waits: checkpoint and ack now
    assert not group.ends(True, backlog=5)  # a new group began


def test_a_group_ends_with_the_checkpoint_written_ahead_of_a_version() -> None:
    """A secure cohort of four: each input is 9 chunks (the last one changes state), then four
    unmask responses, the last of which makes the version and its write-ahead checkpoint. The
    group ends there, with the cohort, not 16 changes later inside the next cohort's inputs
    (where its checkpoint would write that cohort's running sum)."""
    cohort = [(i % 9 == 8, False) for i in range(36)] + [(True, i == 3) for i in range(4)]
    group = GroupCommit(every=16, limit=64)
    ends = [group.ends(changed, 5, ahead) for changed, ahead in cohort * 3]
    assert [i for i, end in enumerate(ends) if end] == [39, 79, 119]
    without = GroupCommit(every=16, limit=64)  # the rule before: 16 changes or 64 messages
    ends = [without.ends(changed, 5) for changed, _ in cohort * 3]
    assert [i for i, end in enumerate(ends) if end] == [63]  # in the 2nd cohort, its sum open


def test_the_settings_give_the_app_s_limits() -> None:
    settings = AggregatorSettings(sites=("A",), checkpoint_every=10)
    assert settings.unacked_limit == UNACKED_PER_CHANGE * 10
    with pytest.raises(ConfigError, match="every <= limit"):
        GroupCommit(every=10, limit=5)
    with pytest.raises(ConfigError):
        GroupCommit(every=0, limit=5)


@given(
    st.integers(1, 8),
    st.integers(0, 24),
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 3), st.integers(0, 9).map(lambda n: n == 0)),
        max_size=200,
    ),
)
def test_groups_are_as_large_as_allowed_and_no_larger(
    every: int, extra: int, stream: list[tuple[bool, int, bool]]
) -> None:
    """Property: the groups split the stream; each holds at most ``every`` changes and ``limit``
    messages, and one ends before that only where nothing waits, at a message that wrote a
    checkpoint, or at the stream's end; such a message always ends its group."""
    limit = every + extra
    group = GroupCommit(every, limit)
    current: list[bool] = []
    for changed, backlog, ahead in stream:
        current.append(changed)
        ended = group.ends(changed, backlog, ahead)
        assert ended or not (ahead or backlog == 0)
        if ended:
            assert sum(current) <= every and len(current) <= limit
            assert sum(current) == every or len(current) == limit or backlog == 0 or ahead
            current = []
    assert sum(current) < every and len(current) < limit

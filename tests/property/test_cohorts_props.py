"""Secure cohorts under random dropouts and random interleaving of topics (hypothesis).

Each (topic, receiver) queue stays in order, as a Kafka partition does, but which queue delivers
next is drawn at random: shares overtake rosters, unmask requests overtake shares. Whatever the
pattern, a finished cohort's sum is exactly the survivors' weighted sum, no update is ever summed
twice, and the honest sites that are left finish their pending updates in a later cohort.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.secure import SiteOutcome
from tests.unit.test_cohorts import ALL_SITES, Net, expected, make_net

STAGES = ("CohortJoin", "EncryptedShare", "ModelUpdate")


def _check_finished(net: Net, counts: Counter[str]) -> None:
    out = net.outcomes[-1]
    if out.failed is not None:
        assert out.result is None and out.event is None
        return
    assert out.event is not None
    contributors = out.event.contributors
    want_sum, want_w = expected(contributors)
    assert np.array_equal(out.event.weighted_delta_sum, want_sum)
    assert out.event.weight_sum == want_w
    counts.update(contributors)
    for s in contributors:
        if s not in net.dead:
            assert net.sites[s].last_outcome is SiteOutcome.SPENT


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_sites=st.integers(3, 5),
    drops=st.lists(st.sampled_from((None, *STAGES)), min_size=5, max_size=5),
    seed=st.integers(0, 2**32 - 1),
)
def test_dropouts_and_reordering_never_break_the_sum(
    n_sites: int, drops: list[str | None], seed: int
) -> None:
    sites = ALL_SITES[:n_sites]
    die = {s: d for s, d in zip(sites, drops, strict=False) if d is not None}
    net = make_net(sites, shuffle=random.Random(seed), die_after=die)
    counts: Counter[str] = Counter()
    net.open(version=5)
    net.submit(sites)
    net.settle()
    assert len(net.outcomes) == 1
    _check_finished(net, counts)
    for _ in range(3):  # later cohorts take the honest sites' pending updates
        waiting = [s for s in sites if s not in net.dead and net.sites[s].has_pending_update]
        if not waiting:
            break
        net.open(version=5)
        net.settle()
        _check_finished(net, counts)
        if 3 <= len(waiting) <= 4 and not set(waiting) & die.keys():  # nobody left to vanish
            assert net.outcomes[-1].event is not None
            assert net.outcomes[-1].event.contributors == tuple(waiting)
    assert all(c == 1 for c in counts.values())  # no update is summed twice
    for s in sites:
        site = net.sites[s]
        if s in net.dead:
            continue
        assert site.drain_rejections() == []
        assert site.has_pending_update != (site.spent == [f"u-{s}"])
        if not site.has_pending_update:  # a pending one may sit in a cohort that failed to form
            assert not site.in_cohort
    assert net.coord.stage is None

"""Hypothesis: a site's updates are admitted exactly while its epsilons strictly grow; from the
first one that does not, the site is suspended and nothing more of it is admitted, while other
sites are untouched (aggregator.ledgers)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aggregator.ledgers import PrivacyLedgers

EPS = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(st.lists(EPS, min_size=1, max_size=30), st.lists(EPS, min_size=1, max_size=5))
def test_admitted_exactly_while_strictly_growing(reports: list[float], other: list[float]) -> None:
    ledgers = PrivacyLedgers()
    admitted = []
    for eps in reports:
        ok = ledgers.admit("A", eps) is None
        admitted.append(ok)
        if ok:
            ledgers.record("A", eps)
    first_bad = next(
        (i for i in range(1, len(reports)) if reports[i] <= reports[i - 1]), len(reports)
    )
    assert admitted == [i < first_bad for i in range(len(reports))]
    assert (ledgers.suspended("A") is not None) == (first_bad < len(reports))
    restored = PrivacyLedgers.from_state(ledgers.to_state())
    assert restored.suspended("A") == ledgers.suspended("A")
    assert restored.last("A") == ledgers.last("A")
    growing = sorted(set(other))
    for eps in growing:
        assert ledgers.admit("B", eps) is None
        ledgers.record("B", eps)

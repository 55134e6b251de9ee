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


STEP = st.floats(min_value=1e-3, max_value=10.0, allow_nan=False, allow_infinity=False)


@given(
    st.integers(min_value=0, max_value=1000),
    st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
    st.lists(STEP, min_size=1, max_size=12),
    st.lists(STEP, min_size=1, max_size=12),
    st.randoms(use_true_random=False),
)
def test_two_ledgers_from_one_copy_never_both_get_in(
    copied_at: int, spent: float, steps_a: list[float], steps_b: list[float], rnd: object
) -> None:
    """Two ledgers copied from one folder at sequence ``copied_at``, each charging every update
    once (its epsilon grows by any amount, its sequence by one), their reports interleaved in any
    order: only the ledger that reports first is ever admitted, up to the other's first report,
    which suspends the site, however their epsilons compare."""
    def reports(steps: list[float]) -> list[tuple[float, int]]:
        out, eps = [], spent
        for i, step in enumerate(steps):
            eps += step
            out.append((eps, copied_at + 1 + i))
        return out

    streams = {"a": reports(steps_a), "b": reports(steps_b)}
    order = ["a"] * len(steps_a) + ["b"] * len(steps_b)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    ledgers, admitted = PrivacyLedgers(), []
    taken = {"a": 0, "b": 0}
    for who in order:
        eps, seq = streams[who][taken[who]]
        taken[who] += 1
        if ledgers.admit("S", eps, seq) is None:
            ledgers.record("S", eps, seq)
            admitted.append(who)
    first = order[0]
    assert admitted == [first] * order.index("b" if first == "a" else "a")
    assert ledgers.suspended("S") is not None

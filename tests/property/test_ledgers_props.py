"""Hypothesis: a site's updates are admitted exactly while its epsilons strictly grow; from the
first one that does not, the site is suspended and nothing more of it is admitted, while other
sites are untouched (aggregator.ledgers)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aggregator.ledgers import PrivacyLedgers, Report
from fedsynth.privacy.ledger import REPORTED_WRITES

EPS = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(st.lists(EPS, min_size=1, max_size=30), st.lists(EPS, min_size=1, max_size=5))
def test_admitted_exactly_while_strictly_growing(reports: list[float], other: list[float]) -> None:
    ledgers = PrivacyLedgers()
    admitted = []
    for eps in reports:
        ok = ledgers.admit("A", Report(eps)) is None
        admitted.append(ok)
        if ok:
            ledgers.record("A", Report(eps))
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
        assert ledgers.admit("B", Report(eps)) is None
        ledgers.record("B", Report(eps))


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
        if ledgers.admit("S", Report(eps, seq)) is None:
            ledgers.record("S", Report(eps, seq))
            admitted.append(who)
    first = order[0]
    assert admitted == [first] * order.index("b" if first == "a" else "a")
    assert ledgers.suspended("S") is not None


@given(
    st.integers(min_value=0, max_value=20),
    st.lists(
        st.tuples(st.sampled_from("ab"), st.integers(min_value=1, max_value=5)),
        min_size=2, max_size=12,
    ).filter(lambda r: {w for w, _ in r} == {"a", "b"}),
)
def test_two_copied_ledgers_that_skip_each_others_numbers_are_caught_by_their_writes(
    copied_at: int, reports: list[tuple[str, int]]
) -> None:
    """Two ledgers copied after ``copied_at`` shared writes, reporting in turns, each write of
    either adding one to the sequence, and each ledger charging ``k`` writes (``k - 1`` never
    reported) before its report so that every report's sequence and epsilon pass the last one
    applied: the skipping that sequence and epsilon cannot see. The second ledger's first report
    suspends the site exactly when its 8 write ids reach back to the last shared write (its
    sequence at most 7 past the copy), which a copy made after a first write and reported on
    soon does; reports before it are admitted."""
    shared = [f"w{i}" for i in range(copied_at)]
    lines = {"a": list(shared), "b": list(shared)}
    ledgers, sequences, suspended_at = PrivacyLedgers(), [], None
    for i, (who, k) in enumerate(reports):
        line = lines[who]
        seq = max([copied_at, len(line), *sequences]) + k  # passes every one reported so far
        line.extend(f"{who}{j}" for j in range(len(line), seq))
        sequences.append(seq)
        writes = line[-REPORTED_WRITES:]
        if ledgers.admit("S", Report(float(seq), seq, writes=writes)) is None:
            ledgers.record("S", Report(float(seq), seq, writes=writes))
        elif suspended_at is None:
            suspended_at = i
    second = next(i for i, (who, _) in enumerate(reports) if who != reports[0][0])
    if copied_at >= 1 and sequences[second] - copied_at < REPORTED_WRITES:
        assert suspended_at == second and ledgers.suspended("S") is not None
    else:
        assert suspended_at is None and ledgers.suspended("S") is None

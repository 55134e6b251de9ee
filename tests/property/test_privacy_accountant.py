"""Properties of the accountants: composition bookkeeping, monotonicity, state round trips."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.privacy import (
    BudgetGuard,
    PrivacyBudget,
    RDPAccountant,
    SiteLedger,
    accountant_from_state,
)

sigmas = st.floats(min_value=0.5, max_value=5.0, allow_nan=False)
rates = st.floats(min_value=1e-3, max_value=1.0, allow_nan=False)
segments = st.lists(
    st.tuples(sigmas, rates, st.integers(min_value=1, max_value=500)), min_size=1, max_size=4
)


@settings(max_examples=25, deadline=None)
@given(sigma=sigmas, q=rates, a=st.integers(1, 300), b=st.integers(1, 300))
def test_splitting_steps_changes_nothing(sigma: float, q: float, a: int, b: int) -> None:
    split, whole = RDPAccountant(), RDPAccountant()
    split.step(noise_multiplier=sigma, sample_rate=q, steps=a)
    split.step(noise_multiplier=sigma, sample_rate=q, steps=b)
    whole.step(noise_multiplier=sigma, sample_rate=q, steps=a + b)
    assert split.to_state() == whole.to_state()
    assert split.epsilon(1e-5) == whole.epsilon(1e-5)


@settings(max_examples=25, deadline=None)
@given(history=segments, extra=st.tuples(sigmas, rates, st.integers(1, 100)))
def test_epsilon_never_decreases_and_state_round_trips(
    history: list[tuple[float, float, int]], extra: tuple[float, float, int]
) -> None:
    accountant = RDPAccountant()
    previous = 0.0
    for sigma, q, steps in [*history, extra]:
        accountant.step(noise_multiplier=sigma, sample_rate=q, steps=steps)
        current = accountant.epsilon(1e-5)
        assert current >= previous
        previous = current
    restored = accountant_from_state(json.loads(json.dumps(accountant.to_state())))
    assert restored.epsilon(1e-5) == previous
    assert restored.total_steps == sum(s for _, _, s in history) + extra[2]


@settings(max_examples=25, deadline=None)
@given(sigma=sigmas, q=st.floats(0.01, 0.5), budget=st.floats(0.5, 10.0))
def test_max_steps_fits_and_one_more_does_not(sigma: float, q: float, budget: float) -> None:
    guard = BudgetGuard(RDPAccountant(), PrivacyBudget(budget, 1e-5))
    limit = guard.max_steps(sigma, q, limit=100_000)
    if limit == 0:
        assert guard.prospective(sigma, q, 1) > budget
    elif limit < 100_000:
        assert guard.prospective(sigma, q, limit) <= budget < guard.prospective(sigma, q, limit + 1)


short = st.lists(st.tuples(sigmas, rates, st.integers(1, 500)), min_size=1, max_size=2)


def _record(ledger: SiteLedger, history: list[tuple[float, float, int]], also: Any) -> None:
    """Record ``history`` in ``ledger`` and in the reference accountant ``also``."""
    for sigma, q, steps in history:
        ledger.record(sigma, q, steps)
        also.step(noise_multiplier=sigma, sample_rate=q, steps=steps)


@settings(max_examples=12, deadline=None)  # each record() computes an epsilon
@given(ours=short, theirs=short)
def test_absorbing_a_ledger_spends_as_one_accountant_of_both_histories(
    tmp_path_factory: pytest.TempPathFactory,
    ours: list[tuple[float, float, int]],
    theirs: list[tuple[float, float, int]],
) -> None:
    folder = tmp_path_factory.mktemp("ledgers")
    mine = SiteLedger.create(folder / "a.json", site_id="s", delta=1e-5)
    other = SiteLedger.create(folder / "b.json", site_id="s", delta=1e-5)
    both = RDPAccountant()
    for ledger, history in ((mine, ours), (other, theirs)):
        _record(ledger, history, both)
    before = max(mine.spent(), other.spent())
    total = mine.absorb(other.path)
    assert total == pytest.approx(both.epsilon(1e-5), rel=1e-12)
    assert total >= before
    assert mine.total_steps == both.total_steps


@settings(max_examples=12, deadline=None)
@given(common=st.lists(st.tuples(sigmas, rates, st.integers(1, 500)), max_size=2),
       ours=st.lists(st.tuples(sigmas, rates, st.integers(1, 500)), max_size=2), theirs=short)
def test_absorbing_a_copy_counts_the_steps_before_the_copy_once(
    tmp_path_factory: pytest.TempPathFactory,
    common: list[tuple[float, float, int]],
    ours: list[tuple[float, float, int]],
    theirs: list[tuple[float, float, int]],
) -> None:
    """A ledger copied after ``common`` and then grown apart: absorbing the copy spends as one
    accountant of the common steps and both ledgers' own, whatever the steps are."""
    folder = tmp_path_factory.mktemp("fork")
    mine = SiteLedger.create(folder / "a.json", site_id="s", delta=1e-5)
    spent = RDPAccountant()
    _record(mine, common, spent)
    (folder / "copy").mkdir()
    (folder / "copy" / "a.json").write_bytes(mine.path.read_bytes())
    other = SiteLedger.open(folder / "copy" / "a.json", site_id="s", delta=1e-5)
    for ledger, history in ((mine, ours), (other, theirs)):
        _record(ledger, history, spent)
    before = max(mine.spent(), other.spent())
    total = mine.absorb(other.path)
    assert total == pytest.approx(spent.epsilon(1e-5), rel=1e-9)
    assert total >= before and mine.total_steps == spent.total_steps

"""Pure validation of decoded updates: each check, and the order of validate_update."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.strategies import ClientUpdate
from aggregator.validation import (
    ReasonCode,
    ValidationContext,
    check_finite,
    replay_key,
    validate_update,
)
from fedsynth.codec.quantize import QuantizedVector


def ctx(**overrides) -> ValidationContext:
    base = dict(
        known_sites=frozenset({"s1", "s2"}),
        seen_ids={"m-old", "u-old"},  # bare ids, as checkpoints before site scoping hold them
        current_version=5,
        max_staleness=2,
        n_parameters=3,
        max_norm=10.0,
    )
    base.update(overrides)
    return ValidationContext(**base)


def upd(**overrides) -> ClientUpdate:
    base = dict(
        update_id="u1",
        site_id="s1",
        base_version=4,
        n_samples=10,
        delta=np.array([1.0, 2.0, 2.0], dtype=np.float32),
    )
    base.update(overrides)
    return ClientUpdate(**base)


def test_valid_update_passes() -> None:
    assert validate_update(upd(), ctx(), "m1") is None


def test_replay_ids_are_scoped_by_site() -> None:
    seen = ctx(seen_ids={replay_key("s2", "m1"), replay_key("s2", "u1")})
    assert validate_update(upd(), seen, "m1") is None  # s2's ids do not refuse s1's update
    own = ctx(seen_ids={replay_key("s1", "m1")})
    refused = validate_update(upd(), own, "m1")
    assert refused is not None and refused.reason_code == ReasonCode.REPLAY
    # Unambiguous: no other site and id make the same key.
    assert replay_key("a:b", "c") != replay_key("a", "b:c")
    assert len({replay_key(s, i) for s in ("a", "a:", ":a") for i in ("b", ":b", "b:")}) == 9


@pytest.mark.parametrize(
    ("update", "message_id", "code"),
    [
        (upd(site_id="intruder"), "m1", ReasonCode.UNKNOWN_SITE),
        (upd(), "m-old", ReasonCode.REPLAY),
        (upd(update_id="u-old"), "m-new", ReasonCode.REPLAY),
        (upd(base_version=6), "m1", ReasonCode.FUTURE_BASE),
        (upd(base_version=-1), "m1", ReasonCode.FUTURE_BASE),
        (upd(base_version=2), "m1", ReasonCode.TOO_STALE),
        (upd(n_samples=0), "m1", ReasonCode.BAD_SAMPLE_COUNT),
        (upd(weight_hint=float("nan")), "m1", ReasonCode.BAD_SAMPLE_COUNT),
        (upd(delta=np.zeros(4, dtype=np.float32)), "m1", ReasonCode.BAD_SHAPE),
        (upd(delta=np.zeros((3, 1), dtype=np.float32)), "m1", ReasonCode.BAD_SHAPE),
        (upd(delta=np.zeros(3, dtype=np.float64)), "m1", ReasonCode.BAD_SHAPE),
        (upd(delta=[0.0, 0.0, 0.0]), "m1", ReasonCode.BAD_SHAPE),
        (upd(delta=np.array([1, np.nan, 0], dtype=np.float32)), "m1", ReasonCode.NON_FINITE),
        (upd(delta=np.array([1, np.inf, 0], dtype=np.float32)), "m1", ReasonCode.NON_FINITE),
        (upd(delta=np.array([6, 8, 0.1], dtype=np.float32)), "m1", ReasonCode.NORM_TOO_LARGE),
    ],
)
def test_each_check_rejects_with_its_reason(update, message_id, code) -> None:
    rejection = validate_update(update, ctx(), message_id)
    assert rejection is not None and rejection.reason_code == code
    assert rejection.detail


def test_staleness_exactly_at_the_bound_is_accepted() -> None:
    assert validate_update(upd(base_version=3), ctx(), "m1") is None  # 5 - 3 == 2


def test_unbounded_staleness_and_norm() -> None:
    loose = ctx(max_staleness=None, max_norm=None)
    big = upd(base_version=0, delta=np.full(3, 1e30, dtype=np.float32))
    assert validate_update(big, loose, "m1") is None


def test_first_failing_check_wins() -> None:
    both = upd(site_id="intruder", delta=np.array([np.nan, 0, 0], dtype=np.float32))
    rejection = validate_update(both, ctx(), "m-old")
    assert rejection is not None and rejection.reason_code == ReasonCode.UNKNOWN_SITE


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_check_fast_path_neither_misses_nor_invents_bad_values(dtype: type) -> None:
    big = np.full(3, np.finfo(dtype).max / 2, dtype=dtype)  # finite, but its squares overflow
    assert check_finite(upd(delta=big), ctx()) is None
    for bad in (np.nan, np.inf, -np.inf):
        values = np.zeros(1000, dtype=dtype)
        values[[3, 999]] = bad
        rejection = check_finite(upd(delta=values), ctx())
        assert rejection is not None and ReasonCode.NON_FINITE in repr(rejection)
        assert "2 non-finite" in repr(rejection)


def _levels(low: float, high: float, n: int = 3) -> QuantizedVector:
    levels = np.array([0, 255, 7][:n] + [1] * max(0, n - 3), dtype=np.uint8)
    levels.setflags(write=False)
    return QuantizedVector(levels, low, high, 8)


def test_a_quantized_delta_is_checked_by_its_range_and_size() -> None:
    assert validate_update(upd(delta=_levels(-1.0, 2.0)), ctx(), "m1") is None
    wrong = validate_update(upd(delta=_levels(-1.0, 2.0, n=4)), ctx(), "m1")
    assert wrong is not None and wrong.reason_code == ReasonCode.BAD_SHAPE
    assert "4 values, not 3" in wrong.detail
    for low, high in ((np.nan, 1.0), (0.0, np.inf), (-1e300, 1e300), (0.0, 1e39)):
        bad = validate_update(upd(delta=_levels(low, high)), ctx(max_norm=None), "m1")
        assert bad is not None and bad.reason_code == ReasonCode.NON_FINITE, (low, high)
    # the top level reaches 2.0 and the norm counts the values, not the levels
    far = validate_update(upd(delta=_levels(0.0, 30.0)), ctx(), "m1")
    assert far is not None and far.reason_code == ReasonCode.NORM_TOO_LARGE

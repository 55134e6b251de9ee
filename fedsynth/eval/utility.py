"""Utility: does a model trained on synthetic data work on real patients?

Train-on-synthetic, test-on-real (TSTR; Esteban, Hyland and Ratsch 2017, "Real-valued (medical)
time series generation with recurrent conditional GANs") against the train-on-real, test-on-real
(TRTR) baseline: the same fixed classifier (scikit-learn ``HistGradientBoostingClassifier``, which
accepts missing values; categorical columns one-hot encoded) is fitted once on the real training
rows and once on the synthetic rows, and both are scored on the same real held-out rows.
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from fedsynth.errors import ConfigError, DataValidationError
from fedsynth.eval.columns import ColumnKind, ColumnSpec, categorical_values, numeric_values

__all__ = [
    "CLASSIFIER_SEED",
    "Target",
    "UtilityReport",
    "UtilityScores",
    "threshold_target",
    "measure_utility",
]

_log = logging.getLogger(__name__)

CLASSIFIER_SEED = 0
_MISSING = "(missing)"
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq,
    "!=": operator.ne, ">": operator.gt, "<": operator.lt,
}


@dataclass(frozen=True, slots=True)
class Target:
    """A binary prediction target derived from one column.

    Attributes:
        column: The column the label comes from (excluded from the features).
        is_positive: Maps that column (non-missing values only) to booleans.
        description: Human-readable rule, e.g. ``num > 0``.
    """

    column: str
    is_positive: Callable[[pd.Series], object]
    description: str


def threshold_target(column: str, rule: str) -> Target:
    """Builds a target from a rule such as ``">0"``, ``">= 2"`` or ``"==yes"``.

    Raises:
        ConfigError: If the rule is not ``OP VALUE`` with OP one of ``> >= < <= == !=``.
    """
    match = re.fullmatch(r"\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*", rule)
    if match is None:
        raise ConfigError(f"target rule {rule!r} is not like '>0' or '==yes'")
    op, text = _OPS[match.group(1)], match.group(2)
    try:
        value: float | str = float(text)
    except ValueError:
        value = text

    def is_positive(series: pd.Series) -> np.ndarray:
        if isinstance(value, float):
            return np.asarray(op(numeric_values(series), value), dtype=bool)
        return np.asarray(op(categorical_values(series), value), dtype=bool)

    return Target(column, is_positive, f"{column} {match.group(1)} {text}")


@dataclass(frozen=True, slots=True)
class UtilityScores:
    """Scores of one fitted classifier on the real held-out rows.

    Attributes:
        auc: ROC AUC, or None when the held-out rows hold one class only.
        f1: F1 of the positive class at probability threshold 0.5.
        n_train: Training rows with a known target.
        positive_rate_train: Share of positive labels among them.
    """

    auc: float | None
    f1: float
    n_train: int
    positive_rate_train: float


@dataclass(frozen=True, slots=True)
class UtilityReport:
    """TRTR against TSTR.

    Attributes:
        target: The target rule, e.g. ``num > 0``.
        n_test: Held-out rows with a known target.
        positive_rate_test: Share of positive labels among them.
        trtr: Classifier trained on real training rows.
        tstr: Classifier trained on synthetic rows.
        auc_ratio: ``tstr.auc / trtr.auc`` (None if either is undefined).
        f1_ratio: ``tstr.f1 / trtr.f1`` (None if ``trtr.f1`` is 0).
    """

    target: str
    n_test: int
    positive_rate_test: float
    trtr: UtilityScores
    tstr: UtilityScores
    auc_ratio: float | None
    f1_ratio: float | None


def _features(frame: pd.DataFrame, specs: Sequence[ColumnSpec]) -> pd.DataFrame:
    cols = {}
    for s in specs:
        if s.kind is ColumnKind.NUMERIC:
            cols[s.name] = numeric_values(frame[s.name])
        else:
            cols[s.name] = categorical_values(frame[s.name]).fillna(_MISSING).to_numpy()
    return pd.DataFrame(cols, index=frame.index)


def _labelled(
    frame: pd.DataFrame, specs: Sequence[ColumnSpec], target: Target, role: str
) -> tuple[pd.DataFrame, np.ndarray]:
    if target.column not in frame.columns:
        raise DataValidationError(f"{role} data lacks the target column {target.column!r}")
    known = frame[frame[target.column].notna()]
    labels = np.asarray(target.is_positive(known[target.column]), dtype=bool)
    if labels.shape != (len(known),):
        raise DataValidationError(f"target rule gave {labels.shape} labels for {len(known)} rows")
    return _features(known, specs), labels.astype(int)


def _classifier(specs: Sequence[ColumnSpec]) -> Pipeline:
    categorical = [s.name for s in specs if s.kind is ColumnKind.CATEGORICAL]
    numeric = [s.name for s in specs if s.kind is ColumnKind.NUMERIC]
    encode = ColumnTransformer(
        [
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
            ("num", "passthrough", numeric),
        ]
    )
    model = HistGradientBoostingClassifier(
        max_iter=150, learning_rate=0.05, max_leaf_nodes=15, l2_regularization=1.0,
        early_stopping=False, random_state=CLASSIFIER_SEED,
    )
    return Pipeline([("encode", encode), ("model", model)])


def _fit_score(
    train: tuple[pd.DataFrame, np.ndarray],
    test: tuple[pd.DataFrame, np.ndarray],
    specs: Sequence[ColumnSpec],
) -> UtilityScores:
    (x_train, y_train), (x_test, y_test) = train, test
    if len(y_train) == 0:
        raise DataValidationError("no training rows with a known target")
    if np.unique(y_train).size == 1:
        _log.warning("training labels hold one class only; predicting it for every row")
        proba = np.full(len(y_test), float(y_train[0]))
    else:
        # scikit-learn's binning fails on a feature with no value at all (a site without a
        # column, or a generator that never emits it); a constant carries the same information
        empty = [c for c in x_train.columns if x_train[c].isna().all()]
        if empty:
            _log.warning("columns with no value in the training rows: %s", empty)
            x_train = x_train.assign(**{c: 0.0 for c in empty})
        proba = _classifier(specs).fit(x_train, y_train).predict_proba(x_test)[:, 1]
    auc = float(roc_auc_score(y_test, proba)) if np.unique(y_test).size == 2 else None
    f1 = float(f1_score(y_test, (proba >= 0.5).astype(int), zero_division=0.0))
    return UtilityScores(auc, f1, len(y_train), float(y_train.mean()))


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def measure_utility(
    real_train: pd.DataFrame,
    synthetic: pd.DataFrame,
    real_holdout: pd.DataFrame,
    specs: Sequence[ColumnSpec],
    target: Target,
) -> UtilityReport:
    """Scores TRTR and TSTR on the real held-out rows.

    Args:
        real_train: Real rows the generator was trained on.
        synthetic: Synthetic rows.
        real_holdout: Real rows neither the generator nor either classifier saw.
        specs: All evaluated columns; every one except the target column is a feature.
        target: The binary label rule.

    Returns:
        AUC and F1 of both classifiers and their ratios.

    Raises:
        DataValidationError: If the target column is missing or no row has a known target.
    """
    features = [s for s in specs if s.name != target.column]
    if not features:
        raise DataValidationError("no feature columns besides the target")
    test = _labelled(real_holdout, features, target, "held-out")
    if len(test[1]) == 0:
        raise DataValidationError("no held-out rows with a known target")
    trtr = _fit_score(_labelled(real_train, features, target, "real"), test, features)
    tstr = _fit_score(_labelled(synthetic, features, target, "synthetic"), test, features)
    return UtilityReport(
        target.description, len(test[1]), float(test[1].mean()), trtr, tstr,
        _ratio(tstr.auc, trtr.auc), _ratio(tstr.f1, trtr.f1),
    )

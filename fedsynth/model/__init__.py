"""Tabular diffusion model (TabDDPM-style), constrained sampling and local training.

The configuration is imported eagerly; the model, constraints and training are imported on first
use (PEP 562), so that a process that only needs the configuration, such as the aggregator, does
not pay for importing torch, the largest part of its start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedsynth.model.config import (
    DEFAULT_NOISE_MULTIPLICITY,
    DP_CONFIG,
    FEDERATED_DP_CONFIG,
    FEDERATED_LOCAL_STEPS,
    DiffusionConfig,
)

if TYPE_CHECKING:
    from fedsynth.model.constraints import ColumnConstraint, Constraints, Interval
    from fedsynth.model.tabddpm import TabularDiffusion
    from fedsynth.model.train import OpacusPrivacy, PrivacyHook, TrainReport, train_local

_LAZY = {
    "ColumnConstraint": "fedsynth.model.constraints",
    "Constraints": "fedsynth.model.constraints",
    "Interval": "fedsynth.model.constraints",
    "TabularDiffusion": "fedsynth.model.tabddpm",
    "OpacusPrivacy": "fedsynth.model.train",
    "PrivacyHook": "fedsynth.model.train",
    "TrainReport": "fedsynth.model.train",
    "train_local": "fedsynth.model.train",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_NOISE_MULTIPLICITY",
    "DP_CONFIG",
    "FEDERATED_DP_CONFIG",
    "FEDERATED_LOCAL_STEPS",
    "ColumnConstraint",
    "Constraints",
    "DiffusionConfig",
    "Interval",
    "OpacusPrivacy",
    "PrivacyHook",
    "TabularDiffusion",
    "TrainReport",
    "train_local",
]

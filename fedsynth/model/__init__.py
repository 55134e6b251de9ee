"""Tabular diffusion model (TabDDPM-style), constrained sampling and local training."""

from fedsynth.model.config import (
    DEFAULT_NOISE_MULTIPLICITY,
    DP_CONFIG,
    FEDERATED_DP_CONFIG,
    FEDERATED_LOCAL_STEPS,
    DiffusionConfig,
)
from fedsynth.model.constraints import ColumnConstraint, Constraints, Interval
from fedsynth.model.tabddpm import TabularDiffusion
from fedsynth.model.train import OpacusPrivacy, PrivacyHook, TrainReport, train_local

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

"""The gateway's ports: where the current model comes from, where releases go.

``ModelSource`` is filled by the Kafka follower of ``fedsynth.global-model`` in production and by
:class:`StaticModelSource` in tests. A ``ReleasedModel`` is whatever can draw rows for a query.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

__all__ = ["ModelSource", "ReleasedModel", "RowSampler", "StaticModelSource", "epsilon_json"]


def epsilon_json(epsilon_by_site: Mapping[str, float]) -> dict[str, float | None]:
    """Epsilon per site as the gateway's JSON gives it: ``null`` where no bound is known (a site
    that trains without DP, or one the aggregator suspended for a second privacy ledger), since
    JSON has no infinity (Python would write ``Infinity``, which strict parsers refuse)."""
    return {s: e if math.isfinite(e) else None for s, e in epsilon_by_site.items()}


class RowSampler(Protocol):
    """Draws ``n`` rows satisfying ``where`` (None: unconstrained) with classifier-free guidance
    scale ``guidance`` (None: the model's own)."""

    def __call__(
        self, n: int, where: str | None, rng: np.random.Generator, guidance: float | None = None
    ) -> pd.DataFrame: ...


@dataclass(frozen=True, slots=True)
class ReleasedModel:
    """A global model version the gateway may sample from, with its provenance."""

    model_name: str
    dataset: str
    version: int
    contributors: tuple[str, ...]
    epsilon_by_site: dict[str, float]
    sample: RowSampler
    columns: tuple[str, ...] = field(default=())
    guidance: float = 1.0
    """The model's own classifier-free guidance scale: what a request that names none gets."""


class ModelSource(Protocol):
    """Gives the newest model, or None while no version has arrived."""

    def current(self) -> ReleasedModel | None: ...


class StaticModelSource:
    """A model source holding whatever was set last (tests, and the follower's cache)."""

    def __init__(self, model: ReleasedModel | None = None) -> None:
        self._model = model

    def set(self, model: ReleasedModel) -> None:
        """Replace the current model (only by a newer version)."""
        if self._model is None or model.version >= self._model.version:
            self._model = model

    def current(self) -> ReleasedModel | None:
        return self._model

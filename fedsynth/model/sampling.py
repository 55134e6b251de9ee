"""Constrained sampling: condition on the conditioning column, then reject.

When the constraints restrict the schema's conditioning column, labels are drawn only from the
admitted levels (weighted by the model's label prior), so the generator is *conditioned* on them;
every other constraint is met by rejection. A model calibrated with released missingness patterns
first keeps each generated row with the probability of its pattern
(:attr:`~fedsynth.model.tabddpm.TabularDiffusion.pattern_accept`). Batches grow with the observed
acceptance rate; after ``max_tries`` batches without ``n`` accepted rows a
:class:`~fedsynth.errors.ConstraintError` states the observed rate.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from fedsynth.errors import ConfigError, ConstraintError
from fedsynth.model.constraints import Constraints

if TYPE_CHECKING:
    from fedsynth.model.tabddpm import TabularDiffusion

__all__ = ["label_distribution", "sample_with_constraints"]

logger = logging.getLogger(__name__)

_MAX_BATCH = 50_000


def label_distribution(model: TabularDiffusion, conditions: Constraints | None) -> np.ndarray:
    """Probabilities of each label (``n_classes + 1`` entries, the null label last) to draw from."""
    prior = np.asarray(model.encoder.cond_prior, dtype=np.float64)
    schema = model.encoder.schema
    if conditions is None or schema.conditioning is None:
        return np.asarray(prior / prior.sum())
    if conditions.get(schema.conditioning) is None:
        return np.asarray(prior / prior.sum())
    allowed = conditions.allowed_levels(schema.column(schema.conditioning))
    probs = np.zeros_like(prior)
    probs[allowed] = prior[allowed]
    if probs.sum() <= 0:
        probs[allowed] = 1.0
    return np.asarray(probs / probs.sum())


MAX_GUIDANCE = 10.0
"""Largest classifier-free guidance scale accepted at sampling time."""


def sample_with_constraints(
    model: TabularDiffusion,
    n: int,
    conditions: Constraints | None,
    rng: np.random.Generator,
    max_tries: int,
    guidance: float | None = None,
) -> pd.DataFrame:
    """See :meth:`fedsynth.model.tabddpm.TabularDiffusion.sample`."""
    if n < 0 or max_tries < 1:
        raise ConfigError("n must be >= 0 and max_tries >= 1")
    if guidance is not None and not 0.0 <= guidance <= MAX_GUIDANCE:
        raise ConfigError(f"guidance scale must be in [0, {MAX_GUIDANCE:g}], got {guidance}")
    if conditions is not None:
        conditions.validate(model.encoder.schema)
    probs = label_distribution(model, conditions)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
    accepted: list[pd.DataFrame] = []
    got = generated = drawn = 0
    for _ in range(max_tries):
        if got >= n:
            break
        rate = got / generated if generated else 1.0
        need = n - got
        size = min(_MAX_BATCH, math.ceil(need / max(rate, 1.0 / (generated + 1)) * 1.1) + 16)
        labels = rng.choice(len(probs), size=size, p=probs)
        raw = model.generate(labels, gen, guidance)
        if model.pattern_accept is not None:  # released missingness patterns (calibration)
            keep = rng.random(size) < model.pattern_accept[model.pattern_codes(raw)]
            raw, labels = raw[keep], labels[keep]
        frame = model.encoder.decode(raw, labels)
        generated += size
        drawn += len(frame)
        if conditions is not None:
            frame = frame[conditions.check(frame)]
        accepted.append(frame)
        got += len(frame)
    if got < n:
        rate = got / drawn if drawn else 0.0
        kept = f", {drawn} kept by the missingness patterns" if drawn != generated else ""
        raise ConstraintError(
            f"constraints {conditions} are too rare: {got} of {n} rows after {max_tries} batches "
            f"({generated} rows generated{kept}, observed acceptance rate {rate:.3%})"
        )
    logger.debug("sampled %d rows from %d generated", n, generated)
    out = pd.concat(accepted, ignore_index=True).iloc[:n].reset_index(drop=True)
    return out

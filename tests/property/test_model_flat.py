"""Flat parameter vectors: flatten/unflatten is an exact round trip for any values and shapes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.data import DatasetSchema, FeatureEncoder
from fedsynth.model import DiffusionConfig, TabularDiffusion

ENCODER = FeatureEncoder.from_schema_bounds(DatasetSchema.load_named("heart_disease_uci"))


@settings(max_examples=25, deadline=None)
@given(
    hidden=st.lists(st.integers(1, 24), min_size=1, max_size=3),
    embed=st.sampled_from([2, 4, 8]),
    seed=st.integers(0, 2**31 - 1),
)
def test_flat_round_trip(hidden: list[int], embed: int, seed: int) -> None:
    config = DiffusionConfig(hidden=tuple(hidden), embed_dim=embed, n_timesteps=4)
    model = TabularDiffusion(ENCODER, config, seed=0)
    vec = np.random.default_rng(seed).normal(size=model.n_parameters).astype(np.float32)
    model.load_flat_parameters(vec)
    np.testing.assert_array_equal(model.flat_parameters(), vec)
    other = TabularDiffusion(ENCODER, config, seed=1)
    other.load_flat_parameters(model.flat_parameters())
    for name, tensor in model.denoiser.state_dict().items():
        np.testing.assert_array_equal(other.denoiser.state_dict()[name].numpy(), tensor.numpy())
    layout = model.parameter_layout()
    name, shape, offset = layout[-1]
    last = vec[offset : offset + int(np.prod(shape))]
    np.testing.assert_array_equal(model.denoiser.state_dict()[name].numpy().ravel(), last)


def test_same_seed_same_parameters() -> None:
    config = DiffusionConfig(hidden=(8,), embed_dim=4, n_timesteps=4)
    a = TabularDiffusion(ENCODER, config, seed=7).flat_parameters()
    b = TabularDiffusion(ENCODER, config, seed=7).flat_parameters()
    c = TabularDiffusion(ENCODER, config, seed=8).flat_parameters()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)

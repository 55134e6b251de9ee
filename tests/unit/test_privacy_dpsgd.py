"""DP-SGD wiring on a small denoiser-shaped MLP whose forward takes (x, t) or (x, t, cond)."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from opacus.accountants import RDPAccountant as OpacusRDP
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsynth.errors import BudgetExceededError
from fedsynth.privacy import (
    BudgetGuard,
    DPConfig,
    PrivacyBudget,
    PrivacyConfigError,
    RDPAccountant,
    make_accountant,
    make_private,
)

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

D_IN, N_CLASSES, N = 6, 3, 32


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        freqs = torch.exp(-math.log(1000.0) * torch.arange(dim // 2) / (dim // 2))
        self.register_buffer("freqs", freqs)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class Denoiser(nn.Module):
    def __init__(self, conditional: bool) -> None:
        super().__init__()
        self.time = SinusoidalEmbedding(8)
        self.cond = nn.Embedding(N_CLASSES, 4) if conditional else None
        width = D_IN + 8 + (4 if conditional else 0)
        self.net = nn.Sequential(
            nn.Linear(width, 16), nn.LayerNorm(16), nn.SiLU(), nn.Linear(16, D_IN)
        )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        parts = [x, self.time(t)]
        if self.cond is not None and cond is not None:
            parts.append(self.cond(cond))
        return self.net(torch.cat(parts, dim=-1))


def _dataset(seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D_IN, generator=g)
    t = torch.randint(0, 100, (N,), generator=g)
    cond = torch.randint(0, N_CLASSES, (N,), generator=g)
    return TensorDataset(x, t, cond)


def _loss(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return ((model(x, t, cond) - x) ** 2).mean()


def _private_grads(
    model: nn.Module, sigma: float, clip: float, seed: int = 1
) -> tuple[list[torch.Tensor], RDPAccountant]:
    """One DP step over the full dataset (q = 1), returning the privatized gradients."""
    accountant = RDPAccountant()
    loader = DataLoader(_dataset(), batch_size=N)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pmodel, popt, ploader = make_private(
        model, opt, loader, noise_multiplier=sigma, max_grad_norm=clip, accountant=accountant,
        generator=torch.Generator().manual_seed(seed),
    )
    (x, t, cond) = next(iter(ploader))
    assert x.shape[0] == N  # q = 1 includes every record
    popt.zero_grad()
    _loss(pmodel, x, t, cond).backward()
    popt.step()
    return [p.grad.detach().clone() for p in model.parameters()], accountant


def _clean_grads(model: nn.Module) -> list[torch.Tensor]:
    x, t, cond = _dataset().tensors
    model.zero_grad()
    _loss(model, x, t, cond).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def test_per_sample_grads_exist_for_two_and_three_input_forward() -> None:
    for conditional in (False, True):
        torch.manual_seed(0)
        model = Denoiser(conditional)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = DataLoader(_dataset(), batch_size=8)
        pmodel, popt, ploader = make_private(
            model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0,
            accountant=make_accountant("rdp"), generator=torch.Generator().manual_seed(0),
        )
        x, t, cond = next(iter(ploader))
        out = pmodel(x, t, cond) if conditional else pmodel(x, t)
        ((out - x) ** 2).mean().backward()
        for name, p in pmodel.named_parameters():
            assert p.grad_sample is not None, name
            assert p.grad_sample.shape == (x.shape[0], *p.shape), name


def test_zero_noise_huge_clip_equals_mean_gradient() -> None:
    torch.manual_seed(0)
    model = Denoiser(conditional=True)
    reference = _clean_grads(copy.deepcopy(model))
    private, accountant = _private_grads(model, sigma=0.0, clip=1e6)
    for got, want in zip(private, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert accountant.total_steps == 1
    assert accountant.epsilon(1e-5) == math.inf


def test_noise_is_added_with_the_right_scale() -> None:
    torch.manual_seed(0)
    model = Denoiser(conditional=True)
    clean, _ = _private_grads(copy.deepcopy(model), sigma=0.0, clip=1e3)
    sigma, clip = 0.01, 1e3
    noisy, accountant = _private_grads(model, sigma=sigma, clip=clip)
    diff = torch.cat([(a - b).flatten() for a, b in zip(noisy, clean, strict=True)])
    assert diff.abs().max() > 0.01
    # mean reduction divides the noised sum by N, so diff * N is N(0, (sigma * clip)^2) per entry
    standardized = diff * N / (sigma * clip)
    assert standardized.numel() > 300
    assert 0.85 < float(standardized.std()) < 1.15
    assert abs(float(standardized.mean())) < 0.15
    assert accountant.history[0].noise_multiplier == sigma
    assert accountant.history[0].sample_rate == 1.0


def test_every_step_is_recorded_with_loader_sample_rate() -> None:
    torch.manual_seed(0)
    model = Denoiser(conditional=True)
    accountant = RDPAccountant()
    loader = DataLoader(_dataset(), batch_size=8)  # 4 batches -> q = 1/4
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pmodel, popt, ploader = make_private(
        model, opt, loader, noise_multiplier=1.3, max_grad_norm=1.0, accountant=accountant,
        generator=torch.Generator().manual_seed(3),
    )
    taken = 0
    for _ in range(3):
        for x, t, cond in ploader:
            popt.zero_grad()
            _loss(pmodel, x, t, cond).backward()
            popt.step()
            taken += 1
    assert taken == 12
    assert accountant.total_steps == taken
    assert [(s.noise_multiplier, s.sample_rate) for s in accountant.history] == [(1.3, 0.25)]
    reference = OpacusRDP()
    for _ in range(taken):
        reference.step(noise_multiplier=1.3, sample_rate=0.25)
    assert accountant.epsilon(1e-5) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)


def test_budget_refuses_step_before_parameters_move() -> None:
    torch.manual_seed(0)
    model = Denoiser(conditional=True)
    accountant = RDPAccountant()
    sigma, q = 1.0, 1.0
    budget = PrivacyBudget(epsilon=8.0, delta=1e-5)
    allowed = BudgetGuard(RDPAccountant(), budget).max_steps(sigma, q)
    assert 1 <= allowed < 20
    loader = DataLoader(_dataset(), batch_size=N)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pmodel, popt, ploader = make_private(
        model, opt, loader, noise_multiplier=sigma, max_grad_norm=1.0, accountant=accountant,
        budget=budget, generator=torch.Generator().manual_seed(0),
    )
    x, t, cond = next(iter(ploader))
    for _ in range(allowed):
        popt.zero_grad()
        _loss(pmodel, x, t, cond).backward()
        popt.step()
    before = [p.detach().clone() for p in model.parameters()]
    popt.zero_grad()
    _loss(pmodel, x, t, cond).backward()
    with pytest.raises(BudgetExceededError, match="over the budget epsilon=8"):
        popt.step()
    assert accountant.total_steps == allowed
    assert accountant.epsilon(1e-5) <= 8.0
    for got, want in zip(model.parameters(), before, strict=True):
        assert torch.equal(got, want)


def test_unsupported_module_and_bad_parameters_are_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    loader = DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(PrivacyConfigError, match="cannot be trained with DP-SGD"):
        make_private(model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0,
                     accountant=RDPAccountant())
    ok = nn.Linear(4, 4)
    opt = torch.optim.SGD(ok.parameters(), lr=0.1)
    for sigma, clip in [(-1.0, 1.0), (1.0, 0.0), (math.nan, 1.0)]:
        with pytest.raises(PrivacyConfigError):
            make_private(ok, opt, loader, noise_multiplier=sigma, max_grad_norm=clip,
                         accountant=RDPAccountant())


def test_dp_config_is_frozen_validated_and_resolves_noise() -> None:
    fixed = DPConfig(epsilon=4.0, delta=1e-5, max_grad_norm=1.0, noise_multiplier=1.2)
    assert fixed.resolve_noise_multiplier(0.1, 100) == 1.2
    assert fixed.budget == PrivacyBudget(4.0, 1e-5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fixed.epsilon = 5.0  # type: ignore[misc]
    derived = DPConfig(epsilon=4.0, delta=1e-5, max_grad_norm=1.0)
    sigma = derived.resolve_noise_multiplier(0.1, 100)
    accountant = RDPAccountant()
    accountant.step(noise_multiplier=sigma, sample_rate=0.1, steps=100)
    assert 3.9 <= accountant.epsilon(1e-5) <= 4.0
    for bad in [dict(epsilon=0.0), dict(delta=1.0), dict(max_grad_norm=-1.0),
                dict(noise_multiplier=-0.5)]:
        kwargs = dict(epsilon=4.0, delta=1e-5, max_grad_norm=1.0) | bad
        with pytest.raises(PrivacyConfigError):
            DPConfig(**kwargs)  # type: ignore[arg-type]

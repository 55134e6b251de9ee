"""DP-SGD wiring: per-sample clipping and Gaussian noise for any torch trainer, by wrapping.

Abadi et al., "Deep Learning with Differential Privacy" (CCS 2016), through Opacus: the module is
wrapped in a ``GradSampleModule`` (per-sample gradients), the optimizer in a ``DPOptimizer``
(clip each sample's gradient to ``max_grad_norm``, sum, add N(0, (sigma * max_grad_norm)^2), scale),
and the data loader becomes a ``DPDataLoader`` (Poisson sampling at rate ``1 / len(loader)``, which
is what the accountants assume). The trainer's own loop is unchanged; a step hook on the optimizer
records every real (not skipped) step into *our* accountant and, when a budget is given, refuses a
step that would exceed it before the parameters are updated.

Modules whose ``forward`` takes several batch-first tensors, e.g. ``(x, t)`` or ``(x, t, cond)``,
work as is: per-sample gradients are computed layer by layer from activations.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from opacus import GradSampleModule
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from fedsynth.privacy.accountant import Accountant
from fedsynth.privacy.budget import BudgetGuard, PrivacyBudget, noise_for_budget
from fedsynth.privacy.errors import PrivacyConfigError

__all__ = ["DPConfig", "make_private"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DPConfig:
    """DP-SGD settings for one site.

    Attributes:
        epsilon: The site's lifetime budget epsilon.
        delta: The delta at which epsilon is measured.
        max_grad_norm: Per-sample gradient clipping norm (> 0).
        noise_multiplier: Fixed noise multiplier, or None to derive it from the budget and the
            planned number of steps (:meth:`resolve_noise_multiplier`).
    """

    epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float | None = None

    def __post_init__(self) -> None:
        PrivacyBudget(self.epsilon, self.delta)
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise PrivacyConfigError(f"max_grad_norm must be > 0, got {self.max_grad_norm!r}")
        sigma = self.noise_multiplier
        if sigma is not None and not (math.isfinite(sigma) and sigma >= 0):
            raise PrivacyConfigError(f"noise_multiplier must be >= 0 or None, got {sigma!r}")

    @property
    def budget(self) -> PrivacyBudget:
        """The (epsilon, delta) budget."""
        return PrivacyBudget(self.epsilon, self.delta)

    def resolve_noise_multiplier(self, sample_rate: float, steps: int) -> float:
        """The fixed noise multiplier, or the least one fitting ``steps`` steps in the budget."""
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        return noise_for_budget(self.epsilon, self.delta, sample_rate, steps)


def _check_module(module: nn.Module) -> None:
    errors = ModuleValidator.validate(module, strict=False)
    if errors:
        details = "; ".join(str(err) for err in errors)
        raise PrivacyConfigError(f"module cannot be trained with DP-SGD: {details}")


def _wrap_module(module: nn.Module, loss_reduction: str) -> GradSampleModule:
    if isinstance(module, GradSampleModule):
        raise PrivacyConfigError("module is already wrapped for DP-SGD")
    _check_module(module)
    try:
        return GradSampleModule(module, batch_first=True, loss_reduction=loss_reduction)
    except NotImplementedError as exc:
        raise PrivacyConfigError(f"module cannot be trained with DP-SGD: {exc}") from exc


def _accounting_hook(
    accountant: Accountant, sample_rate: float, guard: BudgetGuard | None
) -> Callable[[DPOptimizer], None]:
    def hook(optimizer: DPOptimizer) -> None:
        sigma = float(optimizer.noise_multiplier)
        if guard is not None:
            guard.check(sigma, sample_rate, 1)
        accountant.step(noise_multiplier=sigma, sample_rate=sample_rate)

    return hook


def make_private(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,  # type: ignore[type-arg]
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: Accountant,
    budget: PrivacyBudget | None = None,
    loss_reduction: Literal["mean", "sum"] = "mean",
    generator: torch.Generator | None = None,
) -> tuple[GradSampleModule, DPOptimizer, DPDataLoader]:
    """Wraps a module, its optimizer and its data loader for DP-SGD with our accounting.

    The returned module shares its parameters with ``module``; the trainer keeps calling
    ``optimizer.zero_grad()``, ``loss.backward()``, ``optimizer.step()`` as before. Every step
    that updates the parameters records one step in ``accountant`` at ``sample_rate =
    1 / len(data_loader)``.

    Args:
        module: The model; every trainable layer must support per-sample gradients.
        optimizer: An optimizer over ``module``'s parameters.
        data_loader: A map-style loader; its batch size sets the Poisson sample rate.
        noise_multiplier: Noise std divided by ``max_grad_norm`` (0 turns privacy off, loudly).
        max_grad_norm: Per-sample clipping norm.
        accountant: Our accountant, stepped after each noised step.
        budget: When given, a step that would exceed it raises
            :class:`~fedsynth.errors.BudgetExceededError` before the parameters move.
        loss_reduction: How the trainer reduces its loss over the batch.
        generator: Randomness for Poisson sampling and noise (not for secure use).

    Returns:
        ``(private_module, private_optimizer, private_data_loader)``.

    Raises:
        PrivacyConfigError: Bad parameters or a module Opacus cannot handle.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise PrivacyConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier!r}")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise PrivacyConfigError(f"max_grad_norm must be > 0, got {max_grad_norm!r}")
    if len(data_loader) < 1:
        raise PrivacyConfigError("data_loader is empty")
    if noise_multiplier == 0:
        logger.warning("DP-SGD with noise_multiplier=0: gradients are clipped but NOT private")
    private_module = _wrap_module(module, loss_reduction)
    private_loader = DPDataLoader.from_data_loader(data_loader, generator=generator)
    sample_rate = float(private_loader.sample_rate)
    dataset_size = len(data_loader.dataset)  # type: ignore[arg-type]
    private_optimizer = DPOptimizer(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=max(1, round(dataset_size * sample_rate)),
        loss_reduction=loss_reduction,
        generator=generator,
    )
    guard = None if budget is None else BudgetGuard(accountant, budget)
    private_optimizer.attach_step_hook(_accounting_hook(accountant, sample_rate, guard))
    logger.info(
        "DP-SGD enabled",
        extra={"noise_multiplier": noise_multiplier, "sample_rate": sample_rate},
    )
    return private_module, private_optimizer, private_loader

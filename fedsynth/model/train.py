"""Local training of the tabular diffusion model, optionally with DP-SGD.

DP is added by wrapping, not subclassing (house rule 5): a :class:`PrivacyHook` receives the
denoiser, its optimizer and a data loader and returns their private versions; the loop stays the
same. :class:`OpacusPrivacy` is the hook backed by :func:`fedsynth.privacy.make_private` (Opacus
DP-SGD with Poisson sampling, Abadi et al. 2016), imported only when used.

Under DP the hook also sets the *noise multiplicity* K of the loss (Dockhorn, Cao, Vahdat and
Kreis, "Differentially Private Diffusion Models", TMLR 2023): each row's loss is averaged over K
draws of timestep and noise before its gradient is clipped (:meth:`TabularDiffusion.loss`), which
lowers the variance of the row's gradient without changing what the accountant sees (one clipped
gradient per sampled row, same sampling rate, same noise).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from fedsynth.errors import ConfigError
from fedsynth.model.config import DEFAULT_NOISE_MULTIPLICITY
from fedsynth.model.tabddpm import TabularDiffusion

__all__ = [
    "DEFAULT_NOISE_MULTIPLICITY",
    "OpacusPrivacy",
    "PrivacyHook",
    "TrainReport",
    "train_local",
]

logger = logging.getLogger(__name__)


class PrivacyHook(Protocol):
    """Turns a (module, optimizer, data loader) triple into its differentially private version."""

    @property
    def noise_multiplicity(self) -> int:
        """Draws of (timestep, noise) averaged per row before per-row clipping (1: plain loss)."""
        ...

    def wrap(
        self, module: nn.Module, optimizer: torch.optim.Optimizer, data_loader: DataLoader[Any]
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader[Any]]:
        """Private module (sharing parameters with ``module``), optimizer and loader."""
        ...

    def epsilon_spent(self) -> float:
        """Epsilon spent so far by this site's accountant."""
        ...


@dataclass(frozen=True, slots=True, eq=False)
class OpacusPrivacy:
    """DP-SGD through :func:`fedsynth.privacy.make_private`.

    Attributes:
        noise_multiplier: noise std / max_grad_norm.
        max_grad_norm: per-sample clipping norm.
        accountant: the site's accountant (``step``, ``epsilon(delta)``), stepped by each DP step.
        delta: the delta at which epsilon is reported.
        budget: optional ``fedsynth.privacy.PrivacyBudget``; a step that would exceed it raises
            BudgetExceededError before the parameters move.
        noise_multiplicity: K draws of (timestep, noise) averaged per row before clipping
            (Dockhorn et al. 2023); costs K times the compute per step, no privacy.
    """

    noise_multiplier: float
    max_grad_norm: float
    accountant: Any
    delta: float
    budget: Any = None
    noise_multiplicity: int = DEFAULT_NOISE_MULTIPLICITY

    def __post_init__(self) -> None:
        if self.noise_multiplicity < 1:
            raise ConfigError(f"noise_multiplicity must be >= 1, got {self.noise_multiplicity}")

    def wrap(
        self, module: nn.Module, optimizer: torch.optim.Optimizer, data_loader: DataLoader[Any]
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader[Any]]:
        """Delegates to ``fedsynth.privacy.make_private``."""
        try:
            from fedsynth.privacy import make_private
        except ImportError as exc:
            raise ConfigError(f"DP training needs fedsynth.privacy: {exc}") from exc
        return make_private(
            module,
            optimizer,
            data_loader,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            accountant=self.accountant,
            budget=self.budget,
        )

    def epsilon_spent(self) -> float:
        """The accountant's epsilon at ``delta``."""
        return float(self.accountant.epsilon(self.delta))


@dataclass(frozen=True, slots=True)
class TrainReport:
    """What one ``train_local`` call did.

    Attributes:
        steps: optimizer steps taken.
        n_rows: training rows.
        final_loss: mean loss over the last tenth of the steps.
        losses: loss of every step.
        seconds: wall time (from the clock passed in).
        epsilon: epsilon spent by the site so far (None without DP).
    """

    steps: int
    n_rows: int
    final_loss: float
    losses: tuple[float, ...]
    seconds: float
    epsilon: float | None


def train_local(
    model: TabularDiffusion,
    encoded: np.ndarray,
    cond: np.ndarray,
    *,
    steps: int | None = None,
    epochs: float | None = None,
    rng: np.random.Generator,
    privacy: PrivacyHook | None = None,
    progress: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> TrainReport:
    """Train ``model`` in place on encoded rows; give exactly one of ``steps`` or ``epochs``.

    Without ``privacy``, minibatches are drawn without replacement by ``rng``; with it, the hook's
    data loader decides (Poisson sampling for DP-SGD) and the loss averages the hook's
    ``noise_multiplicity`` draws per row.
    """
    x, y = _check_inputs(model, encoded, cond)
    batch = min(model.config.batch_size, len(x))
    total = _n_steps(steps, epochs, len(x), batch)
    torch.manual_seed(int(rng.integers(0, 2**31 - 1)))  # dropout-free model: only loader shuffles
    module: nn.Module = model.denoiser
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer = torch.optim.AdamW(
        params, lr=model.config.lr, weight_decay=model.config.weight_decay
    )
    multiplicity = 1
    if privacy is not None:
        multiplicity = privacy.noise_multiplicity
        loader: DataLoader[Any] = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
        module, optimizer, loader = privacy.wrap(module, optimizer, loader)
        batches = _loop_loader(loader)
    else:
        batches = _random_batches(x, y, batch, rng)
    start, losses = clock(), []
    try:
        for step in tqdm(range(total), disable=not progress, desc="training", unit="step"):
            if model.config.lr_anneal:
                for group in optimizer.param_groups:
                    group["lr"] = model.config.lr * (1 - step / total)
            xb, yb = next(batches)
            optimizer.zero_grad()
            loss = model.loss(xb, yb, module=module, multiplicity=multiplicity)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        _release(module, model.denoiser)
    tail = losses[-max(1, total // 10) :]
    eps = privacy.epsilon_spent() if privacy is not None else None
    return TrainReport(total, len(x), float(np.mean(tail)), tuple(losses), clock() - start, eps)


def _check_inputs(
    model: TabularDiffusion, encoded: np.ndarray, cond: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    if encoded.ndim != 2 or encoded.shape[1] != model.encoder.dim:
        raise ConfigError(
            f"encoded data has shape {encoded.shape}, model needs (n, {model.encoder.dim})"
        )
    if cond.shape != (encoded.shape[0],):
        raise ConfigError(f"cond has shape {cond.shape}, expected ({encoded.shape[0]},)")
    if len(encoded) == 0:
        raise ConfigError("no rows to train on")
    if cond.min() < 0 or cond.max() > model.null_label:
        raise ConfigError(f"cond labels must lie in [0, {model.null_label}]")
    x = torch.as_tensor(np.asarray(encoded, dtype=np.float32))
    return x, torch.as_tensor(np.asarray(cond, dtype=np.int64))


def _n_steps(steps: int | None, epochs: float | None, n_rows: int, batch: int) -> int:
    if (steps is None) == (epochs is None):
        raise ConfigError("give exactly one of steps or epochs")
    total = steps if steps is not None else math.ceil(float(epochs or 0) * n_rows / batch)
    if total < 1:
        raise ConfigError("training needs at least one step")
    return int(total)


def _random_batches(
    x: torch.Tensor, y: torch.Tensor, batch: int, rng: np.random.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        order = torch.as_tensor(rng.permutation(len(x)))
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


def _loop_loader(loader: DataLoader[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from loader


def _release(module: nn.Module, denoiser: nn.Module) -> None:
    """Remove a DP wrapper's hooks so the plain denoiser can be used again."""
    if module is not denoiser:
        close = getattr(module, "_close", None)
        if callable(close):
            close()

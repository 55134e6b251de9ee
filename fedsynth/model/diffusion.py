"""Diffusion processes of the tabular model, as pure tensor functions.

* Gaussian diffusion (Ho et al. 2020, DDPM) on the normalized numeric columns, noise prediction,
  ancestral sampling with the posterior variance, the cosine schedule of Nichol & Dhariwal (2021).
* Multinomial diffusion (Hoogeboom et al. 2021) on every one-hot block, as in TabDDPM (Kotelnikov et
  al. 2023): ``q(x_t | x_0) = Cat(abar_t x_0 + (1 - abar_t) / K)``; the model predicts ``x_0``
  probabilities, the reverse step is the true posterior ``q(x_{t-1} | x_t, x_0)`` with ``x_0``
  replaced by the prediction, and the loss is the KL between the two posteriors (the decoder
  negative log-likelihood at ``t = 0``).

One-hot blocks of different widths are handled at once by padding them to a
``(batch, n_blocks, K_max)`` tensor (:class:`BlockLayout`); padding entries carry probability 0.
Timestep index ``i`` in ``0..T-1`` is diffusion step ``i + 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["BlockLayout", "Schedule", "cosine_schedule"]

_TINY = 1e-30


@dataclass(frozen=True, slots=True, eq=False)
class Schedule:
    """Noise levels: ``alphas[i] = 1 - beta_i``, ``alphas_bar[i] = prod_{j<=i} alphas[j]``."""

    alphas: torch.Tensor
    alphas_bar: torch.Tensor

    @property
    def n_steps(self) -> int:
        """Number of diffusion steps T."""
        return int(self.alphas.shape[0])

    def alphas_bar_prev(self) -> torch.Tensor:
        """``abar_{i-1}`` with ``abar_{-1} = 1``."""
        return torch.cat([torch.ones(1, dtype=self.alphas_bar.dtype), self.alphas_bar[:-1]])


def cosine_schedule(n_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """The cosine schedule (Nichol & Dhariwal 2021), betas clipped to ``max_beta``."""
    grid = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    f = torch.cos((grid + s) / (1 + s) * math.pi / 2) ** 2
    betas = torch.clamp(1 - f[1:] / f[:-1], max=max_beta)
    alphas = 1 - betas
    return Schedule(alphas.float(), torch.cumprod(alphas, 0).float())


# ----- Gaussian part ------------------------------------------------------------------------
def gaussian_q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, sched: Schedule
) -> torch.Tensor:
    """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise``."""
    abar = sched.alphas_bar[t][:, None]
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def gaussian_p_step(
    x_t: torch.Tensor,
    eps_hat: torch.Tensor,
    i: int,
    sched: Schedule,
    gen: torch.Generator,
    clip: float = 5.0,
) -> torch.Tensor:
    """One ancestral step ``x_t -> x_{t-1}`` from predicted noise (``x_0`` clipped to +-clip)."""
    a, abar = sched.alphas[i], sched.alphas_bar[i]
    abar_prev = sched.alphas_bar_prev()[i]
    x0 = ((x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()).clamp(-clip, clip)
    c0 = abar_prev.sqrt() * (1 - a) / (1 - abar)
    ct = a.sqrt() * (1 - abar_prev) / (1 - abar)
    mean = c0 * x0 + ct * x_t
    if i == 0:
        return mean
    var = (1 - a) * (1 - abar_prev) / (1 - abar)
    return mean + var.sqrt() * torch.randn(x_t.shape, generator=gen)


# ----- multinomial part ---------------------------------------------------------------------
class BlockLayout:
    """Gathers one-hot blocks of widths ``sizes`` into a padded ``(B, n_blocks, K_max)`` tensor."""

    def __init__(self, sizes: tuple[int, ...]) -> None:
        self.sizes = sizes
        k_max = max(sizes, default=1)
        self.index = torch.zeros(len(sizes), k_max, dtype=torch.long)
        self.mask = torch.zeros(len(sizes), k_max, dtype=torch.bool)
        offset = 0
        for b, k in enumerate(sizes):
            self.index[b, :k] = torch.arange(offset, offset + k)
            self.mask[b, :k] = True
            offset += k
        self.k = torch.tensor(sizes, dtype=torch.float32)[:, None]

    @property
    def n_blocks(self) -> int:
        """Number of one-hot blocks."""
        return len(self.sizes)

    def pad(self, flat: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """``(B, sum(sizes))`` -> ``(B, n_blocks, K_max)``, padding set to ``fill``."""
        return flat[:, self.index].masked_fill(~self.mask, fill)

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pad`."""
        return padded[:, self.mask]

    def softmax(self, logits_flat: torch.Tensor) -> torch.Tensor:
        """Blockwise probabilities from flat logits, padded."""
        return torch.softmax(self.pad(logits_flat, float("-inf")), dim=-1)

    def uniform(self, batch: int) -> torch.Tensor:
        """Padded uniform distributions."""
        return (self.mask.float() / self.k).expand(batch, -1, -1)

    def sample(
        self,
        probs: torch.Tensor,
        gen: torch.Generator,
        forbid: torch.Tensor | None = None,
        log_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One-hot draws from padded probabilities (Gumbel-max).

        ``forbid`` (``(n_blocks, K_max)`` bool) excludes levels: each block is drawn from its
        distribution conditioned on the allowed levels. ``log_bias`` (same shape) multiplies each
        level's probability by ``exp(bias)`` before the draw (renormalized per block).
        """
        u = torch.rand(probs.shape, generator=gen).clamp_min(_TINY)
        scores = torch.log(probs.clamp_min(_TINY)) - torch.log(-torch.log(u))
        if log_bias is not None:
            scores = scores + log_bias
        scores = scores.masked_fill(~self.mask, float("-inf"))
        if forbid is not None:
            scores = scores.masked_fill(forbid, float("-inf"))
        return torch.nn.functional.one_hot(scores.argmax(-1), probs.shape[-1]).float() * self.mask


def multinomial_q_probs(
    x0: torch.Tensor, t: torch.Tensor, sched: Schedule, layout: BlockLayout
) -> torch.Tensor:
    """``q(x_t | x_0)`` for padded one-hot (or probability) ``x0``."""
    abar = sched.alphas_bar[t][:, None, None]
    return (abar * x0 + (1 - abar) / layout.k) * layout.mask


def multinomial_posterior(
    x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, sched: Schedule, layout: BlockLayout
) -> torch.Tensor:
    """``q(x_{t-1} | x_t, x_0)`` for padded tensors (``x0`` may be predicted probabilities)."""
    a = sched.alphas[t][:, None, None]
    abar_prev = sched.alphas_bar_prev()[t][:, None, None]
    fwd = a * x_t + (1 - a) / layout.k
    back = abar_prev * x0 + (1 - abar_prev) / layout.k
    unnorm = fwd * back * layout.mask
    return unnorm / unnorm.sum(-1, keepdim=True).clamp_min(_TINY)


def multinomial_loss(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    p0_hat: torch.Tensor,
    t: torch.Tensor,
    sched: Schedule,
    layout: BlockLayout,
) -> torch.Tensor:
    """Per-row loss, mean over blocks: posterior KL for ``t > 0``, decoder NLL at ``t = 0``."""
    q = multinomial_posterior(x_t, x0, t, sched, layout)
    p = multinomial_posterior(x_t, p0_hat, t, sched, layout)
    log_p = torch.log(p.clamp_min(_TINY))
    kl = (torch.xlogy(q, q) - q * log_p).sum(-1)
    nll = -(x0 * log_p).sum(-1)
    per_block = torch.where((t == 0)[:, None], nll, kl)
    return per_block.mean(-1)

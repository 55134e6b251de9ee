"""The MLP denoiser of the tabular diffusion model (TabDDPM, Kotelnikov et al. 2023, Sec. 3).

Input: the noisy row ``x_t``, the timestep ``t`` and the label ``y`` (``n_classes`` is the null
label of classifier-free guidance). ``h = W x_t + E_t(sin-emb(t)) + E_y(y)`` then an MLP outputs,
per row, the predicted noise of the numeric part and the ``x_0`` logits of every one-hot block.

Only ``nn.Linear``, ``nn.Embedding`` and ``nn.SiLU`` are used, so Opacus computes per-sample
gradients of every parameter (no BatchNorm, no parameters outside a supported layer).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MLPDenoiser", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017) of float timesteps ``t`` of shape ``(B, ...)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPDenoiser(nn.Module):
    """Predicts noise (numeric columns) and ``x_0`` logits (one-hot blocks) from ``(x_t, t, y)``."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], n_classes: int, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.proj = nn.Linear(d_in, embed_dim)
        self.time_embed = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        self.label_embed = nn.Embedding(n_classes + 1, embed_dim)
        layers: list[nn.Module] = []
        width = embed_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, d_in)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x_t``: ``(B, d_in)``; ``t``: ``(B,)`` timesteps; ``y``: ``(B,)`` int64 labels.

        Extra leading dimensions after the batch one are allowed (``(B, K, d_in)``, ``(B, K)``,
        ``(B, K)``): noise multiplicity passes a row's K draws as one sample this way.
        """
        emb = self.time_embed(timestep_embedding(t, self.embed_dim)) + self.label_embed(y)
        out: torch.Tensor = self.head(self.body(nn.functional.silu(self.proj(x_t) + emb)))
        return out

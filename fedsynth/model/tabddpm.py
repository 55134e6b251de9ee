"""TabDDPM-style diffusion model for mixed-type tabular data (Kotelnikov et al. 2023, "TabDDPM:
Modelling Tabular Data with Diffusion Models", ICML).

* numeric columns, quantile-normalized by the :class:`~fedsynth.data.encoder.FeatureEncoder`, follow
  Gaussian diffusion (DDPM, Ho et al. 2020);
* every one-hot block (categorical levels + "missing", and each numeric column's present/missing
  indicator) follows multinomial diffusion (Hoogeboom et al. 2021) -- the true multinomial process,
  not Gaussian noise on one-hot vectors;
* missingness is data: it is generated, never imputed;
* one MLP denoiser (:mod:`fedsynth.model.denoiser`) with a sinusoidal timestep embedding and a label
  embedding of the schema's conditioning column; labels are dropped with ``cond_drop_prob`` during
  training so that sampling can use classifier-free guidance (Ho & Salimans 2022).

Parameters travel as one flat float32 vector: every parameter of the denoiser, in order of its
``state_dict`` name sorted as strings, each flattened in row-major (C) order
(:meth:`TabularDiffusion.parameter_layout`).
"""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedsynth.data.encoder import Block, FeatureEncoder
from fedsynth.data.patterns import pattern_acceptance, pattern_codes
from fedsynth.errors import ConfigError
from fedsynth.model.config import DiffusionConfig
from fedsynth.model.constraints import Constraints
from fedsynth.model.denoiser import MLPDenoiser
from fedsynth.model.diffusion import (
    BlockLayout,
    cosine_schedule,
    gaussian_p_step,
    gaussian_q_sample,
    multinomial_loss,
    multinomial_posterior,
    multinomial_q_probs,
)
from fedsynth.model.sampling import sample_with_constraints

__all__ = ["FORMAT", "TabularDiffusion"]

logger = logging.getLogger(__name__)

#: Format tag of saved model files.
FORMAT = "fedsynth.tabddpm/1"
_GEN_CHUNK = 8192


class TabularDiffusion:
    """A conditional diffusion model over one dataset schema (see the module docstring)."""

    def __init__(self, encoder: FeatureEncoder, config: DiffusionConfig, seed: int) -> None:
        self.encoder = encoder
        self.config = config
        self.seed = seed
        self.num_dims = encoder.num_dims
        self.layout = BlockLayout(encoder.cat_sizes)
        # the "missing" level (always last) of columns the schema marks required: never drawn
        self.never_missing = torch.zeros_like(self.layout.mask)
        specs = {c.name: c for c in encoder.feature_columns}
        for b, block in enumerate(encoder.blocks):
            if specs[block.name].required:
                self.never_missing[b, block.width - 1] = True
        # log-weight shift of every level at every reverse step (calibrate_marginals)
        self.level_bias = torch.zeros(self.layout.mask.shape)
        # probability of keeping a generated row, per missingness pattern (calibrate_marginals)
        self.pattern_accept: np.ndarray | None = None
        self.schedule = cosine_schedule(config.n_timesteps)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.denoiser: nn.Module = MLPDenoiser(
                encoder.dim, config.hidden, encoder.n_classes, config.embed_dim
            )
        self._gen = torch.Generator().manual_seed(seed + 1)

    @property
    def null_label(self) -> int:
        """The label meaning "unconditional" (also used for a missing condition)."""
        return self.encoder.n_classes

    # ----- training -----------------------------------------------------------------------------
    def loss(
        self,
        batch: torch.Tensor,
        cond: torch.Tensor,
        *,
        per_sample: bool = False,
        module: nn.Module | None = None,
        multiplicity: int = 1,
    ) -> torch.Tensor:
        """Diffusion loss of an encoded batch: Gaussian MSE + mean multinomial KL per row.

        With ``multiplicity`` K > 1 every row's loss is the mean over K independent draws of
        (timestep, Gaussian noise, multinomial noise, label drop): *noise multiplicity* (Dockhorn,
        Cao, Vahdat and Kreis, "Differentially Private Diffusion Models", TMLR 2023, Sec. 3.2).
        The network sees the draws as a ``(B, K, dim)`` tensor, so a per-sample-gradient engine
        (Opacus) treats the K draws of a row as one sample: the row's gradient is the gradient of
        its K-averaged loss, computed before it is clipped, and every row still contributes one
        clipped gradient. Under DP-SGD this lowers the variance of each row's gradient at no
        privacy cost. K = 1 is the plain loss, with the same random draws as before.

        Args:
            batch: ``(B, dim)`` float32 encoded rows.
            cond: ``(B,)`` int64 labels (``null_label`` for missing).
            per_sample: return the ``(B,)`` per-row losses instead of their mean.
            module: the network to call (e.g. its DP-SGD wrapper); defaults to ``self.denoiser``.
            multiplicity: draws K averaged per row (>= 1).
        """
        if multiplicity < 1:
            raise ConfigError(f"multiplicity must be >= 1, got {multiplicity}")
        net = self.denoiser if module is None else module
        rows, k = batch.shape[0], multiplicity
        if k > 1:
            batch, cond = batch.repeat_interleave(k, 0), cond.repeat_interleave(k, 0)
        n = batch.shape[0]
        t = torch.randint(0, self.schedule.n_steps, (n,), generator=self._gen)
        drop = torch.rand(n, generator=self._gen) < self.config.cond_drop_prob
        y = torch.where(drop, torch.full_like(cond, self.null_label), cond.long())
        x_num, x_cat = batch[:, : self.num_dims], batch[:, self.num_dims :]
        noise = torch.randn(x_num.shape, generator=self._gen)
        xt_num = gaussian_q_sample(x_num, t, noise, self.schedule)
        x0_cat = self.layout.pad(x_cat)
        xt_cat = self.layout.sample(
            multinomial_q_probs(x0_cat, t, self.schedule, self.layout), self._gen
        )
        x_t = torch.cat([xt_num, self.layout.unpad(xt_cat)], dim=1)
        if k > 1:  # one sample per row for the network (and for per-sample gradients)
            dim = x_t.shape[1]
            out = net(x_t.view(rows, k, dim), t.float().view(rows, k), y.view(rows, k))
            out = out.reshape(n, dim)
        else:
            out = net(x_t, t.float(), y)
        per_row = torch.zeros(n)
        if self.num_dims:
            eps_hat = self._eps_hat(out[:, : self.num_dims], xt_num, t)
            per_row = per_row + ((eps_hat - noise) ** 2).mean(dim=1)
        if self.layout.n_blocks:
            p0_hat = self.layout.softmax(out[:, self.num_dims :])
            per_row = per_row + multinomial_loss(
                x0_cat, xt_cat, p0_hat, t, self.schedule, self.layout
            )
        if k > 1:
            per_row = per_row.view(rows, k).mean(dim=1)
        if per_sample:
            return per_row
        return per_row.mean() if rows else per_row.sum()

    def _eps_hat(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise of the numeric columns from the network's numeric outputs."""
        if not self.config.numeric_skip:
            return out
        abar = self.schedule.alphas_bar[t][:, None]
        return (1 - abar).sqrt() * x_t + abar.sqrt() * out

    # ----- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, labels: np.ndarray, gen: torch.Generator, guidance: float | None = None
    ) -> np.ndarray:
        """Encoded rows (numeric values, one-hot blocks) for ``labels``, by reverse diffusion.

        ``guidance``: the classifier-free guidance scale for this call (default: the config's).
        """
        scale = self.config.guidance_scale if guidance is None else float(guidance)
        parts = [
            self._generate_chunk(
                torch.as_tensor(labels[i : i + _GEN_CHUNK], dtype=torch.long), gen, scale
            )
            for i in range(0, len(labels), _GEN_CHUNK)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.encoder.dim), np.float32)

    def _generate_chunk(self, y: torch.Tensor, gen: torch.Generator, scale: float) -> np.ndarray:
        n = y.shape[0]
        x_num = torch.randn((n, self.num_dims), generator=gen)
        x_cat = self.layout.sample(self.layout.uniform(n), gen)
        self.denoiser.eval()
        for i in reversed(range(self.schedule.n_steps)):
            t = torch.full((n,), i, dtype=torch.long)
            out = self._guided(torch.cat([x_num, self.layout.unpad(x_cat)], 1), t, y, scale)
            if self.num_dims:
                eps_hat = self._eps_hat(out[:, : self.num_dims], x_num, t)
                x_num = gaussian_p_step(x_num, eps_hat, i, self.schedule, gen)
            if self.layout.n_blocks:
                p0_hat = self.layout.softmax(out[:, self.num_dims :])
                post = multinomial_posterior(x_cat, p0_hat, t, self.schedule, self.layout)
                # last step: draw x0 from the model restricted to what the schema allows
                forbid = self.never_missing if i == 0 else None
                x_cat = self.layout.sample(post, gen, forbid, self.level_bias)
        self.denoiser.train()
        return torch.cat([x_num, self.layout.unpad(x_cat)], 1).numpy().astype(np.float32)

    def _guided(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, scale: float
    ) -> torch.Tensor:
        if scale == 1.0:
            out: torch.Tensor = self.denoiser(x, t.float(), y)
            return out
        null = torch.full_like(y, self.null_label)
        both = self.denoiser(torch.cat([x, x]), torch.cat([t, t]).float(), torch.cat([y, null]))
        cond_out, uncond_out = both.chunk(2)
        guided: torch.Tensor = uncond_out + scale * (cond_out - uncond_out)
        return guided

    def sample(
        self,
        n: int,
        *,
        conditions: Constraints | None = None,
        rng: np.random.Generator,
        max_tries: int = 20,
        guidance: float | None = None,
    ) -> pd.DataFrame:
        """``n`` decoded synthetic rows, all satisfying ``conditions``.

        A constrained conditioning column restricts the labels drawn; every other constraint is met
        by rejection. Raises :class:`~fedsynth.errors.ConstraintError` when the constraints are
        infeasible under the schema or too rare to meet within ``max_tries`` batches.

        ``guidance`` is the classifier-free guidance scale (Ho and Salimans 2022) for this call
        (default: the config's, 1): above 1 the rows follow the conditioning column more closely,
        which raised train-on-synthetic utility and lowered fidelity a little for the DP models
        (docs/bench-quality.md); ``ConfigError`` outside ``[0, 10]``.
        """
        return sample_with_constraints(self, n, conditions, rng, max_tries, guidance)

    def calibrate_marginals(
        self, *, n: int = 2000, rounds: int = 8, step: float = 0.5, seed: int = 0,
        levels: bool = True, patterns: bool = True, guidance: float | None = None,
    ) -> dict[str, tuple[float, ...]]:
        """Shift the sampler's one-hot draws so their shares match the encoder's released shares.

        Under DP-SGD the model's categorical outputs drift toward uniform (gradient noise
        flattens them): the demo drew a third of blood pressures missing where the data has 6.5%,
        and 61% men against 79%. The encoder's ``missing_shares`` and ``level_shares`` come from
        the histograms the sites already released with DP, so matching them is post-processing
        and costs no privacy. Each round samples ``n`` rows with labels from the condition prior
        and adds ``step * (log target - log observed)`` to the log-weight of every level of a
        discrete column (``levels``; the "missing" level included unless the column is required)
        and ``step * (logit(target) - logit(observed))`` to the missing log-odds of a numeric
        column. The shift applies at every reverse step (at the last step alone it cannot move a
        confident chain) and is damped (it compounds over the steps; a full step overshoots). The
        model still decides which rows get which level (conditioning, other columns); only the
        overall shares move, so constrained and conditioned requests keep their dependence.
        ``levels=False`` moves the missing shares alone. Does nothing without shares.

        With the encoder's released missingness patterns (``patterns``; the schema's
        ``missing_pattern``), the levels are calibrated first, then ``4 n`` rows are drawn and
        :attr:`pattern_accept` is set (:func:`fedsynth.data.patterns.pattern_acceptance`):
        sampling keeps each generated row with the probability of its pattern, so the patterns of
        the rows served follow the released shares (DP-SGD draws each column's missingness nearly
        independently of the others', losing e.g. which columns go missing together when the
        exercise test was not done). The model still draws every row; only which of its rows are
        kept changes, so a conditioned row keeps the model's own dependence on its label.

        Rows are drawn at ``guidance`` (default: the config's scale, what ``sample`` uses by
        default); shares and patterns move with the scale, so calibrate at the scale served.

        Returns:
            The share of each level (missing last) of every calibrated column as the model drew it
            before any shift.
        """
        plans = self._calibration_plans(levels)
        observed: dict[str, tuple[float, ...]] = {}
        if n < 1:
            return observed
        for r in range(rounds if plans else 0):
            rng = np.random.default_rng([seed, r])
            raw = self.generate(
                self._prior_labels(n, rng), torch.Generator().manual_seed(seed * 1000 + r),
                guidance,
            )
            for b, block, target in plans:
                drawn = raw[:, block.offset : block.offset + block.width].mean(0)
                if r == 0:
                    observed[block.name] = tuple(float(v) for v in drawn)
                if target.size == 1:  # the missing share alone
                    shift = _logit(float(target[0])) - _logit(float(drawn[-1]))
                    self.level_bias[b, block.width - 1] += step * shift
                    continue
                width = target.size  # a required column's missing level is left out
                ratio = np.log(np.clip(target, 1e-3, None) / np.clip(drawn[:width], 1e-3, None))
                self.level_bias[b, :width] += torch.from_numpy(step * ratio).float()
        if patterns and self.encoder.missing_patterns is not None:
            rng = np.random.default_rng([seed, rounds])
            raw = self.generate(
                self._prior_labels(4 * n, rng), torch.Generator().manual_seed(seed), guidance
            )
            released = self.encoder.missing_patterns
            shares = dict(self.encoder.missing_shares)
            missing = [shares[c] for c in released.columns] if shares else None
            self.pattern_accept = pattern_acceptance(
                self.pattern_codes(raw), released, missing=missing
            )
        return observed

    def _prior_labels(self, n: int, rng: np.random.Generator) -> np.ndarray:
        prior = np.asarray(self.encoder.cond_prior, dtype=np.float64)
        if not self.encoder.n_classes:
            return np.zeros(n, dtype=np.int64)
        return rng.choice(len(prior), size=n, p=prior / prior.sum())

    def pattern_codes(self, raw: np.ndarray) -> np.ndarray:
        """Missingness pattern (:mod:`fedsynth.data.patterns`) of each encoded row of ``raw``."""
        patterns = self.encoder.missing_patterns
        if patterns is None:
            return np.zeros(len(raw), dtype=np.int64)
        blocks = {b.name: b for b in self.encoder.blocks}
        missing_at = [blocks[c].offset + blocks[c].width - 1 for c in patterns.columns]
        return pattern_codes(raw[:, missing_at] > 0.5)

    def _calibration_plans(self, levels: bool) -> list[tuple[int, Block, np.ndarray]]:
        """``(block index, block, target)``: a 1-vector is a missing share, longer ones levels."""
        missing = dict(self.encoder.missing_shares)
        shares = dict(self.encoder.level_shares) if levels else {}
        plans = []
        for b, block in enumerate(self.encoder.blocks):
            required = bool(self.never_missing[b, block.width - 1])
            if block.name in shares:
                target = np.asarray(shares[block.name], dtype=np.float64)
                if required:
                    target = target[:-1] / target[:-1].sum()
                plans.append((b, block, target))
            elif block.name in missing and not required:
                plans.append((b, block, np.asarray([missing[block.name]])))
        return plans

    # ----- parameters ---------------------------------------------------------------------------
    def _named(self) -> list[tuple[str, nn.Parameter]]:
        return sorted(self.denoiser.named_parameters(), key=lambda kv: kv[0])

    def parameter_layout(self) -> list[tuple[str, tuple[int, ...], int]]:
        """``(name, shape, offset)`` of every parameter in the flat vector (sorted by name)."""
        out, offset = [], 0
        for name, param in self._named():
            out.append((name, tuple(param.shape), offset))
            offset += param.numel()
        return out

    @property
    def n_parameters(self) -> int:
        """Length of the flat parameter vector."""
        return sum(p.numel() for _, p in self._named())

    def flat_parameters(self) -> np.ndarray:
        """All parameters as one float32 vector in :meth:`parameter_layout` order."""
        return np.concatenate(
            [p.detach().cpu().reshape(-1).numpy() for _, p in self._named()]
        ).astype(np.float32)

    def load_flat_parameters(self, vec: np.ndarray) -> None:
        """Set every parameter from a flat vector (inverse of :meth:`flat_parameters`)."""
        vec = np.asarray(vec)
        if vec.shape != (self.n_parameters,):
            raise ConfigError(
                f"flat vector has shape {vec.shape}, model needs ({self.n_parameters},)"
            )
        if not np.all(np.isfinite(vec)):
            raise ConfigError("flat parameter vector has non-finite values")
        params = dict(self._named())
        with torch.no_grad():
            for name, shape, offset in self.parameter_layout():
                size = int(np.prod(shape, dtype=np.int64))
                chunk = torch.from_numpy(vec[offset : offset + size].astype(np.float32))
                params[name].copy_(chunk.reshape(shape))

    # ----- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write denoiser state, encoder (with its schema) and config to one file."""
        payload: dict[str, Any] = {
            "format": FORMAT,
            "state_dict": self.denoiser.state_dict(),
            "encoder": self.encoder.to_dict(),
            "config": self.config.to_dict(),
            "seed": self.seed,
        }
        torch.save(payload, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> TabularDiffusion:
        """Read a file written by :meth:`save` (tensors and plain data only)."""
        try:
            payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            raise ConfigError(f"cannot read model file {path}: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ConfigError(f"{path} is not a {FORMAT} model file")
        encoder = FeatureEncoder.from_dict(payload["encoder"])
        model = cls(encoder, DiffusionConfig.from_dict(payload["config"]), int(payload["seed"]))
        model.denoiser.load_state_dict(payload["state_dict"])
        return model


def _logit(p: float, eps: float = 1e-3) -> float:
    q = min(max(p, eps), 1 - eps)
    return math.log(q / (1 - q))

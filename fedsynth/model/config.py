"""Hyper-parameters of the tabular diffusion model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from fedsynth.errors import ConfigError

__all__ = [
    "DEFAULT_NOISE_MULTIPLICITY",
    "DP_CONFIG",
    "FEDERATED_DP_CONFIG",
    "FEDERATED_LOCAL_STEPS",
    "DiffusionConfig",
]

_DEFAULT_HIDDEN = (256, 256, 256)


@dataclass(frozen=True, slots=True)
class DiffusionConfig:
    """Model, diffusion and optimizer settings (defaults sized for a CPU).

    Attributes:
        hidden: widths of the denoiser's hidden layers.
        embed_dim: width of the input projection and of the timestep / label embeddings.
        n_timesteps: diffusion steps T (cosine schedule).
        cond_drop_prob: probability of replacing the label by the null label during training
            (classifier-free guidance, Ho & Salimans 2022).
        guidance_scale: ``s`` in ``out = out_uncond + s * (out_cond - out_uncond)``; 1 samples
            the plain conditional model, larger values push harder towards the condition.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: rows per step (the expected batch size under Poisson sampling with DP).
        lr_anneal: decay the learning rate linearly to 0 over one ``train_local`` call.
        numeric_skip: the denoiser's numeric outputs ``F`` are a residual on the best linear
            denoiser of standard-normal columns: ``eps_hat = sqrt(1 - abar) x_t + sqrt(abar) F``
            (``F`` is then a prediction of ``v = sqrt(abar) eps - sqrt(1 - abar) x_0``; Salimans
            & Ho 2022, the same as the preconditioning of Karras et al. 2022 with data scale 1),
            trained with the noise-prediction loss. The quantile transform makes every numeric
            column standard normal, so an output of zero already gives each column its marginal;
            the network learns the rest.
    """

    hidden: tuple[int, ...] = _DEFAULT_HIDDEN
    embed_dim: int = 128
    n_timesteps: int = 100
    cond_drop_prob: float = 0.1
    guidance_scale: float = 1.0
    lr: float = 2e-3
    weight_decay: float = 1e-5
    batch_size: int = 256
    lr_anneal: bool = True
    numeric_skip: bool = False

    def __post_init__(self) -> None:
        if not self.hidden or min(self.hidden) < 1 or self.embed_dim < 2 or self.embed_dim % 2:
            raise ConfigError("hidden widths must be positive and embed_dim a positive even number")
        if self.n_timesteps < 2:
            raise ConfigError("n_timesteps must be at least 2")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ConfigError("cond_drop_prob must lie in [0, 1)")
        if self.guidance_scale < 0 or self.lr <= 0 or self.weight_decay < 0 or self.batch_size < 1:
            raise ConfigError("guidance_scale, lr, weight_decay and batch_size must be positive")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DiffusionConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        try:
            hidden = tuple(int(h) for h in raw.get("hidden", _DEFAULT_HIDDEN))
            return cls(**{**raw, "hidden": hidden})
        except TypeError as exc:
            raise ConfigError(f"invalid diffusion config: {exc}") from exc


#: Draws of (timestep, noise) averaged per row before per-row clipping under DP-SGD: noise
#: multiplicity (Dockhorn, Cao, Vahdat and Kreis, "Differentially Private Diffusion Models",
#: TMLR 2023; :meth:`fedsynth.model.tabddpm.TabularDiffusion.loss`). It costs K times the compute
#: of a step and no privacy. Measured at epsilon 8 with the model below: see DP_CONFIG.
DEFAULT_NOISE_MULTIPLICITY = 16

#: The model trained with DP-SGD (``bench.quality``'s DP rows, ``fedsynth train --epsilon`` and the
#: demo's federation). Chosen by measurement on UCI heart (736 training rows, epsilon 8; see
#: docs/bench-quality.md), together with noise multiplicity K
#: (:data:`fedsynth.model.train.DEFAULT_NOISE_MULTIPLICITY`):
#:
#: * a small denoiser (MLP 64x2, embedding 32): the DP-SGD noise added to the summed gradient has
#:   the same scale in every coordinate, so its norm grows with the number of parameters while the
#:   clipped signal does not (MLP 32x2 and 128x2 both scored lower);
#: * a high learning rate (1e-2): AdamW with few effective steps of a noisy gradient;
#: * few diffusion steps (T = 10 rather than 100): with T = 100 and K = 16 the SDMetrics score at
#:   epsilon 8 was 0.66, with T = 20 0.76, with T = 10 0.82. The denoiser has ten noise levels to
#:   learn from the same privatized gradient signal, each row's K draws cover them, and the reverse
#:   chain compounds the errors of a noisy model over fewer steps;
#: * ``numeric_skip``: the network corrects the best linear denoiser instead of predicting the
#:   noise from scratch. Over eight training seeds of the federated epsilon-8 model the TSTR AUC
#:   rose by 0.037 on average (7 seeds of 8; 0.743 -> 0.780) with SDMetrics unchanged (+0.002).
#: * classifier-free guidance 1.5 when sampling (training is unchanged): DP-SGD noise weakens how
#:   the rows depend on the diagnosis, and guidance strengthens it. Served as the gateway serves it
#:   (calibrated at the scale), four federated epsilon-8 seeds x five draws: TSTR ratio 0.858 ->
#:   0.890 (every seed higher), SDMetrics 0.841 -> 0.840; at 2, 0.895 and 0.835
#:   (``bench.guidance``, 10 rounds of 100 steps). Under :data:`FEDERATED_DP_CONFIG` it adds
#:   less: 0.921 -> 0.929, SDMetrics 0.842 -> 0.848.
DP_CONFIG = DiffusionConfig(
    hidden=(64, 64), embed_dim=32, n_timesteps=10, lr=1e-2, numeric_skip=True,
    guidance_scale=1.5,
)

#: The DP recipe as federated sites train it: :data:`DP_CONFIG` with twice its learning rate, each
#: site taking :data:`FEDERATED_LOCAL_STEPS` steps per round from the global parameters, the
#: learning rate decaying linearly over the rounds on the server's side rather than within a round
#: (``lr_anneal`` off; the agents decay it over their planned steps,
#: ``agents.training.LocalTrainer.round_lr``). A site's batch is its share of the centralized one,
#: so its DP-SGD gradient carries about its share of the signal under the same noise; AdamW divides
#: each step by that noisy gradient's scale, so a site's step moves less signal than a centralized
#: one, and long local runs drift apart under independent noise before the server averages them.
#: Short rounds average the sites' noise away more often and the larger rate makes up for the
#: smaller signal. Measured with ``bench.quality``'s federated epsilon-8 run (1000 steps per site
#: in all, ``bench.quality_seeds``; docs/bench-quality.md): served TSTR ratio over four training
#: seeds x five draws 0.885 with 10 rounds at 1e-2, 0.936 with 100 rounds at 2e-2, SDMetrics
#: 0.843 -> 0.846; on four held-out seeds (4-7) 0.882 -> 0.933, SDMetrics 0.843 both. Four times
#: the rate made the models collapse onto the majority label.
FEDERATED_DP_CONFIG = replace(DP_CONFIG, lr=2e-2, lr_anneal=False)

#: Local DP-SGD steps per federated round under :data:`FEDERATED_DP_CONFIG`.
FEDERATED_LOCAL_STEPS = 10

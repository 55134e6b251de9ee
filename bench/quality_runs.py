"""The generators of ``bench.quality``: ours centralized, federated and per hospital, and SDV's.

Federated runs simulate the federation in one process: every round each hospital starts from the
global parameters, trains locally (``fedsynth.model.train_local``, with DP-SGD through
``fedsynth.model.OpacusPrivacy`` when private), and the server adds the mean of the parameter
deltas weighted by the hospitals' row counts (FedAvg; McMahan et al. 2017, "Communication-efficient
learning of deep networks from decentralized data"), computed by ``aggregator.strategies.kernels``.

Same training budget: a hospital with ``n_k`` of the ``N`` training rows trains with batch
``round(B * n_k / N)`` for the centralized number of steps in total (spread over the rounds), so
every row is visited as often as in the centralized run, the sum of the hospitals' batches equals
the centralized batch, and the DP-SGD sampling rate and step count per hospital equal the
centralized ones.

Privacy accounting per DP run or hospital, as the agents do it: one RDP accountant (delta
``DELTA``) holds the Gaussian histograms that fit the numeric normalization
(``fedsynth.data.accounted_histograms``, noise multiplier
``fedsynth.data.default_histogram_noise(epsilon)``, one step at sample rate 1) and the DP-SGD steps,
whose noise multiplier ``fedsynth.privacy.noise_for_budget`` plans so that both fit epsilon.
DP-SGD averages each row's loss over ``Training.noise_multiplicity`` draws of timestep and noise
before clipping (noise multiplicity, Dockhorn et al. 2023; no privacy cost).

With ``Training.rake`` the fitted model also gives a second set of synthetic rows: ``n`` of
``RAKE_POOL * n`` rows from the model, raked to the released histograms
(``fedsynth.model.calibration``). That is post-processing of the DP model and of the DP histograms,
so it spends no further epsilon.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from aggregator.strategies.kernels import stack_deltas, weighted_mean
from fedsynth.data import (
    DatasetSchema,
    FeatureEncoder,
    Histograms,
    accounted_histograms,
    default_histogram_noise,
    site_histograms,
)
from fedsynth.model import (
    DEFAULT_NOISE_MULTIPLICITY,
    DiffusionConfig,
    OpacusPrivacy,
    TabularDiffusion,
    train_local,
)
from fedsynth.model.calibration import rake_to_histograms

__all__ = [
    "DELTA",
    "MAX_GRAD_NORM",
    "RAKE_POOL",
    "Fitted",
    "Training",
    "fedavg_step",
    "fit_centralized",
    "fit_federated",
    "fit_sdv",
    "site_batch",
]

DELTA = 1e-5
MAX_GRAD_NORM = 1.0
RAKE_POOL = 8
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Training:
    """How one of our models is trained.

    Attributes:
        config: Model and optimizer settings (``batch_size`` is the centralized batch).
        steps: Centralized optimizer steps (per hospital in federated runs, see module doc).
        rounds: Federated rounds (ignored by centralized runs).
        epsilon: Total (histograms + DP-SGD) budget per site, or None for no DP.
        noise_multiplicity: Draws of (timestep, noise) averaged per row before clipping (DP only).
        rake: Also sample rows raked to the released histograms (see the module docstring).
    """

    config: DiffusionConfig
    steps: int
    rounds: int = 1
    epsilon: float | None = None
    noise_multiplicity: int = DEFAULT_NOISE_MULTIPLICITY
    rake: bool = False

    def describe(self, federated: bool = False) -> str:
        """Short text for the table, e.g. ``MLP 256x3 T=100, 3000 steps``."""
        width = "x".join(str(h) for h in self.config.hidden)
        if len(set(self.config.hidden)) == 1:
            width = f"{self.config.hidden[0]}x{len(self.config.hidden)}"
        text = f"MLP {width} T={self.config.n_timesteps}, {self.steps} steps"
        if federated:
            text = f"{text}, {self.rounds} rounds, lr {self.config.lr:g}"
        return f"{text}, K={self.noise_multiplicity}" if self.epsilon is not None else text


@dataclass(frozen=True, slots=True)
class Fitted:
    """A trained generator's synthetic rows and what fitting it cost.

    Attributes:
        synthetic: Sampled rows.
        seconds: Wall seconds of fitting (histograms, encoder, training).
        epsilon: Largest epsilon spent by a site (histograms + DP-SGD), None without DP.
        raked: Rows raked to the released histograms (only with ``Training.rake``).
        calibrated: Rows from the model after its level and missing shares were calibrated to the
            released histograms, as the gateway serves it (only with ``Training.rake``).
        model: The trained model (ours only; calibrated when ``calibrated`` is set).
        histograms: The summed released histograms the encoder came from (ours only).
    """

    synthetic: pd.DataFrame
    seconds: float
    epsilon: float | None
    raked: pd.DataFrame | None = None
    calibrated: pd.DataFrame | None = None
    model: TabularDiffusion | None = None
    histograms: Histograms | None = None


def site_batch(batch: int, n_site: int, n_total: int) -> int:
    """The hospital's batch: its share of the centralized batch, at least 1, at most its rows."""
    return max(1, min(n_site, round(batch * n_site / n_total)))


def fedavg_step(
    global_params: np.ndarray, local_params: list[np.ndarray], weights: list[float]
) -> np.ndarray:
    """``global + sum_k w_k (local_k - global) / sum_k w_k`` (FedAvg on deltas), as float32."""
    deltas = stack_deltas([p.astype(np.float64) - global_params for p in local_params])
    step = weighted_mean(deltas, np.asarray(weights, dtype=np.float64))
    return (global_params.astype(np.float64) + step).astype(np.float32)


def _histograms(
    sites: Mapping[str, pd.DataFrame], schema: DatasetSchema, epsilon: float | None,
    rng: np.random.Generator,
) -> Histograms:
    if epsilon is None:
        parts = [site_histograms(frame, schema, math.inf, rng) for frame in sites.values()]
    else:
        z = default_histogram_noise(epsilon)
        parts = [accounted_histograms(frame, schema, z, rng) for frame in sites.values()]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def _privacy(plan: Training, n_rows: int, batch: int, steps: int) -> OpacusPrivacy | None:
    if plan.epsilon is None:
        return None
    from fedsynth.privacy import make_accountant

    sample_rate = 1.0 / math.ceil(n_rows / batch)  # what Opacus's Poisson loader uses
    z = default_histogram_noise(plan.epsilon)
    sigma = _noise(plan.epsilon, sample_rate, steps, z)
    accountant = make_accountant("rdp")
    accountant.step(noise_multiplier=z, sample_rate=1.0, steps=1)  # the histograms
    return OpacusPrivacy(sigma, MAX_GRAD_NORM, accountant, DELTA,
                         noise_multiplicity=plan.noise_multiplicity)


@functools.lru_cache(maxsize=32)
def _noise(epsilon: float, sample_rate: float, steps: int, hist_noise: float) -> float:
    """``noise_for_budget`` after the histograms (a slow search), once per distinct setting."""
    from fedsynth.privacy import noise_for_budget

    return noise_for_budget(epsilon, DELTA, sample_rate, steps, prior=[(hist_noise, 1.0, 1)])


def _spent(epsilon: float | None, hooks: list[OpacusPrivacy | None]) -> float | None:
    """The largest spend of a site: its accountant holds the histograms and DP-SGD."""
    if epsilon is None:
        return None
    return max(h.epsilon_spent() for h in hooks if h is not None)


def _sample(
    model: TabularDiffusion, n: int, seed: int, guidance: float | None = None
) -> pd.DataFrame:
    return model.sample(n, rng=np.random.default_rng(seed + 7919), guidance=guidance)


def _raked(
    model: TabularDiffusion, n: int, seed: int, hist: Histograms, rake: bool
) -> pd.DataFrame | None:
    """``n`` of ``RAKE_POOL * n`` rows from the model, raked to ``hist`` (None unless ``rake``)."""
    if not rake:
        return None
    rng = np.random.default_rng(seed + 104_729)
    pool = model.sample(RAKE_POOL * n, rng=rng)
    return rake_to_histograms(pool, hist, model.encoder.schema, n, rng)


def _calibrated(
    model: TabularDiffusion, n: int, seed: int, calibrate: bool
) -> pd.DataFrame | None:
    """``n`` rows after :meth:`TabularDiffusion.calibrate_marginals` (changes ``model``; last)."""
    if not calibrate:
        return None
    model.calibrate_marginals(seed=seed)
    return _sample(model, n, seed)


def fit_centralized(
    train: pd.DataFrame, schema: DatasetSchema, plan: Training, *, n_synthetic: int,
    seed: int, clock: Clock = time.perf_counter,
) -> Fitted:
    """One model on ``train`` (pooled data, or one hospital alone)."""
    rng = np.random.default_rng(seed)
    start = clock()
    hist = _histograms({"all": train}, schema, plan.epsilon, rng)
    encoder = FeatureEncoder.from_histograms(schema, hist)
    model = TabularDiffusion(encoder, plan.config, seed=seed)
    batch = min(plan.config.batch_size, len(train))
    hook = _privacy(plan, len(train), batch, plan.steps)
    train_local(model, encoder.encode(train), encoder.encode_condition(train),
                steps=plan.steps, rng=rng, privacy=hook)
    seconds = clock() - start
    return Fitted(_sample(model, n_synthetic, seed), seconds, _spent(plan.epsilon, [hook]),
                  _raked(model, n_synthetic, seed, hist, plan.rake),
                  _calibrated(model, n_synthetic, seed, plan.rake), model, hist)


def fit_federated(
    sites: Mapping[str, pd.DataFrame], schema: DatasetSchema, plan: Training, *,
    n_synthetic: int, seed: int, clock: Clock = time.perf_counter,
) -> Fitted:
    """FedAvg over the hospitals, simulated in process (see the module docstring)."""
    rng = np.random.default_rng(seed)
    start = clock()
    hist = _histograms(sites, schema, plan.epsilon, rng)
    encoder = FeatureEncoder.from_histograms(schema, hist)
    n_total = sum(len(f) for f in sites.values())
    base = dataclasses.replace(plan.config, lr_anneal=False)
    server = TabularDiffusion(encoder, base, seed=seed)
    per_round = max(1, plan.steps // plan.rounds)
    locals_, hooks, data = [], [], []
    for i, frame in enumerate(sites.values()):
        batch = site_batch(plan.config.batch_size, len(frame), n_total)
        locals_.append(TabularDiffusion(
            encoder, dataclasses.replace(base, batch_size=batch), seed=seed + 1 + i))
        hooks.append(_privacy(plan, len(frame), batch, per_round * plan.rounds))
        data.append((encoder.encode(frame), encoder.encode_condition(frame), len(frame)))
    params = server.flat_parameters()
    for r in range(plan.rounds):
        lr = plan.config.lr * (1.0 - r / plan.rounds)  # the server's linear decay
        updated = []
        for local, hook, (x, y, _) in zip(locals_, hooks, data, strict=True):
            local.config = dataclasses.replace(local.config, lr=lr)
            local.load_flat_parameters(params)
            train_local(local, x, y, steps=per_round, rng=rng, privacy=hook)
            updated.append(local.flat_parameters())
        params = fedavg_step(params, updated, [float(n) for _, _, n in data])
    server.load_flat_parameters(params)
    seconds = clock() - start
    return Fitted(_sample(server, n_synthetic, seed), seconds, _spent(plan.epsilon, hooks),
                  _raked(server, n_synthetic, seed, hist, plan.rake),
                  _calibrated(server, n_synthetic, seed, plan.rake), server, hist)


def fit_sdv(
    kind: str, train: pd.DataFrame, sdtypes: Mapping[str, str], *, n_synthetic: int, seed: int,
    epochs: int, clock: Clock = time.perf_counter,
) -> Fitted:
    """SDV's ``GaussianCopulaSynthesizer`` (``kind="copula"``) or ``CTGANSynthesizer``.

    Raises:
        ImportError: If SDV is not installed (the caller marks the row).
    """
    import torch
    from sdv.metadata import Metadata
    from sdv.single_table import CTGANSynthesizer, GaussianCopulaSynthesizer

    metadata = Metadata.load_from_dict(
        {"tables": {"heart": {"columns": {c: {"sdtype": t} for c, t in sdtypes.items()}}}}
    )
    np.random.seed(seed)  # SDV draws from the global generators
    torch.manual_seed(seed)
    start = clock()
    if kind == "copula":
        synthesizer = GaussianCopulaSynthesizer(metadata)
    else:
        synthesizer = CTGANSynthesizer(metadata, epochs=epochs)
    synthesizer.fit({"heart": train})
    seconds = clock() - start
    sampled = synthesizer.sample(n_synthetic)
    frame = sampled["heart"] if isinstance(sampled, dict) else sampled
    return Fitted(frame.reset_index(drop=True), seconds, None)

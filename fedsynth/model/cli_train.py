"""``fedsynth train DATA --schema S [--epsilon E] [--steps N] --out MODEL``: one site or baseline.

Without ``--epsilon`` the model (and the histograms that fit its normalization) are NOT private; the
command says so loudly. With it, ``(epsilon, delta)`` covers both releases in one RDP accountant:
the Gaussian histograms (noise multiplier ``--hist-noise``, default 16 / epsilon;
:func:`fedsynth.data.preprocess.accounted_histograms`) and DP-SGD (``fedsynth.privacy``); the
private model is :data:`fedsynth.model.config.DP_CONFIG` (smaller, fewer diffusion steps) trained
with noise multiplicity ``--noise-multiplicity``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
from rich.console import Console

from fedsynth.data.encoder import FeatureEncoder
from fedsynth.data.preprocess import (
    accounted_histograms,
    default_histogram_noise,
    site_histograms,
)
from fedsynth.data.schema import DatasetSchema
from fedsynth.data.validate import load_site_file
from fedsynth.errors import ConfigError
from fedsynth.model.config import DEFAULT_NOISE_MULTIPLICITY, DP_CONFIG, DiffusionConfig
from fedsynth.model.tabddpm import TabularDiffusion
from fedsynth.model.train import OpacusPrivacy, train_local

__all__ = ["configure", "run"]

logger = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``fedsynth train``."""
    parser.add_argument("data", type=Path, help="site data (.csv or .parquet)")
    parser.add_argument("--schema", type=Path, required=True, help="dataset schema JSON")
    parser.add_argument("--out", type=Path, required=True, help="model file to write")
    parser.add_argument(
        "--epsilon", type=float, help="budget epsilon, histograms + DP-SGD (omit: NOT private)"
    )
    parser.add_argument("--delta", type=float, default=1e-5, help="DP delta (default 1e-5)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="DP clipping norm")
    parser.add_argument(
        "--noise-multiplicity", type=int, default=DEFAULT_NOISE_MULTIPLICITY,
        help=f"DP: timestep/noise draws averaged per row before clipping "
        f"(default {DEFAULT_NOISE_MULTIPLICITY})",
    )
    parser.add_argument(
        "--hist-noise", type=float,
        help="noise multiplier of the Gaussian histograms (default 16 / epsilon)",
    )
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per step")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")


def run(args: argparse.Namespace) -> int:
    """Validate, fit the encoder from this site's DP histograms, train, save."""
    console = Console(stderr=True)
    schema = DatasetSchema.load(args.schema)
    df = load_site_file(args.data, schema)
    rng = np.random.default_rng(args.seed)
    private = args.epsilon is not None
    if not private:
        console.print("[bold red]WARNING[/]: training WITHOUT differential privacy (no --epsilon)")
    hist_noise = None
    if private:
        hist_noise = args.hist_noise or default_histogram_noise(args.epsilon)
        hist = accounted_histograms(df, schema, hist_noise, rng)
    else:
        hist = site_histograms(df, schema, math.inf, rng)
    encoder = FeatureEncoder.from_histograms(schema, hist)
    base = DP_CONFIG if private else DiffusionConfig()
    config = dataclasses.replace(base, batch_size=args.batch_size)
    model = TabularDiffusion(encoder, config, seed=args.seed)
    privacy = None
    if hist_noise is not None:
        privacy = _privacy(args, len(df), config.batch_size, hist_noise)
    report = train_local(
        model,
        encoder.encode(df),
        encoder.encode_condition(df),
        steps=args.steps,
        rng=rng,
        privacy=privacy,
        progress=True,
    )
    model.save(args.out)
    eps = "not private" if report.epsilon is None else f"epsilon {report.epsilon:.3f}"
    console.print(
        f"trained {report.steps} steps on {report.n_rows} rows in {report.seconds:.1f} s, "
        f"final loss {report.final_loss:.4f}, {eps}; model written to {args.out}"
    )
    return 0


def _privacy(
    args: argparse.Namespace, n_rows: int, batch_size: int, hist_noise: float
) -> OpacusPrivacy:
    """DP-SGD whose accountant already holds the histogram release (one budget for both)."""
    try:
        from fedsynth.privacy import DPConfig, make_accountant, noise_for_budget
    except ImportError as exc:
        raise ConfigError(f"--epsilon needs fedsynth.privacy, which is unavailable: {exc}") from exc
    dp = DPConfig(epsilon=args.epsilon, delta=args.delta, max_grad_norm=args.max_grad_norm)
    hist_step = (hist_noise, 1.0, 1)
    sample_rate = 1.0 / math.ceil(n_rows / batch_size)  # what Opacus's Poisson loader uses
    sigma = noise_for_budget(args.epsilon, args.delta, sample_rate, args.steps, prior=[hist_step])
    logger.info("DP-SGD noise multiplier %.3f for %d steps", sigma, args.steps)
    accountant = make_accountant("rdp")
    accountant.step(noise_multiplier=hist_noise, sample_rate=1.0, steps=1)
    return OpacusPrivacy(
        noise_multiplier=sigma,
        max_grad_norm=args.max_grad_norm,
        accountant=accountant,
        delta=args.delta,
        budget=dp.budget,
        noise_multiplicity=args.noise_multiplicity,
    )

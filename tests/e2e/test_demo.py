"""A shortened `fedsynth demo` end to end: processes, broker, files, and no process left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from fedsynth.data.schema import DatasetSchema
from fedsynth.data.validate import validate_frame
from topics.discovery import pid_alive


@pytest.mark.slow
def test_quick_demo_produces_valid_synthetic_rows(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedsynth.cli", "demo", "--quick", "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fedsynth demo summary" in proc.stdout
    # the run's audit trail, read back by `fedsynth audit`: every version's event, linked
    assert "audit trail" in proc.stdout and "holds:" in proc.stdout, proc.stdout[-3000:]
    assert "The trail holds" in (run_dir / "logs" / "audit.txt").read_text()
    (parquet,) = (run_dir / "gateway" / "releases").glob("*.parquet")
    rows = pd.read_parquet(parquet)
    assert len(rows) == 200
    schema = DatasetSchema.load_named("heart_disease_uci")
    assert set(rows.columns) == {c.name for c in schema.modelled_columns}
    validate_frame(rows, schema)  # raises, naming row and column, if any value breaks the schema
    con = duckdb.connect(str(run_dir / "gateway" / "releases.duckdb"), read_only=True)
    (n, version, contributors) = con.execute(
        "SELECT n_rows, model_version, contributors FROM releases"
    ).fetchone()
    assert (n, version) == (200, 2)
    assert sorted(json.loads(contributors)) == [
        "Cleveland",
        "Hungary",
        "Switzerland",
        "VA_Long_Beach",
    ]
    for site in ("Cleveland", "Hungary", "Switzerland", "VA_Long_Beach"):
        # the Gaussian histograms were charged first, in the same accountant as DP-SGD
        ledger = json.loads((run_dir / "sites" / site / "ledger.json").read_text())
        history = ledger["accountant"]["history"]
        assert history[0] == [2.0, 1.0, 1], history  # noise multiplier 16 / epsilon 8
        assert len(history) >= 2  # then the DP-SGD rounds
        # the released counts are kept for a restart before version 0 (agents/site.py)
        kept = np.load(run_dir / "sites" / site / "histograms.npy")
        assert kept.dtype == np.float32 and kept.ndim == 1 and np.isfinite(kept).all()
    spans = [json.loads(line) for line in (run_dir / "traces.jsonl").read_text().splitlines()]
    services_by_trace: dict[str, set[str]] = {}
    for span in spans:
        services_by_trace.setdefault(span["trace_id"], set()).add(span["service"])
    rounds = [s for s in spans if s["name"] == "fedsynth.round"]
    assert len(rounds) >= 2
    # a round is one trace: the aggregator's round span and the agents' local rounds share it
    assert any(len(services_by_trace[r["trace_id"]]) >= 3 for r in rounds), services_by_trace
    leftovers = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout
    assert leftovers.strip() == "", leftovers


def test_interrupted_demo_stops_every_process(tmp_path: Path) -> None:
    import signal
    import time

    def brokers(parent: int) -> set[int]:
        """The Tansu brokers started by ``parent`` (other tests may run brokers beside this one)."""
        found = subprocess.run(
            ["pgrep", "-P", str(parent), "-f", "broker --listener-url"],
            capture_output=True,
            text=True,
        )
        return {int(pid) for pid in found.stdout.split()}

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsynth.cli", "demo", "--quick", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "logs" / "agent-Cleveland.log").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        time.sleep(3)  # the services are starting up
        children = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True)
        assert len(children.stdout.split()) >= 6  # aggregator, gateway, 4 agents
        own = brokers(proc.pid)
        assert own  # the demo's own broker is up
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    leftovers = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout
    assert not [pid for pid in own if pid_alive(pid)], own

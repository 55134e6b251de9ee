"""bench.aggregate --quick on the session's embedded broker: both consumers run, in plain and in
secure mode (the secure ingest must make the in-memory play's model bit for bit), RESULT printed."""

from __future__ import annotations

import re

import pytest

from bench.aggregate import main

RESULT = re.compile(r"^RESULT ingest_vs_bare=(\d+\.\d\d) target=0\.8 met=(yes|no)$")


def test_quick_run_prints_tables_and_result(
    bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--quick", "--bootstrap", bootstrap]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    match = RESULT.match(lines[-1])
    assert match is not None, lines[-1]
    ratio, met = float(match.group(1)), match.group(2)
    assert 0.0 < ratio < 10.0
    assert met == ("yes" if ratio >= 0.8 else "no")
    text = "\n".join(lines)
    assert "4 updates x 100,000 params" in text
    for part in (
        "bare aiokafka",
        "aggregator ingest",
        "signature checks",
        "one thread",
        "prepare on workers",
        "engine step",
        "raw numpy sum",
        "secure mode: 2 masked updates x 100,000 params in 1 cohort(s)",
        "secure ingest",
        "CRC check off",
        "chunk signatures, Avro; join, payload",
        "the payload comes joined and verified",
        "masked sum (coordinator",
        "unmasking (coordinator",
        "payload signature from the digest its chunks carry",
        "raw numpy sum of the same masked words",
        "CPU per update, ms (fastest run of each kind",
        "secure: aggregator ingest",
    ):
        assert part in text
    both = re.search(r"plain (\d+\.\d\d)x, secure (\d+\.\d\d)x", text)
    assert both is not None, text
    assert ratio == min(float(both.group(1)), float(both.group(2)))
    assert "n/a" in text  # the session's broker is not this process's to watch: no bound


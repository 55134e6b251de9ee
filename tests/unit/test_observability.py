"""Trace context in Kafka headers, the JSON-lines span exporter, telemetry set-up, audit chain."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, get_current_span

from observability.audit import GENESIS_HASH, AuditChain, AuditEvent, event_hash, verify_chain
from observability.jsonl import JsonLinesSpanExporter
from observability.propagation import extract_context, inject_headers, traceparent_of

ROOT = Path(__file__).resolve().parents[2]


def _provider(exporter: object, service: str = "test-svc") -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}),
                              shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[arg-type]
    return provider


# --- propagation -------------------------------------------------------------------------------


def test_traceparent_survives_inject_and_extract() -> None:
    memory = InMemorySpanExporter()
    tracer = _provider(memory).get_tracer("t")
    headers: list[tuple[str, bytes]] = [("message_id", b"m1"), ("traceparent", b"stale")]
    with tracer.start_as_current_span("agent.send", kind=SpanKind.PRODUCER) as producer_span:
        inject_headers(headers)
    received = tuple(headers)  # what aiokafka hands the consumer
    with tracer.start_as_current_span("aggregator.apply", context=extract_context(received),
                                      kind=SpanKind.CONSUMER):
        consumer_ctx = get_current_span().get_span_context()
    sent = producer_span.get_span_context()
    assert consumer_ctx.trace_id == sent.trace_id
    assert consumer_ctx.span_id != sent.span_id
    child = [s for s in memory.get_finished_spans() if s.name == "aggregator.apply"][0]
    assert child.parent is not None and child.parent.span_id == sent.span_id
    assert [k for k, _ in headers] == ["message_id", "traceparent"]  # stale one replaced
    flags = f"{int(sent.trace_flags):02x}"
    assert traceparent_of(received) == f"00-{sent.trace_id:032x}-{sent.span_id:016x}-{flags}"
    assert int(sent.trace_flags) & 1  # sampled


def test_no_span_no_header_and_malformed_header_starts_new_trace() -> None:
    headers: list[tuple[str, bytes]] = []
    assert inject_headers(headers) == []
    memory = InMemorySpanExporter()
    tracer = _provider(memory).get_tracer("t")
    bad = [("traceparent", b"00-zz-not-a-trace-01")]
    with tracer.start_as_current_span("c", context=extract_context(bad)):
        pass
    with tracer.start_as_current_span("d", context=extract_context(None)):
        pass
    assert all(s.parent is None for s in memory.get_finished_spans())


# --- JSON-lines exporter -----------------------------------------------------------------------


def test_jsonl_exporter_writes_parseable_spans(tmp_path: Path) -> None:
    path = tmp_path / "run" / "traces.jsonl"
    exporter = JsonLinesSpanExporter(path)
    tracer = _provider(exporter, "fedsynth-agent-Cleveland").get_tracer("t")
    with tracer.start_as_current_span("round", attributes={"round": 3}) as parent:
        with tracer.start_as_current_span("train", attributes={"shape": (2, 3), "site": "C"}):
            pass
    lines = path.read_text().splitlines()
    spans = [json.loads(line) for line in lines]
    assert [s["name"] for s in spans] == ["train", "round"]
    train, round_ = spans
    assert train["trace_id"] == round_["trace_id"] == f"{parent.get_span_context().trace_id:032x}"
    assert train["parent_span_id"] == round_["span_id"] and round_["parent_span_id"] is None
    assert len(train["span_id"]) == 16 and train["attributes"] == {"shape": [2, 3], "site": "C"}
    assert round_["attributes"] == {"round": 3}
    assert 0 < round_["start"] <= train["start"] <= train["end"] <= round_["end"]
    assert {s["service"] for s in spans} == {"fedsynth-agent-Cleveland"}
    exporter.shutdown()
    exporter.shutdown()
    assert exporter.export([]).name == "FAILURE"


# --- setup_telemetry (own process: OpenTelemetry's globals can be set once) --------------------

_SETUP = """
import sys
from pathlib import Path
from observability.telemetry import setup_telemetry
run = Path(sys.argv[1])
t = setup_telemetry("svc-a", run)
assert setup_telemetry("svc-b", run / "other") is t
with t.tracer().start_as_current_span("hello"):
    t.meter().create_counter("fedsynth.bytes_sent").add(5)
print(t.otlp_endpoint)
t.shutdown()
"""


class _Collector(BaseHTTPRequestHandler):
    paths: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).paths.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def _run_setup(run_dir: Path, endpoint: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    done = subprocess.run([sys.executable, "-c", _SETUP, str(run_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_setup_telemetry_files_by_default(tmp_path: Path) -> None:
    assert _run_setup(tmp_path, None) == "None"
    spans = [json.loads(line) for line in (tmp_path / "traces.jsonl").read_text().splitlines()]
    assert [(s["name"], s["service"]) for s in spans] == [("hello", "svc-a")]
    metrics_text = (tmp_path / "metrics.jsonl").read_text()
    assert "fedsynth.bytes_sent" in metrics_text
    assert not (tmp_path / "other").exists()  # second call returned the first set-up


def test_setup_telemetry_sends_otlp_when_endpoint_set(tmp_path: Path) -> None:
    _Collector.paths = []
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}"
        assert _run_setup(tmp_path, endpoint) == endpoint
    finally:
        server.shutdown()
        server.server_close()
    assert "/v1/traces" in _Collector.paths and "/v1/metrics" in _Collector.paths
    assert (tmp_path / "traces.jsonl").read_text().count("\n") == 1  # file kept as well


# --- audit chain --------------------------------------------------------------------------------


def _chain(n: int = 5) -> list[AuditEvent]:
    ticks = iter(range(1000, 2000))
    chain = AuditChain(clock=lambda: float(next(ticks)))
    return [chain.append("aggregator", "round.applied", {"version": i, "sites": ["a", "b"]})
            for i in range(n)]


def test_chain_links_and_verifies() -> None:
    events = _chain()
    assert events[0].prev_hash == GENESIS_HASH and events[0].seq == 0
    assert all(b.prev_hash == a.hash for a, b in zip(events, events[1:], strict=False))
    assert events[2].at == 1002.0
    result = verify_chain(events)
    assert (result.ok, result.checked, result.bad_index) == (True, 5, None)
    as_json = [json.loads(json.dumps(e.to_dict())) for e in events]
    assert verify_chain(as_json).ok


@pytest.mark.parametrize(
    ("tamper", "bad_index"),
    [
        ("edit", 2),
        ("drop", 2),
        ("swap", 1),
        ("rehash", 3),
    ],
)
def test_chain_detects_tampering(tamper: str, bad_index: int) -> None:
    events = [e.to_dict() for e in _chain()]
    if tamper == "edit":
        events[2]["details"]["version"] = 99
    elif tamper == "drop":
        del events[2]
    elif tamper == "swap":
        events[1], events[2] = events[2], events[1]
    else:  # edit event 2 and recompute its own hash: the link to event 3 breaks
        events[2]["details"]["version"] = 99
        body = AuditEvent.from_dict(events[2]).body()
        events[2]["hash"] = event_hash(events[2]["prev_hash"], body)
    result = verify_chain(events)
    assert not result.ok and result.bad_index == bad_index, result


def test_chain_resumes_from_head_and_rejects_nan() -> None:
    events = _chain(3)
    more = AuditChain(clock=lambda: 5.0, head=events[-1])
    events.append(more.append("gateway", "release.created", {"rows": 1000}))
    assert events[-1].seq == 3 and verify_chain(events).ok
    assert verify_chain(events[1:], start_hash=events[0].hash).ok
    assert not verify_chain([{"seq": 0}]).ok
    with pytest.raises(ValueError):
        more.append("gateway", "bad", {"x": math.nan})
    assert more.head_hash == events[-1].hash

"""OpenTelemetry set-up for a fedsynth process: one TracerProvider and one MeterProvider, once.

By default spans go as JSON lines to ``<run_dir>/traces.jsonl`` (see :mod:`observability.jsonl`)
and metrics to ``<run_dir>/metrics.jsonl`` (one OTLP-JSON document per export). When an OTLP
endpoint is given, or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, spans and metrics are also sent
there with the OTLP/HTTP exporters; the local files are kept either way so a run can always be
inspected without a collector.

OpenTelemetry allows the global providers to be set only once per process, so
:func:`setup_telemetry` is idempotent: a second call returns the first :class:`Telemetry` (and
logs a warning when it asked for another service or run directory).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import IO

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

from observability.jsonl import JsonLinesSpanExporter

__all__ = ["OTLP_ENV", "Telemetry", "setup_telemetry"]

log = logging.getLogger(__name__)

OTLP_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_FILE = "traces.jsonl"
METRICS_FILE = "metrics.jsonl"
_METRIC_INTERVAL_MS = 10_000


class Telemetry:
    """The configured providers of this process, and where they write.

    Attributes:
        service_name: ``service.name`` of every span and metric.
        run_dir: The run directory.
        traces_path: The JSON-lines span file.
        otlp_endpoint: The OTLP/HTTP endpoint in use, or None.
        tracer_provider: The global TracerProvider.
        meter_provider: The global MeterProvider.
    """

    __slots__ = ("_metrics_file", "meter_provider", "otlp_endpoint", "run_dir", "service_name",
                 "tracer_provider", "traces_path")

    def __init__(self, service_name: str, run_dir: Path, otlp_endpoint: str | None,
                 tracer_provider: TracerProvider, meter_provider: MeterProvider,
                 metrics_file: IO[str]) -> None:
        self.service_name = service_name
        self.run_dir = run_dir
        self.traces_path = run_dir / TRACES_FILE
        self.otlp_endpoint = otlp_endpoint
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self._metrics_file = metrics_file

    def tracer(self, name: str = "fedsynth") -> trace.Tracer:
        """A tracer from this process's provider."""
        return self.tracer_provider.get_tracer(name)

    def meter(self, name: str = "fedsynth") -> metrics.Meter:
        """A meter from this process's provider."""
        return self.meter_provider.get_meter(name)

    def flush(self) -> None:
        """Export everything pending now (spans and metrics)."""
        self.tracer_provider.force_flush()
        self.meter_provider.force_flush()

    def shutdown(self) -> None:
        """Flush and close the exporters (also done at interpreter exit). Safe to call twice."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        if not self._metrics_file.closed:
            self._metrics_file.close()


_lock = threading.Lock()
_active: list[Telemetry] = []  # at most one: the providers OpenTelemetry holds globally


def setup_telemetry(
    service_name: str, run_dir: Path, *, otlp_endpoint: str | None = None
) -> Telemetry:
    """Configure tracing and metrics for this process (once; later calls return the same).

    Args:
        service_name: ``service.name`` (e.g. ``fedsynth-agent-Cleveland``).
        run_dir: Directory of the run; ``traces.jsonl`` and ``metrics.jsonl`` are written there.
        otlp_endpoint: OTLP/HTTP base URL (e.g. ``http://collector:4318``); defaults to
            ``$OTEL_EXPORTER_OTLP_ENDPOINT``; None and unset means local files only.

    Returns:
        The process's :class:`Telemetry`.
    """
    with _lock:
        if _active:
            existing = _active[0]
            if (existing.service_name, existing.run_dir) != (service_name, Path(run_dir)):
                log.warning("telemetry already set up for %s in %s; keeping it",
                            existing.service_name, existing.run_dir)
            return existing
        endpoint = otlp_endpoint or os.environ.get(OTLP_ENV) or None
        telemetry = _build(service_name, Path(run_dir), endpoint)
        trace.set_tracer_provider(telemetry.tracer_provider)
        metrics.set_meter_provider(telemetry.meter_provider)
        _active.append(telemetry)
        log.info("telemetry for %s: spans to %s%s", service_name, telemetry.traces_path,
                 f" and OTLP {endpoint}" if endpoint else "")
        return telemetry


def _build(service_name: str, run_dir: Path, endpoint: str | None) -> Telemetry:
    run_dir.mkdir(parents=True, exist_ok=True)
    resource = Resource.create({"service.name": service_name})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(JsonLinesSpanExporter(run_dir / TRACES_FILE))
    )
    metrics_file = (run_dir / METRICS_FILE).open("a", encoding="utf-8")
    readers: list[MetricReader] = [PeriodicExportingMetricReader(
        ConsoleMetricExporter(out=metrics_file,
                              formatter=lambda data: data.to_json(indent=None) + "\n"),
        export_interval_millis=_METRIC_INTERVAL_MS,
    )]
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = endpoint.rstrip("/")
        tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces"))
        )
        readers.append(PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{base}/v1/metrics"),
            export_interval_millis=_METRIC_INTERVAL_MS,
        ))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return Telemetry(service_name, run_dir, endpoint, tracer_provider, meter_provider,
                     metrics_file)

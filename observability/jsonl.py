"""An OpenTelemetry span exporter that appends one JSON object per span to a file.

The default trace sink of a fedsynth run: ``<run_dir>/traces.jsonl``, readable with any JSON tool
and by the demo summary, with no collector needed. Every process of a run (aggregator, agents,
gateway) may append to the same file: each span is written with one ``write`` on a descriptor
opened with ``O_APPEND``, so lines from different processes do not interleave.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["JsonLinesSpanExporter", "span_to_dict"]

log = logging.getLogger(__name__)


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    return value


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """The JSON form of one finished span.

    Keys: ``trace_id`` (32 hex), ``span_id`` (16 hex), ``parent_span_id`` (16 hex or None),
    ``name``, ``kind``, ``start`` and ``end`` (nanoseconds since the epoch), ``status``,
    ``attributes``, ``service`` (the resource's ``service.name``).
    """
    context = span.get_span_context()
    parent = span.parent
    attributes: Mapping[str, Any] = span.attributes or {}
    return {
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {k: _json_value(v) for k, v in attributes.items()},
        "service": span.resource.attributes.get("service.name"),
    }


class JsonLinesSpanExporter(SpanExporter):
    """Writes each exported span as one line of JSON to ``path`` (appending).

    Args:
        path: The file to append to; its directory is created.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Append ``spans``; returns FAILURE after shutdown or on an I/O error."""
        data = "".join(json.dumps(span_to_dict(s), default=str) + "\n" for s in spans).encode()
        with self._lock:
            if self._fd is None:
                return SpanExportResult.FAILURE
            try:
                os.write(self._fd, data)
            except OSError as exc:
                log.warning("cannot write spans to %s: %s", self.path, exc)
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered: always True."""
        return True

    def shutdown(self) -> None:
        """Close the file; later exports fail. Safe to call twice."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

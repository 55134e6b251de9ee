"""W3C trace context (``traceparent``, ``tracestate``) in Kafka record headers.

aiokafka headers are a list of ``(str, bytes)`` pairs. The producer side calls
:func:`inject_headers` inside its span; the consumer side calls :func:`extract_context` and starts
its span with that context as parent, so an agent's update and the aggregator's handling of it
belong to one trace (https://www.w3.org/TR/trace-context/).
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["TRACE_HEADERS", "extract_context", "inject_headers", "traceparent_of"]

TRACE_HEADERS = ("traceparent", "tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()

Headers = Iterable[tuple[str, bytes | None]]


def inject_headers(
    headers: list[tuple[str, bytes]], context: Context | None = None
) -> list[tuple[str, bytes]]:
    """Add the current (or given) trace context to ``headers``, in place.

    Any ``traceparent``/``tracestate`` already present is replaced. Outside a recording span
    nothing is added.

    Args:
        headers: The record's header list; modified in place.
        context: The context to propagate; default the current one.

    Returns:
        ``headers`` itself, for chaining.
    """
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    if carrier:
        headers[:] = [(k, v) for k, v in headers if k not in TRACE_HEADERS]
        headers.extend((k, v.encode("ascii")) for k, v in carrier.items())
    return headers


def extract_context(headers: Headers | None) -> Context:
    """The trace context carried by a record's headers (an empty context if none or malformed).

    Args:
        headers: ``ConsumerRecord.headers`` (a sequence of ``(str, bytes)``) or None.

    Returns:
        A context to pass as ``context=`` when starting the consumer's span.
    """
    carrier: dict[str, str] = {}
    for key, value in headers or ():
        name = key.lower()
        if name in TRACE_HEADERS and value is not None:
            carrier[name] = value.decode("ascii", errors="replace")
    return _PROPAGATOR.extract(carrier)


def traceparent_of(headers: Headers | None) -> str | None:
    """The raw ``traceparent`` header value, or None."""
    for key, value in headers or ():
        if key.lower() == "traceparent" and value is not None:
            return value.decode("ascii", errors="replace")
    return None

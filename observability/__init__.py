"""Observability for fedsynth: OpenTelemetry set-up, trace context in Kafka headers, audit chain.

Imports nothing of ours (ARCHITECTURE.md): the adapters (agents, aggregator, gateway) call it.
"""

from observability.audit import AuditChain, AuditEvent, ChainVerification, verify_chain
from observability.jsonl import JsonLinesSpanExporter
from observability.propagation import extract_context, inject_headers, traceparent_of
from observability.telemetry import Telemetry, setup_telemetry

__all__ = [
    "AuditChain",
    "AuditEvent",
    "ChainVerification",
    "JsonLinesSpanExporter",
    "Telemetry",
    "extract_context",
    "inject_headers",
    "setup_telemetry",
    "traceparent_of",
    "verify_chain",
]

"""A minimal, dependency-free Kafka liveness probe: one Metadata (v0) request over a socket.

Used to decide when a freshly started broker is ready. It needs no event loop and no client
library, so it can be called from synchronous code (``EmbeddedBroker.start``) and from a thread.
The wire format is the public Kafka protocol: a 4-byte big-endian size, then the request header
(api_key, api_version, correlation_id, client_id) and the body; Metadata v0 with an empty topic
array asks for every topic, and its response starts with the array of brokers.
"""

from __future__ import annotations

import socket
import struct

__all__ = ["metadata_broker_count"]

_METADATA_API_KEY = 3
_CLIENT_ID = b"fedsynth-probe"
_CORRELATION_ID = 0x0FED


def _metadata_request() -> bytes:
    header = struct.pack(">hhih", _METADATA_API_KEY, 0, _CORRELATION_ID, len(_CLIENT_ID))
    body = struct.pack(">i", 0)  # empty topic array: all topics
    payload = header + _CLIENT_ID + body
    return struct.pack(">i", len(payload)) + payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    while n > 0:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def metadata_broker_count(host: str, port: int, timeout_s: float = 1.0) -> int:
    """Send one Metadata v0 request and return how many brokers the answer lists.

    Args:
        host: Broker host.
        port: Broker port.
        timeout_s: Connect and read timeout.

    Returns:
        The number of brokers in the metadata response (>= 1 for a working broker).

    Raises:
        OSError: If the broker cannot be reached, times out, or answers with something that is
            not a Metadata response (ConnectionError, a subclass of OSError).
    """
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(_metadata_request())
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if size < 8 or size > 64 * 1024 * 1024:
            raise ConnectionError(f"implausible response size {size}")
        response = _recv_exact(sock, size)
    correlation_id, brokers = struct.unpack_from(">ii", response, 0)
    if correlation_id != _CORRELATION_ID:
        raise ConnectionError(f"unexpected correlation id {correlation_id}")
    return int(brokers)

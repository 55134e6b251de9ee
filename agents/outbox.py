"""On-disk outbox: what a site agent has decided to send survives a crash.

Every outbound Kafka message is first written to the outbox folder (one file per message, written
to a temporary name, fsynced and renamed), then sent, then removed. After a crash or a lost
connection the agent sends what is still there, byte for byte, so the aggregator sees the same
``message_id`` again and drops the duplicate (exactly-once by idempotent consumers, since the
embedded broker cannot run idempotent producers: see ARCHITECTURE.md).

File layout: ``<seq:012d>-<message_id>.msg`` holding a 4-byte big-endian length, a JSON header
(topic, key, headers) and the value bytes. The sequence number keeps sending order.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from fedsynth.durable import write_atomic

__all__ = ["Outbox", "OutboxMessage"]

_LEN = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One message waiting to be sent."""

    message_id: str
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class Outbox:
    """A folder of messages not yet acknowledged by the broker."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._seq = max((int(p.name.split("-", 1)[0]) for p in self._files()), default=0)

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("*.msg"))

    def put(self, msg: OutboxMessage) -> None:
        """Persist ``msg`` durably before it is sent."""
        self._seq += 1
        head = json.dumps(
            {
                "message_id": msg.message_id,
                "topic": msg.topic,
                "key": msg.key.hex() if msg.key is not None else None,
                "headers": [[k, v.hex()] for k, v in msg.headers],
            }
        ).encode()
        path = self.folder / f"{self._seq:012d}-{msg.message_id}.msg"
        write_atomic(path, _LEN.pack(len(head)) + head + msg.value)

    def pending(self) -> list[OutboxMessage]:
        """Messages not yet acknowledged, in the order they were put."""
        return [self._read(p) for p in self._files()]

    def ack(self, message_id: str) -> None:
        """Forget ``message_id`` once the broker has acknowledged it."""
        for path in self.folder.glob(f"*-{message_id}.msg"):
            path.unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._files())

    @staticmethod
    def _read(path: Path) -> OutboxMessage:
        raw = path.read_bytes()
        (n,) = _LEN.unpack_from(raw)
        head = json.loads(raw[_LEN.size : _LEN.size + n])
        return OutboxMessage(
            message_id=head["message_id"],
            topic=head["topic"],
            key=bytes.fromhex(head["key"]) if head["key"] is not None else None,
            value=raw[_LEN.size + n :],
            headers=tuple((k, bytes.fromhex(v)) for k, v in head["headers"]),
        )


"""Atomic, encrypted checkpoints of the aggregator's durable state.

A checkpoint holds the :class:`~aggregator.engine.EngineState`, the consumer offsets (topic,
partition -> next offset) and arbitrary JSON ``extra``. Arrays are written with ``np.save`` (no
pickle), everything else as JSON with sorted sets, so the same state always gives the same
plaintext.

On disk: ``MAGIC || nonce (12 bytes) || AES-256-GCM(plaintext)`` with associated data
``b"fedsynth-checkpoint-v1" + federation_id``, so a checkpoint of another federation does not load.
Writes go to a temporary file in the same directory, are fsynced, ``os.replace``-d over the old
file and the directory is fsynced: a crash at any point leaves either the old or the new checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aggregator.engine import EngineState, VersionRecord
from aggregator.strategies.base import ClientUpdate, StrategyState, frozen_array
from fedsynth.errors import ConfigError, FedSynthError

__all__ = [
    "ASSOCIATED_DATA_PREFIX",
    "Checkpoint",
    "CheckpointError",
    "KEY_BYTES",
    "decode_checkpoint",
    "encode_checkpoint",
    "load_checkpoint",
    "new_key",
    "save_checkpoint",
]

MAGIC = b"FSCKPT1\n"
ASSOCIATED_DATA_PREFIX = b"fedsynth-checkpoint-v1"
KEY_BYTES = 32
NONCE_BYTES = 12
_LEN = struct.Struct(">Q")


class CheckpointError(FedSynthError):
    """A checkpoint exists but cannot be read: wrong key, tampering, or a foreign format."""


@dataclass(frozen=True, slots=True, eq=False)
class Checkpoint:
    """What is saved and restored together.

    Attributes:
        state: The engine state.
        offsets: ``(topic, partition) -> next offset to consume``.
        extra: Any JSON-serialisable settings (strategy name, run id, ...).
    """

    state: EngineState
    offsets: Mapping[tuple[str, int], int] = field(default_factory=lambda: MappingProxyType({}))
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def new_key() -> bytes:
    """A fresh random 32-byte AES-256 key (from ``os.urandom``)."""
    return os.urandom(KEY_BYTES)


# ----------------------------------------------------------------------------- plaintext
class _Arrays:
    """Collects arrays while a document is built, replacing each by ``{"$array": index}``."""

    def __init__(self) -> None:
        self.items: list[np.ndarray] = []

    def ref(self, arr: np.ndarray) -> dict[str, int]:
        self.items.append(np.ascontiguousarray(arr))
        return {"$array": len(self.items) - 1}


def _state_doc(state: EngineState, arrays: _Arrays) -> dict[str, Any]:
    strat = state.strategy_state
    buffer = [
        {
            "update_id": u.update_id,
            "site_id": u.site_id,
            "base_version": u.base_version,
            "n_samples": u.n_samples,
            "weight_hint": u.weight_hint,
            "delta": arrays.ref(u.delta),
        }
        for u in strat.buffer
    ]
    return {
        "model_version": state.model_version,
        "params": arrays.ref(state.params),
        "strategy": {
            "buffer": buffer,
            "slots": {k: arrays.ref(v) for k, v in sorted(strat.slots.items())},
            "counters": dict(sorted(strat.counters.items())),
        },
        "known_sites": sorted(state.known_sites),
        "seen": [[b, sorted(ids)] for b, ids in sorted(state.seen.items())],
        "applied_cohorts": sorted(state.applied_cohorts),
        "history": [[r.version, list(r.contributors), r.source] for r in state.history],
    }


def _state_from_doc(doc: Mapping[str, Any], arrays: list[np.ndarray]) -> EngineState:
    def arr(ref: Mapping[str, int]) -> np.ndarray:
        return frozen_array(arrays[ref["$array"]])

    strat = doc["strategy"]
    buffer = tuple(
        ClientUpdate(
            u["update_id"],
            u["site_id"],
            u["base_version"],
            u["n_samples"],
            arr(u["delta"]),
            u["weight_hint"],
        )
        for u in strat["buffer"]
    )
    return EngineState(
        model_version=doc["model_version"],
        params=arr(doc["params"]),
        strategy_state=StrategyState(
            buffer,
            MappingProxyType({k: arr(v) for k, v in strat["slots"].items()}),
            MappingProxyType(dict(strat["counters"])),
        ),
        known_sites=frozenset(doc["known_sites"]),
        seen=MappingProxyType({b: frozenset(ids) for b, ids in doc["seen"]}),
        applied_cohorts=frozenset(doc["applied_cohorts"]),
        history=tuple(VersionRecord(v, tuple(c), s) for v, c, s in doc["history"]),
    )


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """Serialise a checkpoint to deterministic plaintext bytes (before encryption)."""
    arrays = _Arrays()
    doc = {
        "format": 1,
        "engine": _state_doc(checkpoint.state, arrays),
        "offsets": sorted([t, p, o] for (t, p), o in checkpoint.offsets.items()),
        "extra": dict(checkpoint.extra),
    }
    header = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    parts = [_LEN.pack(len(header)), header, _LEN.pack(len(arrays.items))]
    for item in arrays.items:
        buf = io.BytesIO()
        np.save(buf, item, allow_pickle=False)
        parts += [_LEN.pack(buf.getbuffer().nbytes), buf.getvalue()]
    return b"".join(parts)


def _read_chunk(data: memoryview, pos: int) -> tuple[memoryview, int]:
    (size,) = _LEN.unpack_from(data, pos)
    start = pos + _LEN.size
    if start + size > len(data):
        raise CheckpointError("checkpoint plaintext is truncated")
    return data[start : start + size], start + size


def decode_checkpoint(plaintext: bytes) -> Checkpoint:
    """Inverse of :func:`encode_checkpoint`.

    Raises:
        CheckpointError: The bytes are not a checkpoint of a known format.
    """
    try:
        view = memoryview(plaintext)
        header, pos = _read_chunk(view, 0)
        doc = json.loads(bytes(header))
        (count,) = _LEN.unpack_from(view, pos)
        pos += _LEN.size
        arrays = []
        for _ in range(count):
            chunk, pos = _read_chunk(view, pos)
            arrays.append(np.load(io.BytesIO(bytes(chunk)), allow_pickle=False))
        if doc.get("format") != 1:
            raise CheckpointError(f"unknown checkpoint format {doc.get('format')!r}")
        offsets = {(t, int(p)): int(o) for t, p, o in doc["offsets"]}
        state = _state_from_doc(doc["engine"], arrays)
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, struct.error) as exc:
        raise CheckpointError(f"checkpoint is malformed: {exc}") from exc
    return Checkpoint(state, MappingProxyType(offsets), MappingProxyType(doc["extra"]))


# ----------------------------------------------------------------------------- crypto + disk
def _aead(key: bytes) -> AESGCM:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ConfigError(f"checkpoint key must be {KEY_BYTES} bytes")
    return AESGCM(key)


def _associated_data(federation_id: str) -> bytes:
    return ASSOCIATED_DATA_PREFIX + federation_id.encode("utf-8")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(
    path: str | os.PathLike[str], checkpoint: Checkpoint, key: bytes, federation_id: str
) -> None:
    """Encrypt and atomically write ``checkpoint`` to ``path``.

    Raises:
        ConfigError: The key is not 32 bytes.
        OSError: The file system refused the write (the old checkpoint is left intact).
    """
    target = Path(path)
    aead = _aead(key)
    nonce = os.urandom(NONCE_BYTES)
    sealed = aead.encrypt(nonce, encode_checkpoint(checkpoint), _associated_data(federation_id))
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(target, MAGIC + nonce + sealed)


def load_checkpoint(
    path: str | os.PathLike[str], key: bytes, federation_id: str
) -> Checkpoint | None:
    """Read and decrypt the checkpoint at ``path``.

    Returns:
        The checkpoint, or ``None`` when no file exists.

    Raises:
        ConfigError: The key is not 32 bytes.
        CheckpointError: Wrong key, wrong federation, tampered or foreign file.
    """
    aead = _aead(key)
    try:
        blob = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
        raise CheckpointError(f"{path} is not a fedsynth checkpoint")
    nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    try:
        plaintext = aead.decrypt(
            nonce, blob[len(MAGIC) + NONCE_BYTES :], _associated_data(federation_id)
        )
    except InvalidTag as exc:
        raise CheckpointError(
            f"{path}: authentication failed (wrong key, wrong federation or tampered file)"
        ) from exc
    return decode_checkpoint(plaintext)

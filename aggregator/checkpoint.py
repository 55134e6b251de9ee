"""Atomic, encrypted checkpoints of the aggregator's durable state.

A checkpoint holds the :class:`~aggregator.engine.EngineState`, the consumer offsets (topic,
partition -> next offset) and arbitrary JSON ``extra``. Arrays are written with ``np.save`` (no
pickle), everything else as JSON with sorted sets, so the same state always gives the same
plaintext.

On disk: ``MAGIC || nonce (12 bytes) || AES-256-GCM(plaintext)`` with associated data
``b"fedsynth-checkpoint-v1" + federation_id``, so a checkpoint of another federation does not load.
Writes go to a temporary file in the same directory, are fsynced, ``os.replace``-d over the old
file and the directory is fsynced: a crash at any point leaves either the old or the new checkpoint.

Two layouts share that envelope. :func:`save_checkpoint` writes everything into one file (magic
``FSCKPT1``). :class:`CheckpointStore`, which the aggregator writes after every message that changes
state, writes a small manifest (magic ``FSCKPT2``) and keeps every array in its own encrypted blob
beside it (``<name>.blobs/<id>.bin``), written once when the array first appears and deleted when
no manifest refers to it any more. Arrays in the engine state are immutable, so a new update costs
one blob (its delta) and a manifest instead of rewriting the model and the whole buffer: with 1M
parameters and three buffered updates, about a third of the time (``python -m bench.aggregate``).
A blob is written and fsynced before the manifest that names it; a blob's associated data binds
its id, so blobs cannot be swapped; a manifest naming a missing or altered blob does not load.
A quantized delta (the agents' ``quantize8|zstd``, buffered as its levels,
:class:`~fedsynth.codec.quantize.QuantizedVector`) is stored as its levels array and its range in
the document: for 1M parameters 1 MB to encrypt, write and fsync instead of 4 MB, loaded back as
the same levels. A float delta that the aggregator decoded from its wire bytes
(:meth:`CheckpointStore.note_encoded`) is stored as those bytes and decoded again on load.

A checkpoint may also carry an *outbox*: Kafka records the aggregator decided to send together
with the state that made them (a new global version, its audit event, cohort control messages).
The app writes them before it sends them and sends them again after a restart, so a decision
that became visible is never remade differently (the message bytes, in blobs like arrays).
"""

from __future__ import annotations

import io
import json
import os
import struct
import uuid
import weakref
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aggregator.engine import EngineState, VersionRecord
from aggregator.strategies.base import ClientUpdate, Delta, StrategyState, frozen_array
from fedsynth.codec.quantize import QuantizedVector
from fedsynth.durable import fsync_dir, write_atomic
from fedsynth.errors import ConfigError, FedSynthError, MessageError
from fedsynth.federation import decode_vector

__all__ = [
    "ASSOCIATED_DATA_PREFIX",
    "Checkpoint",
    "CheckpointError",
    "OutboxRecord",
    "KEY_BYTES",
    "CheckpointStore",
    "decode_checkpoint",
    "encode_checkpoint",
    "load_checkpoint",
    "new_key",
    "save_checkpoint",
]

MAGIC = b"FSCKPT1\n"
MANIFEST_MAGIC = b"FSCKPT2\n"
BLOB_MAGIC = b"FSBLOB1\n"
ASSOCIATED_DATA_PREFIX = b"fedsynth-checkpoint-v1"
KEY_BYTES = 32
NONCE_BYTES = 12
_LEN = struct.Struct(">Q")


class CheckpointError(FedSynthError):
    """A checkpoint exists but cannot be read: wrong key, tampering, or a foreign format."""


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One Kafka record to (re)send: topic, key, value and headers."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class Checkpoint:
    """What is saved and restored together.

    Attributes:
        state: The engine state.
        offsets: ``(topic, partition) -> next offset to consume``.
        extra: Any JSON-serialisable settings (strategy name, run id, ...).
        outbox: Records decided with this state and not yet known to be sent.
        arrays: Named arrays beside ``extra`` (an open secure cohort's masked running sum),
            stored like the engine's arrays; treat them as immutable once saved.
    """

    state: EngineState
    offsets: Mapping[tuple[str, int], int] = field(default_factory=lambda: MappingProxyType({}))
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    outbox: tuple[OutboxRecord, ...] = ()
    arrays: Mapping[str, np.ndarray] = field(default_factory=lambda: MappingProxyType({}))


def _outbox_doc(outbox: tuple[OutboxRecord, ...], arrays: _ArrayRefs) -> list[dict[str, Any]]:
    return [
        {
            "topic": r.topic,
            "key": r.key.hex(),
            "headers": [[k, v.hex()] for k, v in r.headers],
            "value": arrays.ref(np.frombuffer(r.value, dtype=np.uint8)),
        }
        for r in outbox
    ]


def _outbox_from_doc(docs: list[Mapping[str, Any]], arr: Resolve) -> tuple[OutboxRecord, ...]:
    return tuple(
        OutboxRecord(
            str(d["topic"]),
            bytes.fromhex(d["key"]),
            arr(d["value"]).tobytes(),
            tuple((str(k), bytes.fromhex(v)) for k, v in d["headers"]),
        )
        for d in docs
    )


def new_key() -> bytes:
    """A fresh random 32-byte AES-256 key (from ``os.urandom``)."""
    return os.urandom(KEY_BYTES)


# ----------------------------------------------------------------------------- plaintext
class _Arrays:
    """Collects arrays while a document is built, replacing each by ``{"$array": index}``."""

    def __init__(self) -> None:
        self.items: list[np.ndarray] = []

    def ref(self, arr: np.ndarray) -> dict[str, Any]:
        self.items.append(np.ascontiguousarray(arr))
        return {"$array": len(self.items) - 1}


class _ArrayRefs(Protocol):
    def ref(self, arr: np.ndarray) -> dict[str, Any]: ...


def _delta_doc(delta: Delta, arrays: _ArrayRefs) -> dict[str, Any]:
    """A buffered delta: an array's reference, or a quantized vector's levels (their reference)
    and its range (JSON floats round-trip exactly), so it is restored as it was summed."""
    if isinstance(delta, QuantizedVector):
        return {
            "levels": arrays.ref(delta.levels),
            "low": delta.low,
            "high": delta.high,
            "bits": delta.bits,
        }
    return arrays.ref(delta)


def _state_doc(state: EngineState, arrays: _ArrayRefs) -> dict[str, Any]:
    strat = state.strategy_state
    buffer = [
        {
            "update_id": u.update_id,
            "site_id": u.site_id,
            "base_version": u.base_version,
            "n_samples": u.n_samples,
            "weight_hint": u.weight_hint,
            "delta": _delta_doc(u.delta, arrays),
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


Resolve = Callable[[Mapping[str, Any]], np.ndarray]
"""An array reference of a document (``{"$array": i}`` or ``{"$blob": id}``) -> the array."""


def _delta_from_doc(doc: Mapping[str, Any], arr: Resolve) -> Delta:
    if "levels" not in doc:
        return arr(doc)
    try:
        return QuantizedVector(arr(doc["levels"]), float(doc["low"]), float(doc["high"]),
                               int(doc["bits"]))
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint holds a bad quantized delta: {exc}") from exc


def _state_from_doc(doc: Mapping[str, Any], arr: Resolve) -> EngineState:
    strat = doc["strategy"]
    buffer = tuple(
        ClientUpdate(
            u["update_id"],
            u["site_id"],
            u["base_version"],
            u["n_samples"],
            _delta_from_doc(u["delta"], arr),
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


def _checkpoint_doc(checkpoint: Checkpoint, fmt: int, arrays: _ArrayRefs) -> dict[str, Any]:
    """The JSON document of a checkpoint, its arrays replaced by ``arrays``' references."""
    return {
        "format": fmt,
        "engine": _state_doc(checkpoint.state, arrays),
        "offsets": sorted([t, p, o] for (t, p), o in checkpoint.offsets.items()),
        "extra": dict(checkpoint.extra),
        "outbox": _outbox_doc(checkpoint.outbox, arrays),
        "arrays": {k: arrays.ref(v) for k, v in sorted(checkpoint.arrays.items())},
    }


def _checkpoint_from_doc(doc: Mapping[str, Any], fmt: int, arr: Resolve) -> Checkpoint:
    """Inverse of :func:`_checkpoint_doc` (one written before outboxes or arrays has none).

    Raises:
        CheckpointError: Another format, or a malformed document.
    """
    try:
        if doc.get("format") != fmt:
            raise CheckpointError(f"unknown checkpoint format {doc.get('format')!r}")
        offsets = {(t, int(p)): int(o) for t, p, o in doc["offsets"]}
        state = _state_from_doc(doc["engine"], arr)
        outbox = _outbox_from_doc(doc.get("outbox", []), arr)
        extra = MappingProxyType(dict(doc["extra"]))
        named = MappingProxyType({str(k): arr(v) for k, v in doc.get("arrays", {}).items()})
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, struct.error) as exc:
        raise CheckpointError(f"checkpoint is malformed: {exc}") from exc
    return Checkpoint(state, MappingProxyType(offsets), extra, outbox, named)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """Serialise a checkpoint to deterministic plaintext bytes (before encryption)."""
    arrays = _Arrays()
    doc = _checkpoint_doc(checkpoint, 1, arrays)
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
    except (ValueError, TypeError, struct.error) as exc:
        raise CheckpointError(f"checkpoint is malformed: {exc}") from exc
    return _checkpoint_from_doc(doc, 1, lambda ref: frozen_array(arrays[ref["$array"]]))


# ----------------------------------------------------------------------------- crypto + disk
def _aead(key: bytes) -> AESGCM:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ConfigError(f"checkpoint key must be {KEY_BYTES} bytes")
    return AESGCM(key)


def _associated_data(federation_id: str) -> bytes:
    return ASSOCIATED_DATA_PREFIX + federation_id.encode("utf-8")


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
    write_atomic(target, MAGIC + nonce + sealed)


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
    if blob.startswith(MANIFEST_MAGIC):
        return CheckpointStore(path, key, federation_id).load()
    return decode_checkpoint(_open_sealed(aead, blob, MAGIC, _associated_data(federation_id), path))


def _open_sealed(aead: AESGCM, blob: bytes, magic: bytes, ad: bytes, path: object) -> bytes:
    if not blob.startswith(magic) or len(blob) < len(magic) + NONCE_BYTES + 16:
        raise CheckpointError(f"{path} is not a fedsynth checkpoint")
    nonce = blob[len(magic) : len(magic) + NONCE_BYTES]
    try:
        return aead.decrypt(nonce, blob[len(magic) + NONCE_BYTES :], ad)
    except InvalidTag as exc:
        raise CheckpointError(
            f"{path}: authentication failed (wrong key, wrong federation or tampered file)"
        ) from exc


# ----------------------------------------------------------------------------- manifest + blobs
_BLOB_SUFFIX = ".bin"


def _encode_array(arr: np.ndarray) -> bytes:
    data = np.ascontiguousarray(arr)
    header = json.dumps({"dtype": data.dtype.str, "shape": list(data.shape)}).encode()
    return _LEN.pack(len(header)) + header + data.tobytes()


def _encode_encoded(arr: np.ndarray, encoding: Encoded) -> bytes:
    """A blob of ``arr`` holding the wire bytes it was decoded from (see :meth:`note_encoded`)."""
    meta = {"dtype": arr.dtype.str, "shape": list(arr.shape), "codec": encoding.codec}
    header = json.dumps(meta).encode()
    return _LEN.pack(len(header)) + header + bytes(encoding.data)


def _decode_array(plaintext: bytes) -> np.ndarray:
    view = memoryview(plaintext)
    header, pos = _read_chunk(view, 0)
    meta = json.loads(bytes(header))
    dtype = np.dtype(meta["dtype"])
    if dtype.hasobject:
        raise CheckpointError("checkpoint blob holds Python objects")
    shape = tuple(int(n) for n in meta["shape"])
    size = int(np.prod(shape, dtype=np.int64))
    if "codec" in meta:
        return _decode_encoded(view[pos:], str(meta["codec"]), dtype, shape, size)
    flat = np.frombuffer(view[pos:], dtype=dtype)
    if flat.size != size:
        raise CheckpointError("checkpoint blob size does not match its shape")
    return frozen_array(flat.reshape(shape))


def _decode_encoded(
    data: memoryview, codec: str, dtype: np.dtype[Any], shape: tuple[int, ...], size: int
) -> np.ndarray:
    """The array a blob of wire bytes stands for: the same decoding the aggregator applied."""
    if dtype != np.float32:
        raise CheckpointError(f"encoded checkpoint blob declares {dtype}, not float32")
    try:
        flat = decode_vector(bytes(data), codec, size)
    except MessageError as exc:
        raise CheckpointError(f"encoded checkpoint blob does not decode: {exc}") from exc
    flat.setflags(write=False)
    return flat.reshape(shape)


@dataclass(frozen=True, slots=True)
class Encoded:
    """The wire form an array was decoded from: a codec pipeline's name and its bytes."""

    codec: str
    data: bytes | memoryview


class _BlobRefs:
    """Replaces each array by ``{"$blob": id}``, reusing the id of an array already stored."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self.names: list[str] = []
        self.new: list[tuple[str, np.ndarray]] = []

    def ref(self, arr: np.ndarray) -> dict[str, Any]:
        name = self.store.known_name(arr)
        if name is None:
            name = uuid.uuid4().hex
            self.new.append((name, arr))
        self.names.append(name)
        return {"$blob": name}


class CheckpointStore:
    """Manifest-and-blobs checkpoints at one path (see the module docstring).

    Example::

        store = CheckpointStore(state_dir / "checkpoint.bin", key, federation_id)
        restored = store.load()                 # None on the first start
        store.save(Checkpoint(state, offsets, extra))
    """

    def __init__(self, path: str | os.PathLike[str], key: bytes, federation_id: str) -> None:
        """Configure the store.

        Raises:
            ConfigError: The key is not 32 bytes.
        """
        self.path = Path(path)
        self.blob_dir = self.path.with_name(self.path.name + ".blobs")
        self._aead = _aead(key)
        self._ad = _associated_data(federation_id)
        self._known: dict[int, tuple[weakref.ref[np.ndarray], str]] = {}
        self._encoded: dict[int, tuple[weakref.ref[np.ndarray], Encoded]] = {}

    def note_encoded(self, arr: np.ndarray, codec: str, data: bytes | memoryview) -> None:
        """Record that ``arr`` is ``decode_vector(data, codec, arr.size)``, the float32 vector an
        update's wire bytes decode to: if it is saved, its blob holds those bytes (about a fifth
        of the array for ``quantize8|zstd``) and is decoded again, bit for bit, on load.

        Only the caller knows that the array is that decoding; the store does not check it.
        Arrays that are not 1-D float32 are stored as themselves.
        """
        if arr.dtype != np.float32 or arr.ndim != 1:
            return
        key = id(arr)
        encoded = self._encoded

        def forget(ref: weakref.ref[np.ndarray]) -> None:  # the array died unsaved (rejected)
            if encoded.get(key, (None,))[0] is ref:
                encoded.pop(key, None)  # (at worst a race drops a newer entry: stored as float32)

        encoded[key] = (weakref.ref(arr, forget), Encoded(codec, data))

    def _encoding(self, arr: np.ndarray) -> Encoded | None:
        entry = self._encoded.get(id(arr))
        if entry is None or entry[0]() is not arr:
            return None
        return entry[1]

    def known_name(self, arr: np.ndarray) -> str | None:
        """The blob id of this very array object, if it was saved or loaded before."""
        entry = self._known.get(id(arr))
        if entry is None or entry[0]() is not arr:
            return None
        return entry[1]

    def _remember(self, arr: np.ndarray, name: str) -> None:
        self._known[id(arr)] = (weakref.ref(arr), name)

    def _blob_ad(self, name: str) -> bytes:
        return self._ad + b"\x00blob:" + name.encode()

    def save(self, checkpoint: Checkpoint) -> None:
        """Write new arrays as blobs, then the manifest, then delete unreferenced blobs.

        Raises:
            OSError: The file system refused a write (the previous checkpoint stays loadable).
        """
        refs = _BlobRefs(self)
        doc = _checkpoint_doc(checkpoint, 2, refs)
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        for name, arr in refs.new:
            encoding = self._encoding(arr)
            plain = _encode_array(arr) if encoding is None else _encode_encoded(arr, encoding)
            nonce = os.urandom(NONCE_BYTES)
            sealed = self._aead.encrypt(nonce, plain, self._blob_ad(name))
            write_atomic(
                self.blob_dir / (name + _BLOB_SUFFIX), BLOB_MAGIC + nonce + sealed, sync_dir=False
            )
        if refs.new:
            fsync_dir(self.blob_dir)
        header = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, header, self._ad)
        write_atomic(self.path, MANIFEST_MAGIC + nonce + sealed)
        for name, arr in refs.new:
            self._remember(arr, name)
        self._collect(set(refs.names))

    def _collect(self, live: set[str]) -> None:
        self._known = {k: v for k, v in self._known.items() if v[0]() is not None}
        # an array's wire bytes are needed until its blob is written, then never again
        for k, (ref, _) in list(self._encoded.items()):
            arr = ref()
            if arr is None or self.known_name(arr) is not None:
                self._encoded.pop(k, None)  # (a dead array's callback may have been first)
        for entry in self.blob_dir.iterdir():
            if entry.name.removesuffix(_BLOB_SUFFIX) not in live:
                with suppress(FileNotFoundError):
                    entry.unlink()

    def load(self) -> Checkpoint | None:
        """The checkpoint at :attr:`path` (either layout), or None when there is none.

        Raises:
            CheckpointError: Wrong key or federation, a tampered, missing or foreign file.
        """
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if not blob.startswith(MANIFEST_MAGIC):
            return decode_checkpoint(_open_sealed(self._aead, blob, MAGIC, self._ad, self.path))
        header = _open_sealed(self._aead, blob, MANIFEST_MAGIC, self._ad, self.path)
        try:
            doc = json.loads(header)
        except ValueError as exc:
            raise CheckpointError(f"checkpoint is malformed: {exc}") from exc
        return _checkpoint_from_doc(doc, 2, self._load_blob)

    def _load_blob(self, ref: Mapping[str, Any]) -> np.ndarray:
        name = str(ref["$blob"])
        if not name.isalnum():
            raise CheckpointError(f"checkpoint names a bad blob id {name!r}")
        path = self.blob_dir / (name + _BLOB_SUFFIX)
        try:
            sealed = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint blob {path} is missing") from None
        plaintext = _open_sealed(self._aead, sealed, BLOB_MAGIC, self._blob_ad(name), path)
        arr = _decode_array(plaintext)
        self._remember(arr, name)
        return arr

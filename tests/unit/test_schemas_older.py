"""Older versions of a changed schema (schemas/older/): their records are read into the current
shape, signatures and all, and a malformed older file is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedsynth.messages import Inbound, MessageFactory, split_signed
from schemas.codec import decode, decode_as
from schemas.compat import check_backward_compatible
from schemas.errors import SchemaError
from schemas.registry import SCHEMA_DIR, SchemaEntry, SchemaRegistry, default_registry
from schemas.signing import encode_signed
from tests.unit.test_messages import SITE, _reader, _update

REGISTRY = default_registry()
OLDER = REGISTRY.older()


def test_every_older_version_resolves_to_the_current_one() -> None:
    assert OLDER, "schemas/older/ holds the ModelUpdate before ledger_sequence"
    for entry in OLDER:
        current = REGISTRY.by_name(entry.name)
        assert entry.fingerprint != current.fingerprint and entry.resolved is current.reader
        check_backward_compatible(entry.raw, current.raw)
    assert len(REGISTRY) == len(REGISTRY.names) == len(list(REGISTRY)), "older ones not listed"
    assert all(REGISTRY.by_name(e.name) is e for e in REGISTRY)


def _older_model_update(fingerprint: int = 0x2243E280660C6509) -> SchemaRegistry:
    entry = next(e for e in OLDER if e.name == "ModelUpdate" and e.fingerprint == fingerprint)
    return SchemaRegistry([SchemaEntry.from_raw(entry.raw)])  # as an older agent has it


def test_an_update_from_an_agent_before_ledger_sequence_is_read_with_none() -> None:
    older = _older_model_update()
    record = {**MessageFactory("fed1", "Cleveland", SITE).envelope(), **_update(b"\0" * 16)}
    value = encode_signed("ModelUpdate", record, SITE, older)
    assert value[2:10] != REGISTRY.by_name("ModelUpdate").header[2:]
    name, got = decode(value)
    assert name == "ModelUpdate" and got["ledger_sequence"] is None
    assert got["epsilon_spent"] == 1.25 and got["vector"] == b"\0" * 16
    assert decode_as("ModelUpdate", value)["update_id"] == "u1"
    read = _reader().read(value)  # the signature covers the bytes as sent
    assert isinstance(read, Inbound) and read.record["ledger_sequence"] is None


def test_an_update_from_an_agent_before_ledger_writes_is_read_with_none() -> None:
    older = _older_model_update(0x9EA819D1688C1BE2)
    fields = {**_update(b"\0" * 16), "ledger_sequence": 7}
    record = {**MessageFactory("fed1", "Cleveland", SITE).envelope(), **fields}
    value = encode_signed("ModelUpdate", record, SITE, older)
    read = _reader().read(value)
    assert isinstance(read, Inbound) and read.name == "ModelUpdate"
    assert read.record["ledger_sequence"] == 7 and read.record["ledger_writes"] is None


def test_a_chunked_payload_of_the_older_version_is_read_too() -> None:
    """Chunks carry the payload's bytes as its sender encoded them; the joined payload of an
    older version is resolved like a whole one."""
    factory = MessageFactory("fed1", "Cleveland", SITE)
    vector = np.arange(300_000, dtype=np.float32).tobytes()
    payload = encode_signed(
        "ModelUpdate", {**factory.envelope(), **_update(vector)}, SITE, _older_model_update()
    )
    chunks = [factory.build("Chunk", c).value
              for c in split_signed(payload, "ModelUpdate", 256 * 1024)]
    reader = _reader()
    got = [reader.read(c) for c in chunks][-1]
    assert isinstance(got, Inbound) and got.name == "ModelUpdate", got
    assert got.record["ledger_sequence"] is None and bytes(got.record["vector"]) == vector


def _copy_schemas(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return target


def test_a_bad_older_file_is_named(tmp_path: Path) -> None:
    assert SchemaRegistry.from_dir(_copy_schemas(tmp_path)).older()
    directory = _copy_schemas(tmp_path / "wrong-fp")
    older = directory / "older" / "ModelUpdate.2243e280660c6509.avsc"
    older.rename(older.with_name("ModelUpdate.0000000000000000.avsc"))
    with pytest.raises(SchemaError, match="ModelUpdate.0000000000000000.avsc"):
        SchemaRegistry.from_dir(directory)
    directory = _copy_schemas(tmp_path / "no-current")
    older = directory / "older" / "ModelUpdate.2243e280660c6509.avsc"
    older.rename(older.with_name("Gone.2243e280660c6509.avsc"))
    with pytest.raises(SchemaError, match="no current schema 'Gone'"):
        SchemaRegistry.from_dir(directory)
    directory = _copy_schemas(tmp_path / "current")
    raw = json.loads((directory / "ModelUpdate.avsc").read_text())
    fp = f"{SchemaEntry.from_raw(raw).fingerprint:016x}"
    (directory / "older" / f"ModelUpdate.{fp}.avsc").write_text(json.dumps(raw))
    with pytest.raises(SchemaError, match="defined twice or is current"):
        SchemaRegistry.from_dir(directory)

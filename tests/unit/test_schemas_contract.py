"""Contract of schemas/*.avsc: envelope first, docs, pinned fingerprints, compatible changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.compat import check_backward_compatible, example_records
from schemas.errors import SchemaError, SchemaMismatchError, UnknownFingerprintError
from schemas.registry import (
    SCHEMA_DIR,
    SchemaEntry,
    SchemaRegistry,
    crc64_avro,
    default_registry,
)

ROOT = Path(__file__).resolve().parents[2]
KNOWN = json.loads((ROOT / "tests/known_answer/schema_fingerprints.json").read_text())[
    "fingerprints"
]
ENVELOPE = [
    ("message_id", "string"),
    ("federation_id", "string"),
    ("sender", "string"),
    ("created_at", {"type": "long", "logicalType": "timestamp-millis"}),
    ("signature", "bytes"),
]
EXPECTED = {
    "SiteHello", "Heartbeat", "CohortJoin", "RoundOpen", "CohortOpen", "CohortRoster",
    "UnmaskRequest",
    "MaskRequest", "GlobalVersionNotice", "EncryptedShare", "ModelUpdate", "UnmaskResponse",
    "GlobalModel", "Chunk", "SyntheticRow", "AuditEvent", "DeadLetter", "OperatorCommand",
}  # fmt: skip
REGISTRY = default_registry()
ENTRIES = list(REGISTRY)


def _rabin_reference(text: str) -> int:
    """CRC-64-AVRO written from the Avro specification, independent of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in text.encode("utf-8"):
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def _named_records(node: Any) -> list[dict[str, Any]]:
    """Every record or enum definition nested in a raw schema."""
    found = []
    if isinstance(node, dict):
        if node.get("type") in ("record", "enum"):
            found.append(node)
        for value in node.values():
            found += _named_records(value)
    elif isinstance(node, list):
        for value in node:
            found += _named_records(value)
    return found


def test_every_message_has_a_schema_file() -> None:
    assert {p.stem for p in SCHEMA_DIR.glob("*.avsc")} == EXPECTED
    assert set(REGISTRY.names) == EXPECTED


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_envelope_comes_first_with_the_right_types(entry: Any) -> None:
    fields = entry.raw["fields"]
    assert [(f["name"], f["type"]) for f in fields[: len(ENVELOPE)]] == ENVELOPE
    assert entry.raw["namespace"] == "fedsynth"
    assert entry.fullname == f"fedsynth.{entry.name}"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_record_and_field_has_a_doc(entry: Any) -> None:
    for named in _named_records(dict(entry.raw)):
        assert len(named.get("doc", "")) > 10, f"{named['name']} lacks a doc"
        for f in named.get("fields", []):
            assert len(f.get("doc", "")) > 5, f"{named['name']}.{f['name']} lacks a doc"
    field_names = [f["name"] for f in entry.raw["fields"]]
    assert len(field_names) == len(set(field_names))


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_fingerprint_is_pinned(entry: Any) -> None:
    assert f"{entry.fingerprint:016x}" == KNOWN[entry.name], (
        f"{entry.name} changed on the wire: check backward compatibility, then update "
        "tests/known_answer/schema_fingerprints.json"
    )
    assert entry.fingerprint == _rabin_reference(entry.canonical_form)
    assert entry.header == b"\xc3\x01" + entry.fingerprint.to_bytes(8, "little")


def test_crc64_avro_matches_the_specification_values() -> None:
    # Values from the Avro Java reference tests (SchemaNormalization).
    assert crc64_avro('"null"') == 7195948357588979594 == _rabin_reference('"null"')
    assert crc64_avro('"int"') == _rabin_reference('"int"')


def test_docs_do_not_change_fingerprints() -> None:
    raw = json.loads((SCHEMA_DIR / "Heartbeat.avsc").read_text())
    raw["doc"] = "reworded"
    raw["fields"][-1]["doc"] = "reworded too"
    entry = SchemaRegistry.from_dir(SCHEMA_DIR).by_name("Heartbeat")
    assert SchemaEntry.from_raw(raw).fingerprint == entry.fingerprint


def test_registry_lookups() -> None:
    entry = REGISTRY.by_name("ModelUpdate")
    assert REGISTRY.by_name("fedsynth.ModelUpdate") is entry
    assert REGISTRY.by_fingerprint(entry.fingerprint) is entry
    assert REGISTRY.by_fingerprint(entry.header[2:]) is entry
    with pytest.raises(UnknownFingerprintError, match="0000000000000001"):
        REGISTRY.by_fingerprint(1)
    with pytest.raises(SchemaError, match="no message schema named 'Nope'"):
        REGISTRY.by_name("Nope")


def test_registry_refuses_a_file_named_after_another_record(tmp_path: Path) -> None:
    (tmp_path / "Other.avsc").write_text((SCHEMA_DIR / "Heartbeat.avsc").read_text())
    with pytest.raises(SchemaError, match="defines record 'Heartbeat', expected 'Other'"):
        SchemaRegistry.from_dir(tmp_path)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_schema_is_compatible_with_itself(entry: Any) -> None:
    check_backward_compatible(entry.raw, entry.raw)


V1 = {
    "type": "record",
    "name": "Probe",
    "namespace": "fedsynth",
    "fields": [
        {"name": "n", "type": "int"},
        {"name": "mode", "type": {"type": "enum", "name": "Mode", "symbols": ["a", "b"]}},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}


def _v1_with(*fields: dict[str, Any], replace: int | None = None) -> dict[str, Any]:
    base = list(V1["fields"])  # type: ignore[call-overload]
    if replace is not None:
        base[replace] = fields[0]
        fields = fields[1:]
    return {**V1, "fields": base + list(fields)}


def test_compatible_changes_pass() -> None:
    check_backward_compatible(V1, _v1_with({"name": "extra", "type": "long", "default": 0}))
    check_backward_compatible(V1, _v1_with({"name": "n", "type": "long"}, replace=0))
    enum3 = {"type": "enum", "name": "Mode", "symbols": ["a", "b", "c"]}
    check_backward_compatible(V1, _v1_with({"name": "mode", "type": enum3}, replace=1))
    check_backward_compatible(V1, {**V1, "fields": V1["fields"][:2]})  # type: ignore[index]


@pytest.mark.parametrize(
    ("new", "cause"),
    [
        (_v1_with({"name": "extra", "type": "string"}), "No default value for field extra"),
        (_v1_with({"name": "n", "type": "string"}, replace=0), "int is not string"),
        (
            _v1_with(
                {"name": "mode", "type": {"type": "enum", "name": "Mode", "symbols": ["a"]}},
                replace=1,
            ),
            "b not found in reader symbol list",
        ),
        (
            _v1_with({"name": "note", "type": "string"}, replace=2),
            r"\['null', 'string'\] not found in string",
        ),
    ],
    ids=["added-without-default", "type-changed", "enum-symbol-removed", "optional-made-required"],
)
def test_incompatible_changes_are_caught(new: dict[str, Any], cause: str) -> None:
    with pytest.raises(SchemaMismatchError, match=cause):
        check_backward_compatible(V1, new)


def test_example_records_cover_every_union_branch_and_symbol() -> None:
    records = example_records(V1)
    assert {r["mode"] for r in records} == {"a", "b"}
    assert {type(r["note"]) for r in records} == {type(None), str}

"""The message schemas: every ``schemas/*.avsc`` parsed once, found by name or by fingerprint.

Fingerprints are the CRC-64-AVRO (Rabin) fingerprint of the schema's Parsing Canonical Form, as the
Avro specification defines for single-object encoding. Docs and logical types are not part of the
canonical form, so editing a ``doc`` never changes a fingerprint; changing a name, type or field
order does (and the known-answer test notices).

A schema changed since records were written keeps its earlier versions in ``schemas/older/``, one
file ``<Name>.<fingerprint>.avsc`` each: a record written with one is read with it as the writer
schema and the current one as the reader schema (Avro schema resolution: a field added since comes
back with its default), so a record of the older version, from an agent not yet upgraded or an
outbox written before the upgrade, is read rather than refused as an unknown schema. The contract
test checks that each older version resolves to the current one.
"""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from fastavro import parse_schema
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from schemas.errors import SchemaError, UnknownFingerprintError, UnknownSchemaError

__all__ = [
    "NAMESPACE",
    "SCHEMA_DIR",
    "SchemaEntry",
    "SchemaRegistry",
    "crc64_avro",
    "default_registry",
]

NAMESPACE = "fedsynth"
SCHEMA_DIR = Path(__file__).resolve().parent


def crc64_avro(canonical_form: str) -> int:
    """CRC-64-AVRO (Rabin) fingerprint of a Parsing Canonical Form, as an unsigned 64-bit int.

    Args:
        canonical_form: The schema in Parsing Canonical Form.

    Returns:
        The fingerprint; its 8 little-endian bytes go in a single-object header.
    """
    # fastavro returns the hex of the little-endian bytes.
    little_endian_hex = _fastavro_fingerprint(canonical_form, "CRC-64-AVRO")
    return int.from_bytes(bytes.fromhex(little_endian_hex), "little")


def _strip_logical_types(node: Any) -> Any:
    """A copy of a raw schema without ``logicalType`` keys (timestamps decode as plain ints)."""
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


@dataclass(frozen=True, slots=True)
class SchemaEntry:
    """One message schema.

    Attributes:
        name: Short record name, e.g. ``"ModelUpdate"`` (equals the file stem).
        fullname: Namespaced name, e.g. ``"fedsynth.ModelUpdate"``.
        fingerprint: CRC-64-AVRO of the canonical form, unsigned.
        header: The 10-byte single-object header: ``C3 01`` and the little-endian fingerprint.
        canonical_form: The Parsing Canonical Form.
        raw: The schema as written in the ``.avsc`` (do not mutate).
        writer: fastavro-parsed schema for encoding (accepts ints or datetimes for timestamps).
        reader: fastavro-parsed schema for decoding (timestamps come back as int milliseconds).
        defaults: Top-level fields that have a default, with it (filled in when left out).
        resolved: For an older version, the current version's reader schema its records are
            resolved to; None for a current schema.
    """

    name: str
    fullname: str
    fingerprint: int
    header: bytes
    canonical_form: str
    raw: Mapping[str, Any]
    writer: Any
    reader: Any
    defaults: Mapping[str, Any]
    resolved: Any = None

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any], current: SchemaEntry | None = None) -> SchemaEntry:
        """Parse a raw record schema into an entry (an older version of ``current``, if given:
        its records are read into ``current``'s shape)."""
        writer = parse_schema(copy.deepcopy(dict(raw)), named_schemas={})
        reader = parse_schema(_strip_logical_types(dict(raw)), named_schemas={})
        canonical = to_parsing_canonical_form(writer)
        fp = crc64_avro(canonical)
        fullname = str(cast(dict[str, Any], writer)["name"])
        return cls(
            name=fullname.rsplit(".", 1)[-1],
            fullname=fullname,
            fingerprint=fp,
            header=b"\xc3\x01" + struct.pack("<Q", fp),
            canonical_form=canonical,
            raw=raw,
            writer=writer,
            reader=reader,
            defaults={f["name"]: f["default"] for f in raw["fields"] if "default" in f},
            resolved=None if current is None else current.reader,
        )


class SchemaRegistry:
    """Message schemas by short name, full name and fingerprint (read-only once built)."""

    def __init__(self, entries: Sequence[SchemaEntry], older: Sequence[SchemaEntry] = ()) -> None:
        """Index ``entries`` (current versions) and ``older`` versions of them (by fingerprint
        only); raises :class:`SchemaError` on a duplicate name or fingerprint, or an older
        version of no current schema."""
        self._by_name: dict[str, SchemaEntry] = {}
        self._by_fp: dict[int, SchemaEntry] = {}
        self._current: list[SchemaEntry] = sorted(entries, key=lambda e: e.name)
        self._older: list[SchemaEntry] = sorted(older, key=lambda e: (e.name, e.fingerprint))
        for entry in entries:
            if entry.name in self._by_name:
                raise SchemaError(f"schema {entry.name!r} is defined twice")
            if entry.fingerprint in self._by_fp:
                other = self._by_fp[entry.fingerprint].name
                raise SchemaError(f"schemas {other!r} and {entry.name!r} share a fingerprint")
            self._by_name[entry.name] = entry
            self._by_name[entry.fullname] = entry
            self._by_fp[entry.fingerprint] = entry
        for entry in older:
            if entry.name not in self._by_name or entry.resolved is None:
                raise SchemaError(f"an older version of {entry.name!r}, which is no schema now")
            if entry.fingerprint in self._by_fp:
                raise SchemaError(
                    f"older {entry.name!r} {entry.fingerprint:016x} is defined twice or is current"
                )
            self._by_fp[entry.fingerprint] = entry

    @classmethod
    def from_dir(cls, directory: Path) -> SchemaRegistry:
        """Load every ``*.avsc`` in ``directory``, each file's record name its stem, and the
        older versions in ``directory/older``, each named ``<Name>.<fingerprint>.avsc``."""
        current = cls._load_dir(directory)
        by_name = {e.name: e for e in current}
        older = []
        for path in sorted((directory / "older").glob("*.avsc")):
            name, _, fp = path.stem.partition(".")
            if name not in by_name:
                raise SchemaError(f"older schema {path.name} names no current schema {name!r}")
            try:
                entry = SchemaEntry.from_raw(
                    json.loads(path.read_text(encoding="utf-8")), by_name[name]
                )
            except (ValueError, TypeError, KeyError) as exc:
                raise SchemaError(f"cannot parse schema file older/{path.name}: {exc}") from exc
            if entry.name != name or f"{entry.fingerprint:016x}" != fp:
                raise SchemaError(
                    f"older/{path.name} defines {entry.name!r} with fingerprint "
                    f"{entry.fingerprint:016x}, not what its name says"
                )
            older.append(entry)
        return cls(current, older)

    @staticmethod
    def _load_dir(directory: Path) -> list[SchemaEntry]:
        entries = []
        for path in sorted(directory.glob("*.avsc")):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                entry = SchemaEntry.from_raw(raw)
            except (ValueError, TypeError, KeyError) as exc:
                raise SchemaError(f"cannot parse schema file {path.name}: {exc}") from exc
            if entry.name != path.stem:
                raise SchemaError(
                    f"{path.name} defines record {entry.name!r}, expected {path.stem!r}"
                )
            entries.append(entry)
        return entries

    def by_name(self, name: str) -> SchemaEntry:
        """The entry for a short (``"Chunk"``) or full (``"fedsynth.Chunk"``) name."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownSchemaError(
                f"no message schema named {name!r}; known: {', '.join(self.names)}"
            ) from None

    def by_fingerprint(self, fingerprint: int | bytes) -> SchemaEntry:
        """The entry for a fingerprint given as an int or as 8 little-endian bytes."""
        if isinstance(fingerprint, bytes):
            fp = int.from_bytes(fingerprint, "little")
        else:
            fp = fingerprint
        try:
            return self._by_fp[fp]
        except KeyError:
            raise UnknownFingerprintError(
                f"unknown schema fingerprint {fp:016x}: no local .avsc has it "
                "(a newer sender, or a message that is not ours)"
            ) from None

    @property
    def names(self) -> list[str]:
        """Short names of every schema, sorted."""
        return [e.name for e in self._current]

    def __iter__(self) -> Iterator[SchemaEntry]:
        """The current version of each schema, by name."""
        return iter(self._current)

    def older(self) -> list[SchemaEntry]:
        """The older versions still read, by name and fingerprint."""
        return list(self._older)

    def __len__(self) -> int:
        return len(self._current)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


@lru_cache(maxsize=1)
def default_registry() -> SchemaRegistry:
    """The registry of the ``.avsc`` files shipped in this package, loaded once."""
    return SchemaRegistry.from_dir(SCHEMA_DIR)

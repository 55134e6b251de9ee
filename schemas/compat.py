"""Backward compatibility of schema changes, checked on data.

A change is backward compatible when consumers on the new schema can read everything written with
the old one (Avro schema resolution: added fields need defaults, numeric promotions only, no removed
enum symbols in use ...). Rather than re-implementing the resolution rules,
:func:`check_backward_compatible` writes example records that exercise every union branch, enum
symbol and alternative value of the old schema and reads them back with the new schema as reader
schema, so fastavro applies the rules.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from io import BytesIO
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas.errors import SchemaMismatchError

__all__ = ["check_backward_compatible", "example_records"]

_PRIMITIVES: dict[str, list[Any]] = {
    "null": [None],
    "boolean": [True, False],
    "int": [0, -7, 2**31 - 1],
    "long": [0, -(2**40)],
    "float": [1.5],
    "double": [0.25, -1e300],
    "bytes": [b"", b"\x00\xff"],
    "string": ["", "x\u00e9"],
}


def _qualify(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _examples(schema: Any, named: dict[str, list[Any]], namespace: str | None) -> list[Any]:
    """Example values of ``schema`` covering every branch (one per alternative)."""
    if isinstance(schema, list):
        return [v for branch in schema for v in _examples(branch, named, namespace)]
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return list(_PRIMITIVES[schema])
        return named[_qualify(schema, namespace)]
    kind = schema["type"]
    if kind == "array":
        return [[], _examples(schema["items"], named, namespace)]
    if kind == "map":
        values = _examples(schema["values"], named, namespace)
        return [{}, {f"k{i}": v for i, v in enumerate(values)}]
    if kind in ("record", "error", "enum", "fixed"):
        space = schema.get("namespace", namespace)
        fullname = _qualify(schema["name"], space)
        named[fullname] = _named_examples(schema, named, space)
        return named[fullname]
    return _examples(kind, named, namespace)


def _named_examples(
    schema: Mapping[str, Any], named: dict[str, list[Any]], ns: str | None
) -> list[Any]:
    kind = schema["type"]
    if kind == "enum":
        return list(schema["symbols"])
    if kind == "fixed":
        return [b"\x00" * schema["size"], b"\xab" * schema["size"]]
    per_field = {f["name"]: _examples(f["type"], named, ns) for f in schema["fields"]}
    base = {name: values[0] for name, values in per_field.items()}
    records = [base]
    for name, values in per_field.items():
        records += [{**base, name: value} for value in values[1:]]
    return records


def _strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


def example_records(schema: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Records of a (non-recursive) raw record schema: a base record plus one per alternative value.

    Logical types are ignored: timestamps are plain ints.
    """
    return _examples(_strip_logical(copy.deepcopy(dict(schema))), {}, None)


def check_backward_compatible(old_schema: Mapping[str, Any], new_schema: Mapping[str, Any]) -> None:
    """Check that data written with ``old_schema`` reads under ``new_schema``.

    Args:
        old_schema: The raw schema as released (e.g. from git history).
        new_schema: The changed raw schema.

    Raises:
        SchemaMismatchError: Listing the first problems found (at most five).
    """
    old = _strip_logical(copy.deepcopy(dict(old_schema)))
    writer = parse_schema(copy.deepcopy(old), named_schemas={})
    reader = parse_schema(_strip_logical(copy.deepcopy(dict(new_schema))), named_schemas={})
    problems: dict[str, None] = {}  # ordered set
    for record in example_records(old):
        buf = BytesIO()
        schemaless_writer(buf, writer, record)
        buf.seek(0)
        try:
            schemaless_reader(buf, writer, reader)
        except Exception as exc:  # noqa: BLE001 - fastavro reports resolution failures variously
            problems[f"{type(exc).__name__}: {exc}"] = None
        if len(problems) >= 5:
            break
    if problems:
        name = old_schema.get("name", "?")
        raise SchemaMismatchError(
            f"{name}: new schema cannot read data written with the old one: " + "; ".join(problems)
        )

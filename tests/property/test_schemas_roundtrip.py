"""Property tests of the codec: random records of every schema round trip; damage is caught."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import decode, encode
from schemas.errors import BadSignatureError, SchemaError, TruncatedMessageError
from schemas.keyring import KeyRing
from schemas.registry import default_registry
from schemas.signing import IdentityKey, decode_verified, encode_signed

REGISTRY = default_registry()
KEY = IdentityKey.generate()
RING = KeyRing({"site-a": KEY.public_key})

_PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "bytes": st.binary(max_size=48),
    "string": st.text(max_size=12),
}


def from_avro(schema: Any, named: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A strategy for values of a raw Avro schema (non-recursive)."""
    if isinstance(schema, list):
        return st.one_of([from_avro(branch, named) for branch in schema])
    if isinstance(schema, str):
        return _PRIMITIVES[schema] if schema in _PRIMITIVES else named[schema]
    kind = schema["type"]
    if kind == "array":
        return st.lists(from_avro(schema["items"], named), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=6), from_avro(schema["values"], named), max_size=3)
    if kind == "enum":
        strategy: st.SearchStrategy[Any] = st.sampled_from(schema["symbols"])
    elif kind == "record":
        strategy = st.fixed_dictionaries(
            {f["name"]: from_avro(f["type"], named) for f in schema["fields"]}
        )
    else:
        return from_avro(kind, named)  # a primitive with a logicalType
    fullname = f"{schema.get('namespace', 'fedsynth')}.{schema['name']}"
    named[fullname] = named[schema["name"]] = strategy
    return strategy


def message(name: str) -> st.SearchStrategy[dict[str, Any]]:
    """Random valid records of message ``name`` (message_id a UUID, as encode requires)."""
    base = from_avro(dict(REGISTRY.by_name(name).raw), {})
    return st.tuples(base, st.uuids()).map(lambda pair: {**pair[0], "message_id": str(pair[1])})


@st.composite
def any_message(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(REGISTRY.names))
    return name, draw(message(name))


@settings(max_examples=300, deadline=None)
@given(any_message())
def test_every_schema_round_trips(pair: tuple[str, dict[str, Any]]) -> None:
    name, record = pair
    assert decode(encode(name, record)) == (name, record)


def _leaves(value: Any) -> list[Any]:
    """Every string (map keys too) and bytes value in a decoded record, in key order."""
    if isinstance(value, dict):
        return [leaf for k in sorted(value) for leaf in (k, *_leaves(value[k]))]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


@settings(max_examples=300, deadline=None)
@given(any_message())
def test_reading_through_views_gives_the_same_record(pair: tuple[str, dict[str, Any]]) -> None:
    name, record = pair
    encoded = encode(name, record)
    for view_min in (0, 1, 1 << 16):  # 0 and 1: strings too are read as views, then again
        assert decode(encoded, views={name}, view_min=view_min) == (name, record)
    # longer than every string: each bytes field at least that long is a view of the message
    leaves = _leaves(record)
    view_min = 1 + max((len(x.encode()) for x in leaves if isinstance(x, str)), default=0)
    viewed = decode(encoded, views={name}, view_min=view_min)[1]
    assert viewed == record
    got = _leaves(viewed)
    want_views = [len(x) >= view_min for x in leaves if isinstance(x, bytes)]
    views = [isinstance(x, memoryview) for x in got if isinstance(x, bytes | memoryview)]
    assert views == want_views
    assert all(x.obj is encoded for x in got if isinstance(x, memoryview))


@settings(max_examples=150, deadline=None)
@given(any_message(), st.data())
def test_every_strict_prefix_is_truncated(pair: tuple[str, dict[str, Any]], data: Any) -> None:
    name, record = pair
    encoded = encode(name, record)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    views = data.draw(st.sampled_from([(), (name,)]))
    try:
        decode(encoded[:cut], views=views)
    except TruncatedMessageError:
        return
    raise AssertionError(f"a {cut}-byte prefix of a {len(encoded)}-byte {name} decoded")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["Heartbeat", "CohortRoster", "ModelUpdate", "SyntheticRow"]).flatmap(
        lambda n: st.tuples(st.just(n), message(n))
    ),
    st.data(),
)
def test_any_bit_flip_of_a_signed_message_is_caught(
    pair: tuple[str, dict[str, Any]], data: Any
) -> None:
    name, record = pair
    encoded = encode_signed(name, {**record, "sender": "site-a"}, KEY)
    assert decode_verified(encoded, RING)[0] == name
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
    flipped = bytearray(encoded)
    flipped[bit // 8] ^= 1 << (bit % 8)
    try:
        decode_verified(bytes(flipped), RING)
    except SchemaError:
        return
    raise AssertionError(f"bit {bit} of a {name} flipped unnoticed")


@settings(max_examples=50, deadline=None)
@given(message("Heartbeat"))
def test_signature_of_another_sender_fails(record: dict[str, Any]) -> None:
    ring = KeyRing({"site-a": IdentityKey.generate().public_key})
    encoded = encode_signed("Heartbeat", {**record, "sender": "site-a"}, KEY)
    try:
        decode_verified(encoded, ring)
    except BadSignatureError:
        return
    raise AssertionError("a signature by another key verified")

"""Wire mapping of the SecAgg+ messages onto the Avro records of ``schemas/*.avsc``.

Pure translation, no I/O: :func:`to_fields` turns a message of :mod:`fedsynth.secagg.messages` into
``(schema name, record fields without the envelope)``; the adapter adds the signed envelope
(``message_id``, ``federation_id``, ``sender``, ``created_at``, ``signature``) and encodes with
:func:`schemas.codec.encode`. :func:`from_record` takes a decoded record *with* its envelope and
rebuilds the message.

The envelope's ``sender`` is the identity whose Ed25519 key signed the record, so it is the only
source of a message's author: :class:`EncryptedShare` takes its ``sender`` from it (the aggregator
relays a share as the site signed it, envelope unchanged), and a record
whose ``site_id`` names anyone else is refused. That check is what lets the state machines trust
``site_id`` (Bonawitz et al., CCS 2017, assume authenticated channels; the signature provides them).

A :class:`MaskedInput` travels as a ``ModelUpdate`` in mode ``masked``: ``vector`` holds the
little-endian masked words, ``codec`` names their width (``masked-u32`` or ``masked-u64``), and
``masked_weight`` (an Avro long) holds the masked weight, values of ``2^63`` and above stored as
their signed two's complement. The plain ``weight`` field is ``0.0``: the real weight is secret.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedsynth.errors import MessageError
from fedsynth.secagg.fixedpoint import dtype_for
from fedsynth.secagg.messages import (
    CohortJoin,
    CohortRoster,
    EncryptedShare,
    MaskedInput,
    MaskRequest,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = [
    "MASKED_CODECS",
    "WIRE_MESSAGES",
    "MaskedUpdateInfo",
    "WireMessage",
    "from_record",
    "to_fields",
]

WireMessage = (
    CohortJoin | CohortRoster | EncryptedShare | MaskRequest | MaskedInput | UnmaskRequest
    | UnmaskResponse
)
WIRE_MESSAGES: tuple[type, ...] = (
    CohortJoin, CohortRoster, EncryptedShare, MaskRequest, MaskedInput, UnmaskRequest,
    UnmaskResponse,
)  # fmt: skip
"""The message types that travel between parties (``CohortResult`` and ``Deadline`` stay local)."""

MASKED_CODECS: Mapping[str, int] = {"masked-u32": 4, "masked-u64": 8}
"""``ModelUpdate.codec`` of a masked vector -> bytes per word."""

_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1
Fields = dict[str, Any]


@dataclass(frozen=True, slots=True)
class MaskedUpdateInfo:
    """The ``ModelUpdate`` fields a :class:`MaskedInput` does not carry.

    Attributes:
        update_id: unique id of the update.
        n_samples: training rows behind the update.
        base_version: global version the update was trained from.
        train_loss: mean training loss of the local run.
        epsilon_spent: privacy budget spent including this update.
        modulus_bits: the cohort's ``m`` (from the roster); picks the word width.
        ledger_sequence: the site ledger's sequence once the update was charged (None: no
            ledger).
        ledger_writes: the ids of the ledger's last writes then, the update's charge last
            (None: no ledger).
    """

    update_id: str
    n_samples: int
    base_version: int
    train_loss: float
    epsilon_spent: float
    modulus_bits: int
    ledger_sequence: int | None = None
    ledger_writes: tuple[str, ...] | None = None


def _to_long(value: int) -> int:
    """An unsigned 64-bit value as the signed long of the same bits."""
    if not 0 <= value < _U64:
        raise MessageError(f"masked weight {value} does not fit in 64 unsigned bits")
    return value - _U64 if value > _I64_MAX else value


def _from_long(value: int, width: int) -> int:
    """The unsigned value of ``width`` bytes stored in a signed long."""
    unsigned = value + _U64 if value < 0 else value
    if unsigned >= 1 << (8 * width):
        raise MessageError(f"masked weight {unsigned} does not fit in {8 * width} bits")
    return unsigned


def _masked_fields(msg: MaskedInput, info: MaskedUpdateInfo) -> Fields:
    width = dtype_for(info.modulus_bits).itemsize
    if len(msg.masked_vector) % width:
        size = len(msg.masked_vector)
        raise MessageError(f"masked vector of {size} bytes is not {width}-byte words")
    return {
        "update_id": info.update_id,
        "site_id": msg.site_id,
        "base_version": info.base_version,
        "n_samples": info.n_samples,
        "mode": "masked",
        "cohort_id": msg.cohort_id,
        "weight": 0.0,
        "codec": f"masked-u{8 * width}",
        "vector": msg.masked_vector,
        "n_parameters": len(msg.masked_vector) // width,
        "train_loss": info.train_loss,
        "epsilon_spent": info.epsilon_spent,
        "masked_weight": _to_long(msg.masked_weight),
        "ledger_sequence": info.ledger_sequence,
        "ledger_writes": None if info.ledger_writes is None else list(info.ledger_writes),
    }


def _join_fields(msg: CohortJoin) -> Fields:
    return {"cohort_id": msg.cohort_id, "site_id": msg.site_id, "dh_public_key": msg.dh_public_key,
            "enc_public_key": msg.enc_public_key, "base_version": msg.base_version}


def _roster_fields(msg: CohortRoster) -> Fields:
    members = [{"site_id": s, "dh_public_key": dh, "enc_public_key": enc}
               for s, dh, enc in msg.members]
    return {"cohort_id": msg.cohort_id, "target_version": msg.target_version, "members": members,
            "threshold": msg.threshold, "degree": msg.degree, "modulus_bits": msg.modulus_bits,
            "vector_length": msg.vector_length}


def _share_fields(msg: EncryptedShare) -> Fields:
    return {"cohort_id": msg.cohort_id, "recipient": msg.recipient, "nonce": msg.nonce,
            "ciphertext": msg.ciphertext}


def _mask_request_fields(msg: MaskRequest) -> Fields:
    return {"cohort_id": msg.cohort_id, "sharers": list(msg.sharers)}


def _unmask_request_fields(msg: UnmaskRequest) -> Fields:
    return {"cohort_id": msg.cohort_id, "survivors": list(msg.survivors),
            "dropped": list(msg.dropped)}


def _unmask_response_fields(msg: UnmaskResponse) -> Fields:
    return {
        "cohort_id": msg.cohort_id,
        "site_id": msg.site_id,
        "self_mask_shares": [{"owner": o, "share": s} for o, s in msg.self_mask_shares],
        "key_shares": [{"owner": o, "share": s} for o, s in msg.key_shares],
    }


_TO_FIELDS: Mapping[type, tuple[str, Callable[[Any], Fields]]] = {
    CohortJoin: ("CohortJoin", _join_fields),
    CohortRoster: ("CohortRoster", _roster_fields),
    EncryptedShare: ("EncryptedShare", _share_fields),
    MaskRequest: ("MaskRequest", _mask_request_fields),
    UnmaskRequest: ("UnmaskRequest", _unmask_request_fields),
    UnmaskResponse: ("UnmaskResponse", _unmask_response_fields),
}


def to_fields(msg: object, update: MaskedUpdateInfo | None = None) -> tuple[str, Fields]:
    """The schema name and record fields (envelope excluded) of a message that travels.

    Args:
        msg: one of :data:`WIRE_MESSAGES`.
        update: for a :class:`MaskedInput` only, the remaining ``ModelUpdate`` fields.

    Returns:
        ``(schema name, fields)``; add the envelope before :func:`schemas.codec.encode`.
        For an :class:`EncryptedShare` the envelope's ``sender`` must be ``msg.sender``.

    Raises:
        MessageError: an unknown message type, ``update`` missing or given where it has no use,
            or a masked input that does not fit its words.
    """
    if isinstance(msg, MaskedInput):
        if update is None:
            raise MessageError("a MaskedInput needs MaskedUpdateInfo to become a ModelUpdate")
        return "ModelUpdate", _masked_fields(msg, update)
    if update is not None:
        raise MessageError(f"MaskedUpdateInfo given for a {type(msg).__name__}")
    try:
        name, convert = _TO_FIELDS[type(msg)]
    except KeyError:
        kind = type(msg).__name__
        raise MessageError(f"{kind} is not a secure-aggregation wire message") from None
    return name, convert(msg)


def _own_site(record: Mapping[str, Any], name: str) -> str:
    """``record['site_id']``, refused unless it is the envelope's (signing) sender."""
    site, sender = record["site_id"], record["sender"]
    if site != sender:
        raise MessageError(f"{name}: site_id {site!r} is not the signing sender {sender!r}")
    return str(site)


def _join(r: Mapping[str, Any]) -> CohortJoin:
    return CohortJoin(r["cohort_id"], _own_site(r, "CohortJoin"), r["dh_public_key"],
                      r["enc_public_key"], r["base_version"])


def _roster(r: Mapping[str, Any]) -> CohortRoster:
    members = tuple((m["site_id"], m["dh_public_key"], m["enc_public_key"]) for m in r["members"])
    return CohortRoster(r["cohort_id"], r["target_version"], members, r["threshold"], r["degree"],
                        r["modulus_bits"], r["vector_length"])


def _share(r: Mapping[str, Any]) -> EncryptedShare:
    return EncryptedShare(r["cohort_id"], r["sender"], r["recipient"], r["nonce"], r["ciphertext"])


def _mask_request(r: Mapping[str, Any]) -> MaskRequest:
    return MaskRequest(r["cohort_id"], tuple(r["sharers"]))


def _unmask_request(r: Mapping[str, Any]) -> UnmaskRequest:
    return UnmaskRequest(r["cohort_id"], tuple(r["survivors"]), tuple(r["dropped"]))


def _unmask_response(r: Mapping[str, Any]) -> UnmaskResponse:
    return UnmaskResponse(
        r["cohort_id"], _own_site(r, "UnmaskResponse"),
        tuple((e["owner"], e["share"]) for e in r["self_mask_shares"]),
        tuple((e["owner"], e["share"]) for e in r["key_shares"]),
    )


def _masked_input(r: Mapping[str, Any]) -> MaskedInput:
    site = _own_site(r, "ModelUpdate")
    if r["mode"] != "masked" or r["cohort_id"] is None or r.get("masked_weight") is None:
        raise MessageError("ModelUpdate: not a masked update (mode, cohort_id, masked_weight)")
    width = MASKED_CODECS.get(r["codec"])
    if width is None:
        raise MessageError(f"ModelUpdate: codec {r['codec']!r} is not one of {list(MASKED_CODECS)}")
    if len(r["vector"]) != width * r["n_parameters"]:
        raise MessageError(
            f"ModelUpdate: {len(r['vector'])} bytes for {r['n_parameters']} {r['codec']} words"
        )
    return MaskedInput(r["cohort_id"], site, r["vector"], _from_long(r["masked_weight"], width))


_FROM_RECORD: Mapping[str, Callable[[Mapping[str, Any]], WireMessage]] = {
    "CohortJoin": _join,
    "CohortRoster": _roster,
    "EncryptedShare": _share,
    "MaskRequest": _mask_request,
    "ModelUpdate": _masked_input,
    "UnmaskRequest": _unmask_request,
    "UnmaskResponse": _unmask_response,
}


def from_record(name: str, record: Mapping[str, Any]) -> WireMessage:
    """Rebuild a message from a decoded record that still has its envelope.

    Args:
        name: schema name as returned by :func:`schemas.codec.decode` (short or ``fedsynth.``).
        record: the decoded record, envelope included; its signature must already be verified.

    Returns:
        The message; a ``ModelUpdate`` becomes a :class:`MaskedInput`.

    Raises:
        MessageError: a schema that carries no secure-aggregation message, a plain update, a
            ``site_id`` other than the envelope's sender, or fields that do not fit together.
    """
    short = name.removeprefix("fedsynth.")
    try:
        convert = _FROM_RECORD[short]
    except KeyError:
        raise MessageError(f"{name} does not carry a secure-aggregation message") from None
    try:
        return convert(record)
    except (KeyError, TypeError) as exc:
        raise MessageError(f"{short}: malformed record ({type(exc).__name__}: {exc})") from exc

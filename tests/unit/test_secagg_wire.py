"""SecAgg+ messages over the Avro wire format: each round-trips, a whole cohort stays exact."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

from fedsynth.errors import MessageError
from fedsynth.secagg import (
    ClientUpdate,
    CohortJoin,
    CohortResult,
    CohortRoster,
    EncryptedShare,
    FixedPointSpec,
    MaskedInput,
    MaskRequest,
    ServerConfig,
    ServerStage,
    UnmaskRequest,
    UnmaskResponse,
)
from fedsynth.secagg.fixedpoint import encode_weighted
from fedsynth.secagg.simulation import Vanish, run_cohort
from fedsynth.secagg.wire import WIRE_MESSAGES, MaskedUpdateInfo, from_record, to_fields
from schemas.codec import decode, encode

FED = "fed-wire"
INFO32 = MaskedUpdateInfo("u-1", 120, 3, 0.5, 0.25, 20)
INFO64 = MaskedUpdateInfo("u-2", 7, 0, 1.5, 0.0, 64)


def _envelope(sender: str) -> dict[str, Any]:
    return {"message_id": str(uuid.uuid4()), "federation_id": FED, "sender": sender,
            "created_at": 1_700_000_000_123, "signature": b""}


def _over_wire(msg: object, sender: str, info: MaskedUpdateInfo | None = None) -> object:
    name, fields = to_fields(msg, info)
    assert not fields.keys() & _envelope(sender).keys()
    data = encode(name, {**_envelope(sender), **fields})
    decoded_name, record = decode(data)
    assert decoded_name == name
    return from_record(decoded_name, record)


def _shares(n: int) -> tuple[tuple[str, bytes], ...]:
    return tuple((f"s{i}", bytes([i]) * 66) for i in range(n))


CASES: list[tuple[object, str, MaskedUpdateInfo | None]] = [
    (CohortJoin("c1", "s0", b"\x01" * 32, b"\x02" * 32, 4), "s0", None),
    (CohortRoster("c1", 5, (("s0", b"a" * 32, b"b" * 32), ("s1", b"c" * 32, b"d" * 32)),
                  2, 1, 24, 1000), "aggregator", None),
    (CohortRoster("c1", 5, (), 2, 1, 24, 0), "aggregator", None),
    (EncryptedShare("c1", "s1", "s0", b"n" * 12, b"c" * 148), "s1", None),
    (MaskRequest("c1", ("s0", "s1", "s2")), "aggregator", None),
    (MaskRequest("c1", ()), "aggregator", None),
    (MaskedInput("c1", "s0", np.arange(9, dtype="<u4").tobytes(), 2**20 - 1), "s0", INFO32),
    (MaskedInput("c1", "s0", np.arange(5, dtype="<u8").tobytes(), 2**64 - 1), "s0", INFO64),
    (MaskedInput("c1", "s0", b"", 2**63), "s0", INFO64),
    (MaskedInput("c1", "s0", b"\xff" * 16, 0), "s0", INFO64),
    (UnmaskRequest("c1", ("s0", "s2"), ("s1",)), "aggregator", None),
    (UnmaskResponse("c1", "s2", _shares(2), (("s1", b"k" * 66),)), "s2", None),
    (UnmaskResponse("c1", "s2", (), ()), "s2", None),
]


@pytest.mark.parametrize(("msg", "sender", "info"), CASES,
                         ids=[f"{type(c[0]).__name__}-{i}" for i, c in enumerate(CASES)])
def test_message_round_trips_through_avro(
    msg: object, sender: str, info: MaskedUpdateInfo | None
) -> None:
    assert _over_wire(msg, sender, info) == msg


def test_masked_input_is_a_masked_model_update() -> None:
    msg = MaskedInput("c9", "s3", np.array([1, 2**64 - 2], dtype="<u8").tobytes(), 2**63 + 5)
    name, fields = to_fields(msg, INFO64)
    assert name == "ModelUpdate"
    assert fields["mode"] == "masked" and fields["cohort_id"] == "c9"
    assert fields["codec"] == "masked-u64" and fields["n_parameters"] == 2
    assert fields["masked_weight"] == 2**63 + 5 - 2**64  # signed two's complement
    assert (fields["update_id"], fields["n_samples"], fields["base_version"]) == ("u-2", 7, 0)
    name32, fields32 = to_fields(MaskedInput("c9", "s3", b"\x00" * 12, 9), INFO32)
    assert fields32["codec"] == "masked-u32" and fields32["n_parameters"] == 3


def test_site_id_must_be_the_signing_sender() -> None:
    for msg, info in [(CohortJoin("c1", "s0", b"a" * 32, b"b" * 32, 0), None),
                      (UnmaskResponse("c1", "s0", (), ()), None),
                      (MaskedInput("c1", "s0", b"\x00" * 8, 1), INFO32)]:
        with pytest.raises(MessageError, match="not the signing sender 'mallory'"):
            _over_wire(msg, "mallory", info)


def test_encrypted_share_takes_its_sender_from_the_envelope() -> None:
    share = EncryptedShare("c1", "s1", "s0", b"n" * 12, b"c" * 148)
    assert "sender" not in to_fields(share)[1]
    got = _over_wire(share, "s4")
    assert isinstance(got, EncryptedShare) and got.sender == "s4"


def _masked_record(**changes: Any) -> dict[str, Any]:
    _, fields = to_fields(MaskedInput("c1", "s0", b"\x00" * 8, 1), INFO32)
    return {**_envelope("s0"), **fields, **changes}


@pytest.mark.parametrize(
    ("changes", "cause"),
    [
        ({"mode": "plain", "cohort_id": None, "masked_weight": None}, "not a masked update"),
        ({"masked_weight": None}, "not a masked update"),
        ({"codec": "quantize8|zstd"}, "codec 'quantize8|zstd'"),
        ({"n_parameters": 3}, "8 bytes for 3 masked-u32 words"),
        ({"masked_weight": 2**32}, "does not fit in 32 bits"),
    ],
    ids=["plain", "no-weight", "codec", "length", "weight-width"],
)
def test_bad_model_updates_are_refused(changes: dict[str, Any], cause: str) -> None:
    with pytest.raises(MessageError, match=cause):
        from_record("ModelUpdate", _masked_record(**changes))


def test_misuse_is_refused() -> None:
    with pytest.raises(MessageError, match="needs MaskedUpdateInfo"):
        to_fields(MaskedInput("c1", "s0", b"", 0))
    with pytest.raises(MessageError, match="MaskedUpdateInfo given for a MaskRequest"):
        to_fields(MaskRequest("c1", ()), INFO32)
    with pytest.raises(MessageError, match="CohortResult is not a secure-aggregation"):
        to_fields(CohortResult("c1", np.zeros(2), 0.0, ()))
    with pytest.raises(MessageError, match="not 4-byte words"):
        to_fields(MaskedInput("c1", "s0", b"\x00" * 6, 0), INFO32)
    with pytest.raises(MessageError, match="does not fit in 64 unsigned bits"):
        to_fields(MaskedInput("c1", "s0", b"", 2**64), INFO64)
    with pytest.raises(MessageError, match="Heartbeat does not carry"):
        from_record("Heartbeat", {})
    with pytest.raises(MessageError, match="MaskRequest: malformed record"):
        from_record("fedsynth.MaskRequest", {"sharers": []})


SPEC = FixedPointSpec(clip=1.0, levels=1 << 10, max_weight=2.0, weight_levels=1 << 8)
D = 24


class WireCarrier:
    """A ``carry`` hook: every message that travels goes through encode and decode."""

    def __init__(self) -> None:
        self.modulus_bits: int | None = None
        self.carried: dict[str, int] = {}

    def __call__(self, sender: str, message: object) -> object:
        if not isinstance(message, WIRE_MESSAGES):
            return message  # CohortResult stays with the aggregator
        if isinstance(message, CohortRoster):
            self.modulus_bits = message.modulus_bits
        info = None
        if isinstance(message, MaskedInput):
            assert self.modulus_bits is not None
            info = MaskedUpdateInfo(str(uuid.uuid4()), 10, 1, 0.1, 0.0, self.modulus_bits)
        if isinstance(message, EncryptedShare):
            sender = message.sender  # a relayed share keeps the site's signed envelope
        got = _over_wire(message, sender, info)
        self.carried[type(message).__name__] = self.carried.get(type(message).__name__, 0) + 1
        return got


def test_cohort_over_the_wire_with_a_dropout_is_exact() -> None:
    rng = np.random.default_rng(11)
    sites = [f"site{i}" for i in range(5)]
    updates = {s: ClientUpdate(rng.normal(scale=0.3, size=D), 1.0 + 0.25 * i, 1)
               for i, s in enumerate(sites)}
    seeds = {s: 40 + i for i, s in enumerate(sites)}
    cfg = ServerConfig(FED, "c-wire", 2, SPEC, D, 3, 4, 5, 3)
    carrier = WireCarrier()
    run = run_cohort(cfg, updates, seeds, {"site2": Vanish.BEFORE_INPUT}, carry=carrier)
    assert run.server.stage == ServerStage.DONE, run.server.failure
    assert set(carrier.carried) == {t.__name__ for t in WIRE_MESSAGES}
    survivors = [s for s in sites if s != "site2"]
    assert run.server.result.survivors == tuple(survivors)
    bits = run.server.roster.modulus_bits
    total = sum(encode_weighted(updates[s].delta, updates[s].weight, SPEC, bits,
                                np.random.default_rng(seeds[s])).astype(np.int64)
                for s in survivors)
    half = 1 << (bits - 1)
    signed = (total + half) % (1 << bits) - half
    assert np.array_equal(run.server.result.sum_vector, signed[:-1] * (SPEC.clip / SPEC.levels))
    assert run.server.result.weight_sum == signed[-1] / SPEC.weight_levels
    direct = run_cohort(cfg, updates, seeds, {"site2": Vanish.BEFORE_INPUT})
    assert np.array_equal(direct.server.result.sum_vector, run.server.result.sum_vector)

"""Client and server state machines: transition tables, refusals, transcript, dropouts."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import pytest

from fedsynth.errors import SecAggError
from fedsynth.secagg import (
    CLIENT_TRANSITIONS,
    SERVER_TRANSITIONS,
    ClientConfig,
    ClientStage,
    ClientState,
    ClientUpdate,
    CohortJoin,
    CohortResult,
    CohortRoster,
    Deadline,
    DuplicateMessageError,
    EncryptedShare,
    FixedPointSpec,
    ForeignMessageError,
    LateInputError,
    MaskedInput,
    MaskRequest,
    OutOfOrderError,
    ServerConfig,
    ServerStage,
    ServerState,
    ShareAuthenticationError,
    ShareRequestError,
    UnmaskRequest,
    UnmaskResponse,
    client_step,
    server_step,
    start_client,
    start_server,
)
from fedsynth.secagg.simulation import Vanish, run_cohort

SPEC = FixedPointSpec(clip=1.0, levels=1 << 10, max_weight=2.0, weight_levels=1 << 8)
D = 16


def _config(n: int = 4, threshold: int = 3, degree: int = 3) -> ServerConfig:
    return ServerConfig("fed", "c1", 2, SPEC, D, threshold, degree, n, min(n, 3))


@dataclass
class Cohort:
    server: ServerState
    clients: dict[str, ClientState]
    pending: list[object]


def _joined(n: int = 4) -> Cohort:
    server, clients, pending = start_server(_config(n)), {}, []
    for i in range(n):
        site = f"s{i}"
        cfg = ClientConfig("fed", "c1", site, SPEC, np.random.default_rng(i))
        clients[site], joins = start_client(cfg, ClientUpdate(np.full(D, 0.1 * i), 1.0, 1))
        server, out = server_step(server, joins[0])
        pending += out
    return Cohort(server, clients, pending)


def _shared(n: int = 4) -> tuple[Cohort, list[EncryptedShare]]:
    """Roster delivered; returns the shares the clients sent (not yet relayed)."""
    c = _joined(n)
    (roster,) = c.pending
    shares: list[EncryptedShare] = []
    for site in c.clients:
        c.clients[site], out = client_step(c.clients[site], roster)
        shares += out
    c.pending = []
    return c, shares


def _relay_all(c: Cohort, shares: list[EncryptedShare]) -> None:
    for share in shares:
        c.server, out = server_step(c.server, share)
        for msg in out:
            if isinstance(msg, EncryptedShare):
                c.clients[msg.recipient], _ = client_step(c.clients[msg.recipient], msg)
            else:
                c.pending.append(msg)


def test_full_cohort_exact_without_dropouts() -> None:
    c, shares = _shared()
    _relay_all(c, shares)
    (mask_request,) = c.pending
    assert isinstance(mask_request, MaskRequest) and c.server.stage == ServerStage.MASKING
    inputs = []
    for site in c.clients:
        c.clients[site], out = client_step(c.clients[site], mask_request)
        inputs += out
    for msg in inputs:
        c.server, out = server_step(c.server, msg)
    (request,) = out
    assert isinstance(request, UnmaskRequest) and request.dropped == ()
    for site in c.clients:
        c.clients[site], (resp,) = client_step(c.clients[site], request)
        c.server, out = server_step(c.server, resp)
    assert c.server.stage == ServerStage.DONE and c.server.result is not None
    assert c.server.result.weight_sum == 4.0
    assert np.allclose(c.server.result.sum_vector, 0.6, atol=4 / SPEC.levels)


def _stage_messages() -> dict[str, object]:
    roster = CohortRoster("c1", 2, (), 3, 3, 20, D)
    return {
        "CohortJoin": CohortJoin("c1", "x", b"a" * 32, b"b" * 32, 0),
        "CohortRoster": roster,
        "EncryptedShare": EncryptedShare("c1", "s1", "s0", b"n" * 12, b"c" * 148),
        "MaskRequest": MaskRequest("c1", ("s0", "s1", "s2")),
        "MaskedInput": MaskedInput("c1", "s0", b"\x00" * 4 * D, 0),
        "UnmaskRequest": UnmaskRequest("c1", ("s0", "s1", "s2"), ()),
        "UnmaskResponse": UnmaskResponse("c1", "s0", (), ()),
        "CohortResult": CohortResult("c1", np.zeros(D), 0.0, ()),
    }


@functools.lru_cache(maxsize=1)
def _client_snapshots() -> tuple[dict[ClientStage, ClientState], dict[str, object]]:
    """Real states of site s0 in every stage, and one real message of every kind for s0."""
    c = _joined(4)
    (roster,) = c.pending
    c.pending = []
    states = {ClientStage.JOINED: c.clients["s0"]}
    shares: list[EncryptedShare] = []
    for site in c.clients:
        c.clients[site], out = client_step(c.clients[site], roster)
        shares += out
    states[ClientStage.SHARING] = c.clients["s0"]
    to_s0 = next(s for s in shares if s.recipient == "s0")
    _relay_all(c, shares)
    (mask_request,) = c.pending
    others = MaskRequest("c1", ("s1", "s2", "s3"))
    states[ClientStage.EXCLUDED], _ = client_step(c.clients["s0"], others)
    states[ClientStage.MASKED], _ = client_step(c.clients["s0"], mask_request)
    unmask = UnmaskRequest("c1", ("s0", "s1", "s2", "s3"), ())
    states[ClientStage.UNMASKED], _ = client_step(states[ClientStage.MASKED], unmask)
    result = CohortResult("c1", np.zeros(D), 4.0, ("s0", "s1", "s2", "s3"))
    states[ClientStage.DONE], _ = client_step(states[ClientStage.UNMASKED], result)
    messages = dict(_stage_messages())
    messages.update(CohortRoster=roster, EncryptedShare=to_s0, MaskRequest=mask_request,
                    UnmaskRequest=unmask, CohortResult=result)
    return states, messages


@pytest.mark.parametrize("stage", list(ClientStage))
@pytest.mark.parametrize("kind", list(_stage_messages()))
def test_client_transition_table(stage: ClientStage, kind: str) -> None:
    states, messages = _client_snapshots()
    state, message = states[stage], messages[kind]
    assert state.stage == stage
    if type(message) not in CLIENT_TRANSITIONS[stage]:
        with pytest.raises(OutOfOrderError):
            client_step(state, message)  # type: ignore[arg-type]
        return
    try:
        new, _ = client_step(state, message)  # type: ignore[arg-type]
    except SecAggError as exc:  # accepted type, refused on content (e.g. a share already held)
        assert not isinstance(exc, OutOfOrderError)
    else:
        assert new.stage in CLIENT_TRANSITIONS[stage][type(message)]


@pytest.mark.parametrize("stage", list(ServerStage))
@pytest.mark.parametrize("kind", list(_stage_messages()))
def test_server_transition_table(stage: ServerStage, kind: str) -> None:
    state = replace(start_server(_config(3)), stage=stage)
    message = _stage_messages()[kind]
    allowed = type(message) in SERVER_TRANSITIONS[stage]
    if kind == "MaskedInput" and stage in (ServerStage.UNMASKING, ServerStage.DONE,
                                           ServerStage.FAILED):
        with pytest.raises(LateInputError):
            server_step(state, message)  # type: ignore[arg-type]
    elif not allowed:
        with pytest.raises(OutOfOrderError):
            server_step(state, message)  # type: ignore[arg-type]
    else:
        try:
            new, _ = server_step(state, message)  # type: ignore[arg-type]
        except SecAggError as exc:  # accepted type, refused on content
            assert not isinstance(exc, OutOfOrderError)
        else:
            assert new.stage in SERVER_TRANSITIONS[stage][type(message)]


def test_server_valid_path_and_stale_deadline() -> None:
    c = _joined(3)
    assert c.server.stage == ServerStage.SHARING
    same, out = server_step(c.server, Deadline("c1", ServerStage.JOINING))
    assert same is c.server and out == []
    failed, _ = server_step(c.server, Deadline("c1", ServerStage.SHARING))
    assert failed.stage == ServerStage.FAILED  # nobody shared: fewer than t sharers


def test_tampered_replayed_and_misaddressed_shares_rejected() -> None:
    c, shares = _shared()
    share = next(s for s in shares if s.recipient == "s0")
    tampered = replace(share, ciphertext=bytes([share.ciphertext[0] ^ 1]) + share.ciphertext[1:])
    with pytest.raises(ShareAuthenticationError):
        client_step(c.clients["s0"], tampered)
    with pytest.raises(ForeignMessageError):
        client_step(c.clients["s1"], share)  # addressed to s0
    with pytest.raises(ShareAuthenticationError):  # claims another sender
        client_step(c.clients["s0"], replace(share, sender=next(
            s for s in c.clients if s not in (share.sender, "s0"))))
    state, _ = client_step(c.clients["s0"], share)
    with pytest.raises(DuplicateMessageError):
        client_step(state, share)
    with pytest.raises(ForeignMessageError):  # replayed into another cohort
        client_step(state, replace(share, cohort_id="c2"))
    c.server, _ = server_step(c.server, share)
    with pytest.raises(DuplicateMessageError):
        server_step(c.server, share)


def test_share_from_other_cohort_fails_authentication() -> None:
    c, shares = _shared()
    other = replace(c.clients["s0"], config=replace(c.clients["s0"].config, cohort_id="c9"))
    share = replace(next(s for s in shares if s.recipient == "s0"), cohort_id="c9")
    with pytest.raises(ShareAuthenticationError):
        client_step(other, share)


def _masked(n: int = 4) -> tuple[Cohort, list[MaskedInput]]:
    c, shares = _shared(n)
    _relay_all(c, shares)
    (mask_request,) = c.pending
    inputs = []
    for site in c.clients:
        c.clients[site], out = client_step(c.clients[site], mask_request)
        inputs += out
    c.pending = []
    return c, inputs


def test_client_refuses_both_kinds_and_second_request() -> None:
    c, _ = _masked()
    with pytest.raises(ShareRequestError):
        client_step(c.clients["s0"], UnmaskRequest("c1", ("s0", "s1", "s2", "s3"), ("s3",)))
    with pytest.raises(ShareRequestError):  # a sharer missing from both lists
        client_step(c.clients["s0"], UnmaskRequest("c1", ("s0", "s1", "s2"), ()))
    state, _ = client_step(c.clients["s0"], UnmaskRequest("c1", ("s0", "s1", "s2"), ("s3",)))
    with pytest.raises(OutOfOrderError):
        client_step(state, UnmaskRequest("c1", ("s0", "s1", "s2", "s3"), ()))


def test_late_input_refused_and_wrong_share_kind_refused() -> None:
    c, inputs = _masked()
    for msg in inputs[:3]:
        c.server, _ = server_step(c.server, msg)
    c.server, (request,) = server_step(c.server, Deadline("c1", ServerStage.MASKING))
    assert isinstance(request, UnmaskRequest) and request.dropped == (inputs[3].site_id,)
    with pytest.raises(LateInputError):
        server_step(c.server, inputs[3])
    dropped = request.dropped[0]
    survivor = request.survivors[0]
    bad = UnmaskResponse("c1", survivor, ((dropped, b"\x00" * 66),), ())
    with pytest.raises(ShareRequestError):
        server_step(c.server, bad)
    assert c.server.self_shares == {} and c.server.key_shares == {}


def test_transcript_never_holds_both_shares_for_a_site() -> None:
    rng = np.random.default_rng(5)
    updates = {f"s{i}": ClientUpdate(rng.normal(size=D), 1.0, 1) for i in range(6)}
    cfg = ServerConfig("fed", "c1", 2, SPEC, D, 4, 5, 6, 4)
    run = run_cohort(cfg, updates, {s: i for i, s in enumerate(updates)},
                     {"s1": Vanish.BEFORE_INPUT, "s4": Vanish.BEFORE_UNMASK})
    assert run.server.stage == ServerStage.DONE
    assert set(run.server.self_shares).isdisjoint(run.server.key_shares)
    assert "s1" in run.server.key_shares and "s1" not in run.server.self_shares
    for msg in run.transcript:
        if isinstance(msg, UnmaskResponse):
            assert {o for o, _ in msg.self_mask_shares}.isdisjoint(o for o, _ in msg.key_shares)


def test_foreign_cohort_and_non_member_refused() -> None:
    c, inputs = _masked()
    with pytest.raises(ForeignMessageError):
        server_step(c.server, replace(inputs[0], cohort_id="other"))
    with pytest.raises(ForeignMessageError):
        server_step(c.server, replace(inputs[0], site_id="stranger"))
    with pytest.raises(ForeignMessageError):
        client_step(c.clients["s0"], CohortResult("other", np.zeros(D), 0.0, ()))

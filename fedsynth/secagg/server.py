"""Sans-I/O aggregator side of SecAgg+ (Bell et al., CCS 2020; Bonawitz et al., CCS 2017).

``start_server(config)`` opens a cohort; ``server_step(state, message)`` takes one join, share,
masked input, unmask response or local :class:`Deadline` and returns the new state and the messages
to publish. Stages: JOINING -(K joins or deadline)-> SHARING -(all shares or deadline)-> MASKING
-(all inputs or deadline: survivor set fixed)-> UNMASKING -(enough shares)-> DONE; FAILED when too
few members remain. The transcript keeps self-mask shares only of survivors and key shares only of
dropped members, and refuses any response that mixes them.

Persistence: ``server_to_doc`` turns an unfinished state into a JSON-ready document plus the masked
running sum (an array), and ``server_from_doc`` rebuilds the same state from them, so an aggregator
that checkpoints them can finish a cohort after a restart instead of abandoning it. Only what
messages brought is kept (joins, who shared with whom, who sent input, the shares collected so
far); the roster, neighbour graph and recovery facts are recomputed from it, as they are functions
of the joins and the survivor set. The document holds the Shamir shares collected while unmasking,
so it must be stored as confidentially as the running state (the aggregator encrypts it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsynth.errors import MessageError
from fedsynth.secagg import shamir
from fedsynth.secagg.errors import (
    DuplicateMessageError,
    ForeignMessageError,
    LateInputError,
    OutOfOrderError,
    RecoveryError,
    ShareRequestError,
    UnsafeParametersError,
)
from fedsynth.secagg.fixedpoint import FixedPointSpec, decode_sum, dtype_for, required_modulus_bits
from fedsynth.secagg.graph import check_threshold, neighbour_graph, share_points
from fedsynth.secagg.messages import (
    CohortJoin,
    CohortResult,
    CohortRoster,
    Deadline,
    EncryptedShare,
    MaskedInput,
    MaskRequest,
    UnmaskRequest,
    UnmaskResponse,
)
from fedsynth.secagg.unmask import Recovery, ready, recover_sum

__all__ = [
    "SERVER_TRANSITIONS",
    "ServerConfig",
    "ServerMessage",
    "ServerStage",
    "ServerState",
    "server_from_doc",
    "server_step",
    "server_to_doc",
    "start_server",
]

ServerMessage = CohortJoin | EncryptedShare | MaskedInput | UnmaskResponse | Deadline
Outbound = CohortRoster | EncryptedShare | MaskRequest | UnmaskRequest | CohortResult


class ServerStage(StrEnum):
    """Where the aggregator is in one cohort."""

    JOINING = "joining"
    SHARING = "sharing"
    MASKING = "masking"
    UNMASKING = "unmasking"
    DONE = "done"
    FAILED = "failed"


_ANY = frozenset(ServerStage)
SERVER_TRANSITIONS: Mapping[ServerStage, Mapping[type, frozenset[ServerStage]]] = {
    ServerStage.JOINING: {
        CohortJoin: frozenset({ServerStage.JOINING, ServerStage.SHARING}),
        Deadline: frozenset({ServerStage.SHARING, ServerStage.FAILED}),
    },
    ServerStage.SHARING: {
        EncryptedShare: frozenset({ServerStage.SHARING, ServerStage.MASKING, ServerStage.FAILED}),
        Deadline: frozenset({ServerStage.MASKING, ServerStage.FAILED}),
    },
    ServerStage.MASKING: {
        MaskedInput: frozenset({ServerStage.MASKING, ServerStage.UNMASKING, ServerStage.FAILED}),
        Deadline: frozenset({ServerStage.UNMASKING, ServerStage.FAILED}),
    },
    ServerStage.UNMASKING: {
        UnmaskResponse: frozenset({ServerStage.UNMASKING, ServerStage.DONE, ServerStage.FAILED}),
        Deadline: frozenset({ServerStage.FAILED}),
    },
    ServerStage.DONE: {UnmaskResponse: frozenset({ServerStage.DONE})},
    ServerStage.FAILED: {},
}
"""Message types each stage accepts and the stages they may lead to; anything else is refused.
A masked input after MASKING raises :class:`LateInputError`; a stale deadline changes nothing;
unmask responses arriving after the result are dropped unread (the sum needs no more shares)."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One cohort's fixed parameters.

    Attributes:
        federation_id: bound into keys and shares.
        cohort_id: the cohort.
        target_version: ``v_c``, published in the roster.
        spec: the federation's fixed-point parameters.
        vector_length: length of every update.
        threshold: Shamir threshold ``t``.
        degree: neighbour-graph degree ``k`` (``>= max_members - 1``: complete graph).
        max_members: ``K``; the roster closes when this many have joined.
        min_members: fewest members a roster may have at the join deadline.
    """

    federation_id: str
    cohort_id: str
    target_version: int
    spec: FixedPointSpec
    vector_length: int
    threshold: int
    degree: int
    max_members: int
    min_members: int

    def __post_init__(self) -> None:
        if not 2 <= self.min_members <= self.max_members:
            raise UnsafeParametersError("need 2 <= min_members <= max_members")
        if self.vector_length < 1:
            raise UnsafeParametersError("vector_length must be positive")
        for n in (self.min_members, self.max_members):
            check_threshold(self.threshold, self.degree, n)
        required_modulus_bits(self.spec, self.max_members)


@dataclass(frozen=True, slots=True, eq=False)
class ServerState:
    """The aggregator's view of one cohort (no secrets until shares are combined)."""

    stage: ServerStage
    config: ServerConfig
    joins: Mapping[str, CohortJoin] = field(default_factory=dict)
    roster: CohortRoster | None = None
    graph: Mapping[str, frozenset[str]] = field(default_factory=dict)
    relayed: Mapping[str, frozenset[str]] = field(default_factory=dict)
    sharers: tuple[str, ...] = ()
    inputs: frozenset[str] = frozenset()
    total: npt.NDArray[np.unsignedinteger] | None = None
    recovery: Recovery | None = None
    self_shares: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    key_shares: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    responded: frozenset[str] = frozenset()
    result: CohortResult | None = None
    failure: str = ""


def start_server(config: ServerConfig) -> ServerState:
    """Open a cohort in stage JOINING."""
    return ServerState(ServerStage.JOINING, config)


def server_step(state: ServerState, message: ServerMessage) -> tuple[ServerState, list[Outbound]]:
    """Apply one inbound message or deadline.

    Raises:
        ForeignMessageError: another cohort, or a sender that is not a member / sharer / survivor.
        OutOfOrderError: a message type the current stage does not accept.
        DuplicateMessageError: a repeated join, share, input or response.
        LateInputError: a masked input after the survivor set was fixed.
        ShareRequestError: a response holding a share kind not asked for that owner.
        MessageError: a malformed vector or share.
    """
    if message.cohort_id != state.config.cohort_id:
        raise ForeignMessageError(f"message for cohort {message.cohort_id!r}")
    if isinstance(message, Deadline):
        if message.stage != state.stage:
            return state, []
        return _on_deadline(state)
    if isinstance(message, MaskedInput) and state.stage in _AFTER_MASKING:
        raise LateInputError(f"input from {message.site_id!r} after the survivor set was fixed")
    if type(message) not in SERVER_TRANSITIONS[state.stage]:
        raise OutOfOrderError(f"{type(message).__name__} not accepted in stage {state.stage}")
    if isinstance(message, CohortJoin):
        return _on_join(state, message)
    if isinstance(message, EncryptedShare):
        return _on_share(state, message)
    if isinstance(message, MaskedInput):
        return _on_input(state, message)
    if state.stage == ServerStage.DONE:
        return state, []
    return _on_response(state, message)


_AFTER_MASKING = frozenset({ServerStage.UNMASKING, ServerStage.DONE, ServerStage.FAILED})


def _fail(state: ServerState, reason: str) -> tuple[ServerState, list[Outbound]]:
    return replace(state, stage=ServerStage.FAILED, failure=reason), []


def _on_deadline(state: ServerState) -> tuple[ServerState, list[Outbound]]:
    if state.stage == ServerStage.JOINING:
        if len(state.joins) < state.config.min_members:
            return _fail(state, f"only {len(state.joins)} joins at the deadline")
        return _close_joins(state)
    if state.stage == ServerStage.SHARING:
        return _close_sharing(state)
    if state.stage == ServerStage.MASKING:
        return _close_inputs(state)
    return _fail(state, "too few unmask responses at the deadline")


def _on_join(state: ServerState, join: CohortJoin) -> tuple[ServerState, list[Outbound]]:
    if join.site_id in state.joins:
        raise DuplicateMessageError(f"second join from {join.site_id!r}")
    if join.base_version > state.config.target_version:
        raise MessageError(f"base version {join.base_version} is ahead of the target version")
    keys = {k for j in state.joins.values() for k in (j.dh_public_key, j.enc_public_key)}
    fresh = {join.dh_public_key, join.enc_public_key}
    if fresh & keys or len(fresh) < 2:
        raise DuplicateMessageError(f"join of {join.site_id!r} reuses a public key")
    new = replace(state, joins={**state.joins, join.site_id: join})
    if len(new.joins) >= state.config.max_members:
        return _close_joins(new)
    return new, []


def _roster(
    cfg: ServerConfig, joins: Mapping[str, CohortJoin]
) -> tuple[CohortRoster, dict[str, frozenset[str]]]:
    """The roster and neighbour graph of the joined members (a function of the joins alone)."""
    ids = sorted(joins)
    members = tuple((s, joins[s].dh_public_key, joins[s].enc_public_key) for s in ids)
    roster = CohortRoster(cfg.cohort_id, cfg.target_version, members, cfg.threshold, cfg.degree,
                          required_modulus_bits(cfg.spec, len(ids)), cfg.vector_length)
    return roster, neighbour_graph(ids, cfg.cohort_id, cfg.degree)


def _close_joins(state: ServerState) -> tuple[ServerState, list[Outbound]]:
    roster, graph = _roster(state.config, state.joins)
    return replace(state, stage=ServerStage.SHARING, roster=roster, graph=graph), [roster]


def _on_share(state: ServerState, share: EncryptedShare) -> tuple[ServerState, list[Outbound]]:
    if share.sender not in state.graph or share.recipient not in state.graph[share.sender]:
        raise ForeignMessageError(f"share {share.sender!r} -> {share.recipient!r} not in the graph")
    done = state.relayed.get(share.sender, frozenset())
    if share.recipient in done:
        raise DuplicateMessageError(f"second share {share.sender!r} -> {share.recipient!r}")
    new = replace(state, relayed={**state.relayed, share.sender: done | {share.recipient}})
    if all(new.relayed.get(s, frozenset()) == nb for s, nb in new.graph.items()):
        closed, out = _close_sharing(new)
        return closed, [share, *out]
    return new, [share]


def _close_sharing(state: ServerState) -> tuple[ServerState, list[Outbound]]:
    sharers = tuple(s for s in sorted(state.graph) if state.relayed.get(s) == state.graph[s])
    if len(sharers) < state.config.threshold:
        return _fail(state, f"only {len(sharers)} members completed sharing")
    new = replace(state, stage=ServerStage.MASKING, sharers=sharers)
    return new, [MaskRequest(state.config.cohort_id, sharers)]


def _on_input(state: ServerState, masked: MaskedInput) -> tuple[ServerState, list[Outbound]]:
    if masked.site_id not in state.sharers:
        raise ForeignMessageError(f"input from {masked.site_id!r}, not a sharer")
    if masked.site_id in state.inputs:
        raise DuplicateMessageError(f"second input from {masked.site_id!r}")
    roster = state.roster
    if roster is None:
        raise OutOfOrderError("no roster")
    dtype = dtype_for(roster.modulus_bits)
    if len(masked.masked_vector) != roster.vector_length * dtype.itemsize:
        raise MessageError(f"masked vector of {len(masked.masked_vector)} bytes, wrong length")
    if not 0 <= masked.masked_weight < 1 << roster.modulus_bits:
        raise MessageError("masked weight outside the modulus")
    vec = np.frombuffer(masked.masked_vector, dtype=dtype.newbyteorder("<"))
    total = np.empty(roster.vector_length + 1, dtype=dtype)  # a new array: states stay as they were
    if state.total is None:
        total[:-1] = vec
        total[-1] = masked.masked_weight
    else:  # the sum wraps at the dtype's width, a multiple of the modulus (reduced at the end)
        np.add(state.total[:-1], vec, out=total[:-1])
        np.add(state.total[-1:], np.array([masked.masked_weight], dtype), out=total[-1:])
    new = replace(state, inputs=state.inputs | {masked.site_id}, total=total)
    if new.inputs == frozenset(state.sharers):
        return _close_inputs(new)
    return new, []


def _recovery(state: ServerState, roster: CohortRoster) -> Recovery:
    """What unmasking needs once the survivor set is fixed (sharers that sent input)."""
    cfg = state.config
    survivors = tuple(s for s in state.sharers if s in state.inputs)
    dropped = tuple(s for s in state.sharers if s not in state.inputs)
    return Recovery(cfg.federation_id, cfg.cohort_id, cfg.threshold, roster.modulus_bits,
                    state.graph, share_points([m[0] for m in roster.members]),
                    {m[0]: m[1] for m in roster.members}, survivors, dropped)


def _close_inputs(state: ServerState) -> tuple[ServerState, list[Outbound]]:
    cfg, roster = state.config, state.roster
    survivors = tuple(s for s in state.sharers if s in state.inputs)
    if roster is None or len(survivors) < cfg.threshold:
        return _fail(state, f"only {len(survivors)} masked inputs at the deadline")
    rec = _recovery(state, roster)
    new = replace(state, stage=ServerStage.UNMASKING, recovery=rec)
    return new, [UnmaskRequest(cfg.cohort_id, rec.survivors, rec.dropped)]


def _on_response(state: ServerState, resp: UnmaskResponse) -> tuple[ServerState, list[Outbound]]:
    rec = state.recovery
    if rec is None or resp.site_id not in rec.survivors:
        raise ForeignMessageError(f"unmask response from {resp.site_id!r}, not a survivor")
    if resp.site_id in state.responded:
        raise DuplicateMessageError(f"second unmask response from {resp.site_id!r}")
    self_new = _collect(rec, resp.site_id, resp.self_mask_shares, set(rec.survivors), "self-mask")
    key_new = _collect(rec, resp.site_id, resp.key_shares, set(rec.dropped), "key")
    new = replace(
        state,
        responded=state.responded | {resp.site_id},
        self_shares=_merge(state.self_shares, resp.site_id, self_new),
        key_shares=_merge(state.key_shares, resp.site_id, key_new),
    )
    if not ready(rec, new.self_shares, new.key_shares):
        return new, []
    return _finish(new, rec)


def _collect(
    rec: Recovery, holder: str, pairs: tuple[tuple[str, bytes], ...], allowed: set[str], kind: str
) -> dict[str, int]:
    out: dict[str, int] = {}
    for owner, raw in pairs:
        if owner not in allowed:
            raise ShareRequestError(f"{kind} share of {owner!r} was not requested")
        if owner in out or holder not in rec.graph[owner] | {owner}:
            raise ForeignMessageError(f"{holder!r} cannot hold a {kind} share of {owner!r}")
        try:
            out[owner] = shamir.decode_share(raw)
        except RecoveryError as exc:
            raise MessageError(str(exc)) from exc
    return out


def _merge(
    shares: Mapping[str, Mapping[str, int]], holder: str, new: dict[str, int]
) -> dict[str, Mapping[str, int]]:
    merged = dict(shares)
    for owner, value in new.items():
        merged[owner] = {**merged.get(owner, {}), holder: value}
    return merged


def _finish(state: ServerState, rec: Recovery) -> tuple[ServerState, list[Outbound]]:
    if state.total is None:
        return _fail(state, "no masked inputs")
    try:
        plain = recover_sum(rec, state.total, state.self_shares, state.key_shares)
    except RecoveryError as exc:
        return _fail(state, str(exc))
    vector, weight = decode_sum(plain, state.config.spec, rec.modulus_bits)
    result = CohortResult(state.config.cohort_id, vector, weight, rec.survivors)
    return replace(state, stage=ServerStage.DONE, result=result), [result]


# ----------------------------------------------------------------------------- persistence
_PERSISTED = (ServerStage.JOINING, ServerStage.SHARING, ServerStage.MASKING, ServerStage.UNMASKING)


def server_to_doc(
    state: ServerState,
) -> tuple[dict[str, Any], npt.NDArray[np.unsignedinteger] | None]:
    """An unfinished state as ``(JSON-ready document, masked running sum or None)``.

    Raises:
        OutOfOrderError: the cohort is DONE or FAILED (a finished cohort is not resumed).
    """
    if state.stage not in _PERSISTED:
        raise OutOfOrderError(f"a cohort in stage {state.stage} is not persisted")

    def shares(by_owner: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, str]]:
        return {o: {h: format(v, "x") for h, v in sorted(hs.items())}
                for o, hs in sorted(by_owner.items())}

    doc: dict[str, Any] = {
        "stage": str(state.stage),
        "joins": [[j.site_id, j.dh_public_key.hex(), j.enc_public_key.hex(), j.base_version]
                  for _, j in sorted(state.joins.items())],
        "relayed": {s: sorted(r) for s, r in sorted(state.relayed.items())},
        "sharers": list(state.sharers),
        "inputs": sorted(state.inputs),
        "self_shares": shares(state.self_shares),
        "key_shares": shares(state.key_shares),
        "responded": sorted(state.responded),
    }
    return doc, state.total


def server_from_doc(
    config: ServerConfig,
    doc: Mapping[str, Any],
    total: npt.NDArray[np.unsignedinteger] | None,
) -> ServerState:
    """Inverse of :func:`server_to_doc` for the cohort ``config`` describes.

    Raises:
        MessageError: the document or the running sum does not fit the configuration.
    """
    try:
        stage = ServerStage(str(doc["stage"]))
        if stage not in _PERSISTED:
            raise MessageError(f"stage {stage} is not resumable")
        joins = {
            str(site): CohortJoin(config.cohort_id, str(site), bytes.fromhex(dh),
                                  bytes.fromhex(enc), int(base))
            for site, dh, enc, base in doc["joins"]
        }

        def shares(raw: Mapping[str, Mapping[str, str]]) -> dict[str, Mapping[str, int]]:
            return {str(o): {str(h): int(v, 16) for h, v in hs.items()}
                    for o, hs in raw.items()}

        state = ServerState(
            stage,
            config,
            joins=joins,
            relayed={str(k): frozenset(map(str, v)) for k, v in doc["relayed"].items()},
            sharers=tuple(map(str, doc["sharers"])),
            inputs=frozenset(map(str, doc["inputs"])),
            self_shares=shares(doc["self_shares"]),
            key_shares=shares(doc["key_shares"]),
            responded=frozenset(map(str, doc["responded"])),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MessageError(f"cohort state document is malformed: {exc!r}") from exc
    if stage is ServerStage.JOINING:
        return state
    roster, graph = _roster(config, joins)
    state = replace(state, roster=roster, graph=graph)
    if not set(state.relayed) <= set(graph) or not set(state.sharers) <= set(graph):
        raise MessageError("cohort state names senders that are not members")
    if state.inputs:
        dtype = dtype_for(roster.modulus_bits)
        if (total is None or total.dtype != dtype
                or total.shape != (config.vector_length + 1,)):
            raise MessageError("masked running sum does not match the roster")
        state = replace(state, total=total)
    if stage is ServerStage.UNMASKING:
        state = replace(state, recovery=_recovery(state, roster))
    return state

"""Sans-I/O client of SecAgg+ (Bell et al., CCS 2020; Bonawitz et al., CCS 2017).

``start_client`` makes fresh keys and the join; ``client_step(state, message)`` returns the new
state and the messages to send. States are frozen; nothing here does I/O, reads a clock or keeps
globals. Stages: JOINED -(roster)-> SHARING -(mask request)-> MASKED -(unmask request)-> UNMASKED
-(result)-> DONE, or EXCLUDED when the aggregator leaves this site out. A site answers exactly one
unmask request and refuses one that names a site both as survivor and as dropped, so it never gives
both kinds of share for one peer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from fedsynth.errors import MessageError
from fedsynth.secagg import shamir
from fedsynth.secagg.crypto import KeyPair, decrypt_share, encrypt_share, generate_keypair
from fedsynth.secagg.errors import (
    DuplicateMessageError,
    ForeignMessageError,
    OutOfOrderError,
    ShareRequestError,
)
from fedsynth.secagg.fixedpoint import FixedPointSpec, check_modulus, encode_weighted
from fedsynth.secagg.graph import check_threshold, neighbour_graph, share_points
from fedsynth.secagg.masking import (
    add_masks,
    pair_sign,
    pairwise_seed,
    reduce_modulus,
    share_associated_data,
    share_key,
)
from fedsynth.secagg.messages import (
    CohortJoin,
    CohortResult,
    CohortRoster,
    EncryptedShare,
    MaskedInput,
    MaskRequest,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = [
    "CLIENT_TRANSITIONS",
    "ClientConfig",
    "ClientMessage",
    "ClientOutbound",
    "ClientStage",
    "ClientState",
    "ClientUpdate",
    "client_step",
    "start_client",
]

ClientMessage = CohortRoster | EncryptedShare | MaskRequest | UnmaskRequest | CohortResult
ClientOutbound = EncryptedShare | MaskedInput | UnmaskResponse
_PAIR = 2 * shamir.SHARE_BYTES


class ClientStage(StrEnum):
    """Where a site is in one cohort."""

    JOINED = "joined"
    SHARING = "sharing"
    MASKED = "masked"
    UNMASKED = "unmasked"
    DONE = "done"
    EXCLUDED = "excluded"


CLIENT_TRANSITIONS: Mapping[ClientStage, Mapping[type, frozenset[ClientStage]]] = {
    ClientStage.JOINED: {CohortRoster: frozenset({ClientStage.SHARING})},
    ClientStage.SHARING: {
        EncryptedShare: frozenset({ClientStage.SHARING}),
        MaskRequest: frozenset({ClientStage.MASKED, ClientStage.EXCLUDED}),
    },
    ClientStage.MASKED: {
        EncryptedShare: frozenset({ClientStage.MASKED}),
        UnmaskRequest: frozenset({ClientStage.UNMASKED, ClientStage.EXCLUDED}),
    },
    ClientStage.UNMASKED: {CohortResult: frozenset({ClientStage.DONE})},
    ClientStage.DONE: {},
    ClientStage.EXCLUDED: {},
}
"""Message types each stage accepts and the stages they may lead to; anything else is refused."""


def _constant(_staleness: int) -> float:
    return 1.0


@dataclass(frozen=True, slots=True, eq=False)
class ClientConfig:
    """Who the site is and the federation's agreed parameters.

    Attributes:
        federation_id: bound into every derived key and share.
        cohort_id: the cohort this state machine belongs to.
        site_id: this site.
        spec: the federation's fixed-point parameters.
        rng: stochastic-rounding draws (not secret; masks use AES-CTR).
    """

    federation_id: str
    cohort_id: str
    site_id: str
    spec: FixedPointSpec
    rng: np.random.Generator


@dataclass(frozen=True, slots=True, eq=False)
class ClientUpdate:
    """The site's finished update: ``delta``, a base weight and a staleness function.

    The weight masked is ``weight * staleness(target_version - base_version)``.
    """

    delta: npt.NDArray[np.floating]
    weight: float
    base_version: int
    staleness: Callable[[int], float] = _constant


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class ClientState:
    """Everything a site knows about one cohort (secrets included: never log it)."""

    stage: ClientStage
    config: ClientConfig
    update: ClientUpdate
    dh: KeyPair
    enc: KeyPair
    self_seed: bytes
    roster: CohortRoster | None = None
    neighbours: frozenset[str] = frozenset()
    held: Mapping[str, tuple[bytes, bytes]] = field(default_factory=dict)
    sharers: frozenset[str] = frozenset()


def start_client(
    config: ClientConfig, update: ClientUpdate
) -> tuple[ClientState, list[CohortJoin]]:
    """Create fresh keys and a self-mask seed; return the JOINED state and the join message."""
    dh, enc = generate_keypair(), generate_keypair()
    state = ClientState(ClientStage.JOINED, config, update, dh, enc, os.urandom(32))
    join = CohortJoin(config.cohort_id, config.site_id, dh.public, enc.public, update.base_version)
    return state, [join]


def client_step(
    state: ClientState, message: ClientMessage
) -> tuple[ClientState, list[ClientOutbound]]:
    """Apply one inbound message.

    Raises:
        ForeignMessageError: another cohort, recipient, or a sender outside this site's neighbours.
        OutOfOrderError: a message type the current stage does not accept.
        DuplicateMessageError: a second share from the same sender.
        ShareAuthenticationError: a share that fails AES-GCM authentication.
        ShareRequestError: an unmask request that would reveal both shares of one site.
        UnsafeParametersError: roster parameters that could wrap or leak.
    """
    if getattr(message, "cohort_id", None) != state.config.cohort_id:
        raise ForeignMessageError(f"message for cohort {getattr(message, 'cohort_id', None)!r}")
    accepted = CLIENT_TRANSITIONS[state.stage]
    if type(message) not in accepted:
        raise OutOfOrderError(f"{type(message).__name__} not accepted in stage {state.stage}")
    if isinstance(message, CohortRoster):
        return _on_roster(state, message)
    if isinstance(message, EncryptedShare):
        return _on_share(state, message), []
    if isinstance(message, MaskRequest):
        return _on_mask_request(state, message)
    if isinstance(message, UnmaskRequest):
        return _on_unmask_request(state, message)
    return replace(state, stage=ClientStage.DONE), []


def _roster(state: ClientState) -> CohortRoster:
    if state.roster is None:
        raise OutOfOrderError(f"no roster yet in stage {state.stage}")
    return state.roster


def _check_roster(state: ClientState, roster: CohortRoster) -> None:
    cfg = state.config
    ids = [m[0] for m in roster.members]
    if ids != sorted(set(ids)):
        raise MessageError("roster members must be unique and sorted by site id")
    mine = dict((m[0], (m[1], m[2])) for m in roster.members).get(cfg.site_id)
    if mine != (state.dh.public, state.enc.public):
        raise ForeignMessageError("roster does not hold this site's join keys")
    if roster.vector_length != np.asarray(state.update.delta).size:
        raise MessageError(f"roster vector_length {roster.vector_length} != update size")
    if roster.target_version < state.update.base_version:
        raise MessageError("roster target version precedes this site's base version")
    check_threshold(roster.threshold, roster.degree, len(ids))
    check_modulus(cfg.spec, len(ids), roster.modulus_bits)


def _on_roster(
    state: ClientState, roster: CohortRoster
) -> tuple[ClientState, list[ClientOutbound]]:
    _check_roster(state, roster)
    cfg = state.config
    ids = [m[0] for m in roster.members]
    enc_keys = {m[0]: m[2] for m in roster.members}
    neighbours = neighbour_graph(ids, cfg.cohort_id, roster.degree)[cfg.site_id]
    holders = sorted(neighbours | {cfg.site_id})
    points = share_points(ids)
    xs = [points[h] for h in holders]
    seed_shares = shamir.split(state.self_seed, roster.threshold, xs)
    key_shares = shamir.split(state.dh.private, roster.threshold, xs)
    held: dict[str, tuple[bytes, bytes]] = {}
    out: list[ClientOutbound] = []
    for holder, b_share, k_share in zip(holders, seed_shares, key_shares, strict=True):
        pair = (shamir.encode_share(b_share), shamir.encode_share(k_share))
        if holder == cfg.site_id:
            held[holder] = pair
            continue
        key = share_key(state.enc.private, enc_keys[holder], cfg.federation_id, cfg.cohort_id,
                        cfg.site_id, holder)
        ad = share_associated_data(cfg.federation_id, cfg.cohort_id, cfg.site_id, holder)
        nonce, ct = encrypt_share(key, pair[0] + pair[1], ad)
        out.append(EncryptedShare(cfg.cohort_id, cfg.site_id, holder, nonce, ct))
    new = replace(state, stage=ClientStage.SHARING, roster=roster, neighbours=neighbours, held=held)
    return new, out


def _on_share(state: ClientState, share: EncryptedShare) -> ClientState:
    cfg = state.config
    if share.recipient != cfg.site_id:
        raise ForeignMessageError(f"share addressed to {share.recipient!r}")
    if share.sender not in state.neighbours:
        raise ForeignMessageError(f"share from {share.sender!r}, not a neighbour")
    if share.sender in state.held:
        raise DuplicateMessageError(f"second share from {share.sender!r}")
    peer_enc = {m[0]: m[2] for m in _roster(state).members}[share.sender]
    key = share_key(state.enc.private, peer_enc, cfg.federation_id, cfg.cohort_id,
                    cfg.site_id, share.sender)
    ad = share_associated_data(cfg.federation_id, cfg.cohort_id, share.sender, cfg.site_id)
    plain = decrypt_share(key, share.nonce, share.ciphertext, ad)
    if len(plain) != _PAIR:
        raise MessageError(f"share plaintext must be {_PAIR} bytes")
    held = {**state.held, share.sender: (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])}
    return replace(state, held=held)


def _on_mask_request(
    state: ClientState, request: MaskRequest
) -> tuple[ClientState, list[ClientOutbound]]:
    cfg, roster = state.config, _roster(state)
    sharers = frozenset(request.sharers)
    if not sharers <= {m[0] for m in roster.members}:
        raise ForeignMessageError("mask request names sites outside the roster")
    if cfg.site_id not in sharers:
        return replace(state, stage=ClientStage.EXCLUDED, sharers=sharers), []
    if len(sharers) < roster.threshold:
        raise ShareRequestError(f"{len(sharers)} sharers, fewer than threshold {roster.threshold}")
    upd = state.update
    weight = upd.weight * upd.staleness(roster.target_version - upd.base_version)
    encoded = encode_weighted(upd.delta, weight, cfg.spec, roster.modulus_bits, cfg.rng)
    dh_keys = {m[0]: m[1] for m in roster.members}
    seeds = [(1, state.self_seed)]
    for peer in sorted(state.neighbours & sharers):
        seed = pairwise_seed(state.dh.private, dh_keys[peer], cfg.federation_id, cfg.cohort_id,
                             cfg.site_id, peer)
        seeds.append((pair_sign(cfg.site_id, peer), seed))
    masked = reduce_modulus(add_masks(encoded, seeds), roster.modulus_bits)
    message = MaskedInput(cfg.cohort_id, cfg.site_id, masked[:-1].tobytes(), int(masked[-1]))
    return replace(state, stage=ClientStage.MASKED, sharers=sharers), [message]


def _on_unmask_request(
    state: ClientState, request: UnmaskRequest
) -> tuple[ClientState, list[ClientOutbound]]:
    cfg, roster = state.config, _roster(state)
    survivors, dropped = set(request.survivors), set(request.dropped)
    if survivors & dropped:
        raise ShareRequestError(f"sites both survivor and dropped: {sorted(survivors & dropped)}")
    if survivors | dropped != state.sharers or len(request.survivors) != len(survivors):
        raise ShareRequestError("survivors and dropped must partition the sharers exactly once")
    if cfg.site_id not in survivors:
        return replace(state, stage=ClientStage.EXCLUDED), []
    if len(survivors) < roster.threshold:
        raise ShareRequestError(f"{len(survivors)} survivors, fewer than threshold")
    self_shares = tuple((o, state.held[o][0]) for o in sorted(survivors) if o in state.held)
    key_shares = tuple((o, state.held[o][1]) for o in sorted(dropped) if o in state.held)
    response = UnmaskResponse(cfg.cohort_id, cfg.site_id, self_shares, key_shares)
    return replace(state, stage=ClientStage.UNMASKED), [response]

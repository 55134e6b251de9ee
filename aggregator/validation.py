"""Pure checks of a decoded update before it touches aggregator state.

Each check returns a :class:`Rejection` or ``None``; :func:`validate_update` runs them in a fixed
order (cheap bookkeeping first, array scans last) and returns the first rejection. Signature and
schema checks happen earlier, in the adapter, against the roster of site identity keys; here the
roster is just the set of known site ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from aggregator.strategies.base import ClientUpdate
from aggregator.strategies.kernels import l2_norm
from fedsynth.codec.quantize import QuantizedVector

__all__ = [
    "ReasonCode",
    "Rejection",
    "ValidationContext",
    "check_base_version",
    "check_finite",
    "check_known_site",
    "check_norm",
    "check_replay",
    "check_sample_count",
    "check_shape",
    "replay_key",
    "validate_update",
]


class ReasonCode(StrEnum):
    """Why an update was rejected (recorded in the dead-letter record)."""

    UNKNOWN_SITE = "unknown_site"
    REPLAY = "replay"
    FUTURE_BASE = "future_base"
    TOO_STALE = "too_stale"
    BAD_SAMPLE_COUNT = "bad_sample_count"
    BAD_SHAPE = "bad_shape"
    NON_FINITE = "non_finite"
    NORM_TOO_LARGE = "norm_too_large"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused message.

    Attributes:
        reason_code: A :class:`ReasonCode` value, or a strategy's own code (e.g. ``wrong_round``).
        detail: Human-readable detail.
    """

    reason_code: str
    detail: str


@dataclass(frozen=True, slots=True)
class ValidationContext:
    """What the checks compare an update against.

    Attributes:
        known_sites: Site ids on the federation roster.
        seen_ids: Message ids and update ids already accepted, as :func:`replay_key` names
            them (any ``Container``).
        current_version: The current global version ``v``.
        max_staleness: Largest accepted ``v - b``; ``None`` for no bound.
        n_parameters: Expected length of the delta.
        max_norm: Largest accepted L2 norm of the delta; ``None`` for no bound.
    """

    known_sites: frozenset[str]
    seen_ids: Container[str]
    current_version: int
    max_staleness: int | None
    n_parameters: int
    max_norm: float | None = None


Check = Callable[[ClientUpdate, ValidationContext, str | None], Rejection | None]


def check_known_site(
    update: ClientUpdate, ctx: ValidationContext, message_id: str | None = None
) -> Rejection | None:
    """Reject a site that is not on the roster."""
    if update.site_id in ctx.known_sites:
        return None
    return Rejection(ReasonCode.UNKNOWN_SITE, f"site {update.site_id!r} is not on the roster")


def replay_key(site_id: str, ident: str) -> str:
    """How an accepted message or update id is remembered: with the site that sent it.

    Ids are chosen by their senders, and another roster member can read them off the updates
    topic; scoped by site, ids one site sends never make another site's update a "replay" (the
    signature binds an update's ``site_id`` to its sender). The site's length comes first, so no
    pair of site and id names the same key as another.
    """
    return f"{len(site_id)}:{site_id}:{ident}"


def check_replay(
    update: ClientUpdate, ctx: ValidationContext, message_id: str | None = None
) -> Rejection | None:
    """Reject a message id or update id that this site already had accepted.

    A bare id in ``seen_ids`` counts too: that is how checkpoints written before ids were
    scoped by site remember them.
    """
    for label, ident in (("message", message_id), ("update", update.update_id)):
        if ident is None:
            continue
        if replay_key(update.site_id, ident) in ctx.seen_ids or ident in ctx.seen_ids:
            return Rejection(ReasonCode.REPLAY, f"{label} id {ident} was already accepted")
    return None


def check_base_version(
    update: ClientUpdate, ctx: ValidationContext, message_id: str | None = None
) -> Rejection | None:
    """Reject ``b > v`` and, when bounded, ``v - b > max_staleness``."""
    b, v = update.base_version, ctx.current_version
    if b > v or b < 0:
        return Rejection(ReasonCode.FUTURE_BASE, f"base version {b} unknown at version {v}")
    if ctx.max_staleness is not None and v - b > ctx.max_staleness:
        return Rejection(
            ReasonCode.TOO_STALE, f"staleness {v - b} exceeds the bound {ctx.max_staleness}"
        )
    return None


def check_sample_count(
    update: ClientUpdate, ctx: ValidationContext, message_id: str | None = None
) -> Rejection | None:
    """Reject a non-positive sample count or a non-finite / negative weight hint."""
    if update.n_samples <= 0:
        return Rejection(ReasonCode.BAD_SAMPLE_COUNT, f"n_samples={update.n_samples} <= 0")
    if not np.isfinite(update.weight_hint) or update.weight_hint < 0:
        return Rejection(ReasonCode.BAD_SAMPLE_COUNT, f"weight_hint={update.weight_hint}")
    return None


def check_shape(
    update: ClientUpdate, ctx: ValidationContext, message_id: str | None = None
) -> Rejection | None:
    """Reject anything but ``n_parameters`` values: a 1-D float32 array or a quantized vector."""
    delta = update.delta
    if isinstance(delta, QuantizedVector):
        if delta.shape != (ctx.n_parameters,):
            return Rejection(
                ReasonCode.BAD_SHAPE, f"delta has {delta.size} values, not {ctx.n_parameters}"
            )
        return None
    if not isinstance(delta, np.ndarray) or delta.dtype != np.float32:
        kind = getattr(delta, "dtype", type(delta).__name__)
        return Rejection(ReasonCode.BAD_SHAPE, f"delta must be a float32 array, got {kind}")
    if delta.shape != (ctx.n_parameters,):
        return Rejection(
            ReasonCode.BAD_SHAPE, f"delta shape {delta.shape} != ({ctx.n_parameters},)"
        )
    return None


_F32_MAX = float(np.finfo(np.float32).max)


def check_finite(
    update: ClientUpdate, ctx: ValidationContext, message_id: str | None = None
) -> Rejection | None:
    """Reject NaN or infinite values.

    Fast path: the sum of squares is finite exactly when no value is NaN or infinite, unless
    finite values overflow it; only then (or when it is not finite) are the values counted. A
    quantized vector's values lie between its ``low`` and ``high``: both must be finite and,
    as float32 holds a delta, within float32's range (every value then is, without a pass).
    """
    delta = update.delta
    if isinstance(delta, QuantizedVector):
        low, high = delta.low, delta.high  # (finite ends within float32: so is the step)
        if math.isfinite(low) and math.isfinite(high) and max(abs(low), abs(high)) <= _F32_MAX:
            return None
        return Rejection(
            ReasonCode.NON_FINITE,
            f"quantized range [{delta.low}, {delta.high}] is not finite in float32",
        )
    if delta.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            squares = float(np.dot(delta, delta))
        if math.isfinite(squares):
            return None
    bad = int(np.count_nonzero(~np.isfinite(delta)))
    if bad:
        return Rejection(ReasonCode.NON_FINITE, f"{bad} non-finite values in delta")
    return None


def check_norm(
    update: ClientUpdate, ctx: ValidationContext, message_id: str | None = None
) -> Rejection | None:
    """Reject a delta whose L2 norm exceeds ``max_norm`` (computed in float64)."""
    if ctx.max_norm is None:
        return None
    norm = l2_norm(update.delta)
    if norm > ctx.max_norm:
        return Rejection(ReasonCode.NORM_TOO_LARGE, f"norm {norm:.6g} > bound {ctx.max_norm}")
    return None


_CHECKS: tuple[Check, ...] = (
    check_known_site,
    check_replay,
    check_base_version,
    check_sample_count,
    check_shape,
    check_finite,
    check_norm,
)


def validate_update(
    update: ClientUpdate, context: ValidationContext, message_id: str | None = None
) -> Rejection | None:
    """Run every check in order and return the first rejection, or ``None`` when valid.

    Args:
        update: The decoded update.
        context: Roster, seen ids, version, bounds.
        message_id: The envelope's message id, checked for replay with the update id.

    Returns:
        The first :class:`Rejection`, or ``None``.
    """
    for check in _CHECKS:
        rejection = check(update, context, message_id)
        if rejection is not None:
            return rejection
    return None

"""Fixed-point encoding of weighted updates for secure aggregation, sized so sums cannot wrap.

Each client clips its update to ``[-clip, clip]``, multiplies by its weight ``w`` (sample count
times a staleness factor it chose) and rounds stochastically to integers with ``levels`` steps per
``clip`` (Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015: unbiased in
expectation). The weight itself is floored to a multiple of ``1 / weight_levels`` and the same
floored weight scales the update, so the server's ``sum(w * delta) / sum(w)`` is consistent. The
encoded vector has ``d + 1`` elements, the last being the weight; negative values are two's
complement modulo ``2^m``. With ``n`` members the sum lies in ``[-B, B]`` for
``B = n * max(ceil(W * levels), floor(W * weight_levels))``; the modulus ``2^m`` must exceed
``2B`` or the code refuses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedsynth.secagg.errors import UnsafeParametersError

__all__ = [
    "FixedPointSpec",
    "check_modulus",
    "decode_sum",
    "dtype_for",
    "encode_weighted",
    "required_modulus_bits",
]

MAX_MODULUS_BITS = 64


@dataclass(frozen=True, slots=True)
class FixedPointSpec:
    """Quantization parameters agreed by the whole federation.

    Attributes:
        clip: every coordinate of an update is clipped to ``[-clip, clip]``.
        levels: integer steps per ``clip`` (the value ``clip`` at weight 1 encodes as ``levels``).
        max_weight: the largest weight a client may apply (refused above it).
        weight_levels: integer steps per unit of weight.
    """

    clip: float
    levels: int = 1 << 16
    max_weight: float = 1.0
    weight_levels: int = 1 << 16

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise UnsafeParametersError(f"clip must be positive and finite, got {self.clip}")
        if self.levels < 1 or self.weight_levels < 1:
            raise UnsafeParametersError("levels and weight_levels must be at least 1")
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise UnsafeParametersError(f"max_weight must be positive, got {self.max_weight}")
        if self.max_weight * max(self.levels, self.weight_levels) >= 2.0**52:
            raise UnsafeParametersError("max_weight * levels must stay below 2^52")

    def bound(self, cohort_size: int) -> int:
        """Largest absolute value any coordinate of a cohort's sum can take."""
        per_client = max(
            math.ceil(self.max_weight * self.levels),
            math.floor(self.max_weight * self.weight_levels),
        )
        return cohort_size * per_client


def required_modulus_bits(spec: FixedPointSpec, cohort_size: int) -> int:
    """Smallest ``m`` with ``2^m > 2 * bound``, so a cohort's sum cannot wrap.

    Raises:
        UnsafeParametersError: the cohort would need more than 64 bits.
    """
    if cohort_size < 1:
        raise UnsafeParametersError(f"cohort size must be positive, got {cohort_size}")
    bits = (2 * spec.bound(cohort_size)).bit_length()
    if bits > MAX_MODULUS_BITS:
        raise UnsafeParametersError(f"cohort of {cohort_size} needs {bits} > 64 modulus bits")
    return bits


def check_modulus(spec: FixedPointSpec, cohort_size: int, modulus_bits: int) -> None:
    """Refuse a modulus that could wrap for this cohort, or that exceeds 64 bits."""
    needed = required_modulus_bits(spec, cohort_size)
    if not needed <= modulus_bits <= MAX_MODULUS_BITS:
        raise UnsafeParametersError(
            f"modulus 2^{modulus_bits} unsafe: cohort of {cohort_size} needs 2^{needed}..2^64"
        )


def dtype_for(modulus_bits: int) -> np.dtype[np.unsignedinteger]:
    """The unsigned word that holds values modulo ``2^modulus_bits`` (uint32 up to 32 bits)."""
    return np.dtype(np.uint32) if modulus_bits <= 32 else np.dtype(np.uint64)


def _quantized_weight(weight: float, spec: FixedPointSpec) -> int:
    if not (math.isfinite(weight) and 0.0 <= weight <= spec.max_weight):
        raise UnsafeParametersError(f"weight {weight} outside [0, {spec.max_weight}]")
    return math.floor(weight * spec.weight_levels)


def encode_weighted(
    delta: npt.NDArray[np.floating],
    weight: float,
    spec: FixedPointSpec,
    modulus_bits: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.unsignedinteger]:
    """Encode ``Q(w * clip(delta))`` followed by ``Q(w)`` as integers modulo ``2^modulus_bits``.

    Args:
        delta: the float update (flattened; must be finite).
        weight: the client's weight in ``[0, spec.max_weight]``.
        spec: the federation's quantization parameters.
        modulus_bits: ``m`` of the cohort (from the roster).
        rng: source of the stochastic-rounding draws.

    Returns:
        ``d + 1`` unsigned integers of ``dtype_for(modulus_bits)``.
    """
    flat = np.asarray(delta).reshape(-1)
    if not np.isfinite(flat).all():
        raise UnsafeParametersError("update contains NaN or infinity")
    w_int = _quantized_weight(weight, spec)
    scaled = np.empty(flat.size, dtype=np.float64)
    np.clip(flat, -spec.clip, spec.clip, out=scaled)
    scaled *= (w_int / spec.weight_levels) * spec.levels / spec.clip
    scaled += rng.random(flat.size)  # floor(x + U) rounds up with probability frac(x)
    np.floor(scaled, out=scaled)
    ints = np.empty(flat.size + 1, dtype=np.int64)
    np.copyto(ints[:-1], scaled, casting="unsafe")
    ints[-1] = w_int
    dtype = dtype_for(modulus_bits)
    encoded = ints.astype(dtype)  # two's complement wrap modulo the word
    if modulus_bits < dtype.itemsize * 8:
        np.bitwise_and(encoded, dtype.type((1 << modulus_bits) - 1), out=encoded)
    return encoded


def decode_sum(
    total: npt.NDArray[np.unsignedinteger], spec: FixedPointSpec, modulus_bits: int
) -> tuple[npt.NDArray[np.float64], float]:
    """Turn an unmasked sum modulo ``2^m`` back into ``(sum of w * delta, sum of w)``."""
    words = np.ascontiguousarray(total, dtype=dtype_for(modulus_bits))
    width = words.dtype.itemsize * 8
    shift = words.dtype.type(width - modulus_bits)
    signed_type = np.int32 if width == 32 else np.int64
    # sign-extend from bit m-1: shift the value to the top of the word, then arithmetic right shift
    signed = (words << shift).view(signed_type) >> signed_type(width - modulus_bits)
    vector = np.multiply(signed[:-1], spec.clip / spec.levels, dtype=np.float64)
    return vector, float(signed[-1]) / spec.weight_levels

"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

Shamir, "How to Share a Secret" (CACM 1979). The secret is the constant term of a random polynomial
of degree ``t - 1``; a share is the polynomial at a non-zero point ``x`` (the holder's roster
index plus one). Reconstruction is Lagrange interpolation at zero. The coefficients depend only
on the set of points, so they are computed once per set over the integers with a common
denominator, leaving one modular inverse per set; the Mersenne prime keeps every reduction cheap.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from functools import lru_cache

from fedsynth.secagg.errors import RecoveryError

__all__ = ["PRIME", "SHARE_BYTES", "combine", "decode_share", "encode_share", "split"]

PRIME = (1 << 521) - 1
SHARE_BYTES = 66
_SECRET_LIMIT = 1 << 256


def split(secret: bytes, threshold: int, points: Sequence[int]) -> list[int]:
    """Split a secret of at most 32 bytes into one share per point.

    Args:
        secret: the secret (read as a big-endian integer).
        threshold: shares needed to reconstruct (``1 <= threshold <= len(points)``).
        points: distinct evaluation points in ``[1, 2^16)``.

    Returns:
        The share values, in the order of ``points``.

    Raises:
        ValueError: on a bad threshold, secret length or point set.
    """
    if len(secret) > 32:
        raise ValueError(f"secret must be at most 32 bytes, got {len(secret)}")
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold {threshold} outside [1, {len(points)}]")
    if len(set(points)) != len(points) or any(not 0 < x < 1 << 16 for x in points):
        raise ValueError("points must be distinct integers in [1, 65535]")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in points:
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % PRIME
        shares.append(acc)
    return shares


@lru_cache(maxsize=4096)
def _weights(points: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """Lagrange numerators scaled to one common denominator, and its inverse mod p."""
    nums: list[int] = []
    dens: list[int] = []
    for i, xi in enumerate(points):
        num, den = 1, 1
        for j, xj in enumerate(points):
            if j != i:
                num *= xj
                den *= xj - xi
        nums.append(num)
        dens.append(den)
    common = 1
    for den in dens:
        common *= den
    scaled = tuple(num * (common // den) for num, den in zip(nums, dens, strict=True))
    return scaled, pow(common % PRIME, -1, PRIME)


def combine(shares: Sequence[tuple[int, int]], threshold: int) -> bytes:
    """Reconstruct a 32-byte secret from at least ``threshold`` ``(point, value)`` shares.

    Raises:
        RecoveryError: too few shares, repeated points, or a result that is not a 32-byte secret.
    """
    distinct = dict(shares)
    if threshold < 1 or len(distinct) < threshold:
        raise RecoveryError(f"need {threshold} distinct shares, got {len(distinct)}")
    chosen = sorted(distinct.items())[:threshold]
    points = tuple(x for x, _ in chosen)
    scaled, inverse = _weights(points)
    acc = 0
    for (_, y), w in zip(chosen, scaled, strict=True):
        acc += y * w
    value = (acc % PRIME) * inverse % PRIME
    if value >= _SECRET_LIMIT:
        raise RecoveryError("shares are inconsistent: reconstructed value exceeds 256 bits")
    return value.to_bytes(32, "big")


def encode_share(value: int) -> bytes:
    """Serialize a share value as 66 big-endian bytes."""
    return value.to_bytes(SHARE_BYTES, "big")


def decode_share(raw: bytes) -> int:
    """Parse a 66-byte share value, refusing values outside the field."""
    if len(raw) != SHARE_BYTES:
        raise RecoveryError(f"share must be {SHARE_BYTES} bytes, got {len(raw)}")
    value = int.from_bytes(raw, "big")
    if value >= PRIME:
        raise RecoveryError("share value outside the field")
    return value

"""Server-side recovery of a cohort's sum (SecAgg+, Bell et al. CCS 2020, section 3).

From the survivors' responses the server rebuilds each survivor's self-mask seed and each dropped
member's masking private key (never both for one member), subtracts the survivors' self masks and
removes the pairwise masks that survivors shared with dropped members. Shamir reconstruction reuses
Lagrange weights per holder set (see :mod:`fedsynth.secagg.shamir`), so it costs microseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedsynth.secagg import shamir
from fedsynth.secagg.crypto import public_from_private
from fedsynth.secagg.errors import RecoveryError
from fedsynth.secagg.masking import add_masks, pair_sign, pairwise_seed, reduce_modulus

__all__ = ["Recovery", "keys_needed", "ready", "recover_sum"]

Shares = Mapping[str, Mapping[str, int]]
"""owner -> holder -> share value."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """The fixed facts of a cohort that unmasking needs."""

    federation_id: str
    cohort_id: str
    threshold: int
    modulus_bits: int
    graph: Mapping[str, frozenset[str]]
    points: Mapping[str, int]
    dh_public: Mapping[str, bytes]
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


def keys_needed(rec: Recovery) -> list[str]:
    """Dropped members with a surviving neighbour (their pairwise masks are in the sum)."""
    alive = set(rec.survivors)
    return [d for d in rec.dropped if rec.graph[d] & alive]


def ready(rec: Recovery, self_shares: Shares, key_shares: Shares) -> bool:
    """True when every needed secret has at least ``threshold`` shares."""
    enough = all(len(self_shares.get(s, {})) >= rec.threshold for s in rec.survivors)
    return enough and all(len(key_shares.get(d, {})) >= rec.threshold for d in keys_needed(rec))


def _secret(rec: Recovery, by_holder: Mapping[str, int]) -> bytes:
    return shamir.combine([(rec.points[h], v) for h, v in by_holder.items()], rec.threshold)


def recover_sum(
    rec: Recovery, total: npt.NDArray[np.unsignedinteger], self_shares: Shares, key_shares: Shares
) -> npt.NDArray[np.unsignedinteger]:
    """Remove every mask from the survivors' summed masked inputs.

    Args:
        rec: cohort facts.
        total: sum of the survivors' masked vectors (``d + 1`` words, weight last).
        self_shares: survivors' self-mask seed shares.
        key_shares: dropped members' masking-key shares.

    Returns:
        ``sum(Q(w * delta)) , sum(Q(w))`` modulo ``2^m`` as one vector.

    Raises:
        RecoveryError: too few shares, or a rebuilt key that does not match its roster public key.
    """
    seeds = [(-1, _secret(rec, self_shares.get(s, {}))) for s in rec.survivors]
    alive = set(rec.survivors)
    for d in keys_needed(rec):
        private = _secret(rec, key_shares.get(d, {}))
        if public_from_private(private) != rec.dh_public[d]:
            raise RecoveryError(f"rebuilt masking key of {d!r} does not match its roster key")
        for s in sorted(rec.graph[d] & alive):
            seed = pairwise_seed(private, rec.dh_public[s], rec.federation_id, rec.cohort_id, d, s)
            seeds.append((-pair_sign(s, d), seed))
    return reduce_modulus(add_masks(total, seeds), rec.modulus_bits)

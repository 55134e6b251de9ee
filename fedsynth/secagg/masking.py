"""Mask derivation shared by the client and the server (SecAgg, Bonawitz et al. CCS 2017).

Member ``u`` adds its self mask ``PRG(b_u)`` and, for every neighbour ``v`` that completed sharing,
``+PRG(s_uv)`` when ``u < v`` (string order of site ids) and ``-PRG(s_uv)`` otherwise, so the
pairwise masks cancel in the cohort's sum. ``s_uv`` comes from X25519 between the members' masking
keys and HKDF-SHA256 bound to (federation, cohort, lower id, higher id). Arithmetic is in the
unsigned word of the modulus with wrap-around, reduced modulo ``2^m`` at the end (``2^m`` divides
the word size).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from fedsynth.secagg.crypto import Keystream, agree, bind, mask_buffer
from fedsynth.secagg.fixedpoint import dtype_for

__all__ = [
    "MASK_BLOCK_BYTES",
    "add_masks",
    "pair_sign",
    "pairwise_seed",
    "reduce_modulus",
    "share_associated_data",
    "share_key",
]


def pair_sign(me: str, peer: str) -> int:
    """``+1`` when ``me`` adds the pair's mask, ``-1`` when it subtracts it."""
    return 1 if me < peer else -1


def pairwise_seed(
    private: bytes, peer_public: bytes, federation_id: str, cohort_id: str, me: str, peer: str
) -> bytes:
    """The 32-byte pairwise mask key of ``me`` and ``peer`` (equal on both sides)."""
    low, high = sorted((me, peer))
    info = bind("fedsynth/secagg/mask", federation_id, cohort_id, low, high)
    return agree(private, peer_public, info)


def share_key(
    private: bytes, peer_public: bytes, federation_id: str, cohort_id: str, me: str, peer: str
) -> bytes:
    """The 32-byte AES-GCM key that protects shares between ``me`` and ``peer``."""
    low, high = sorted((me, peer))
    info = bind("fedsynth/secagg/share", federation_id, cohort_id, low, high)
    return agree(private, peer_public, info)


def share_associated_data(federation_id: str, cohort_id: str, sender: str, recipient: str) -> bytes:
    """AES-GCM associated data binding a share to its federation, cohort, sender and recipient."""
    return bind("fedsynth/secagg/share-ad", federation_id, cohort_id, sender, recipient)


MASK_BLOCK_BYTES = 1 << 18
"""How much of each mask :func:`add_masks` expands at a time (a multiple of the AES block)."""


def add_masks(
    vector: npt.NDArray[np.unsignedinteger],
    signed_seeds: Iterable[tuple[int, bytes]],
    block_bytes: int = MASK_BLOCK_BYTES,
) -> npt.NDArray[np.unsignedinteger]:
    """Return ``vector + sum(sign * PRG(seed))`` in the vector's word, wrapping.

    Block by block: each mask's keystream is read ``block_bytes`` at a time (:class:`Keystream`,
    the same words as expanding it whole) and added to that block of the result while the block
    is in cache, instead of a pass over the whole vector in memory for every mask (and a copy
    of the vector before them).

    Args:
        vector: unsigned integers (uint32 or uint64); not modified.
        signed_seeds: ``(sign, seed)`` pairs with sign ``+1`` or ``-1``.
        block_bytes: a positive multiple of 16.

    Raises:
        ValueError: ``block_bytes`` is not a positive multiple of 16, or a seed is not 32 bytes.
    """
    if block_bytes <= 0 or block_bytes % 16:
        raise ValueError(f"block_bytes must be a positive multiple of 16, got {block_bytes}")
    streams = [(sign, Keystream(seed)) for sign, seed in signed_seeds]
    out = np.empty_like(vector)
    if not streams or not vector.size:
        out[...] = vector
        return out
    words = block_bytes // out.itemsize
    raw, mask = mask_buffer(min(words, out.size), out.dtype)
    for start in range(0, out.size, words):
        source, block = vector[start : start + words], out[start : start + words]
        for sign, stream in streams:
            part = mask[: block.size]
            stream.read_into(raw, part.nbytes)
            if sign > 0:
                np.add(source, part, out=block)
            else:
                np.subtract(source, part, out=block)
            source = block  # the first mask reads the vector, the others the block
    return out


def reduce_modulus(
    vector: npt.NDArray[np.unsignedinteger], modulus_bits: int
) -> npt.NDArray[np.unsignedinteger]:
    """Reduce in place modulo ``2^modulus_bits`` and return the vector."""
    dtype = dtype_for(modulus_bits)
    if modulus_bits < dtype.itemsize * 8:
        np.bitwise_and(vector, dtype.type((1 << modulus_bits) - 1), out=vector)
    return vector

"""Cryptographic primitives of secure aggregation.

Key agreement is X25519 followed by HKDF-SHA256 (RFC 7748, RFC 5869); masks are the keystream of
AES-128-CTR under a derived seed, generated in one call and viewed as little-endian unsigned
integers; shares travel under AES-256-GCM with (federation, cohort, sender, recipient) as
associated data, so a share replayed into another cohort or readdressed to another site fails
authentication. Protocol after Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning" (CCS 2017) and Bell et al., "Secure Single-Server Aggregation
with (Poly)Logarithmic Overhead" (CCS 2020).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedsynth.secagg.errors import ShareAuthenticationError

__all__ = [
    "KeyPair",
    "Keystream",
    "NONCE_BYTES",
    "SECRET_BYTES",
    "agree",
    "bind",
    "decrypt_share",
    "encrypt_share",
    "expand_mask",
    "mask_buffer",
    "generate_keypair",
    "public_from_private",
]

SECRET_BYTES = 32
NONCE_BYTES = 12
_RAW = serialization.Encoding.Raw


@dataclass(frozen=True, slots=True, repr=False)
class KeyPair:
    """An X25519 key pair as raw 32-byte strings (the private half never leaves the site)."""

    private: bytes
    public: bytes


def generate_keypair() -> KeyPair:
    """Return a fresh X25519 key pair from the operating system's CSPRNG."""
    key = X25519PrivateKey.generate()
    public = key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    private = key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return KeyPair(private=private, public=public)


def public_from_private(private: bytes) -> bytes:
    """Return the raw X25519 public key that belongs to ``private``."""
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def bind(*parts: str) -> bytes:
    """Encode strings unambiguously (length-prefixed UTF-8) for HKDF info and GCM data."""
    out = bytearray()
    for part in parts:
        raw = part.encode("utf-8")
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def agree(private: bytes, peer_public: bytes, info: bytes) -> bytes:
    """Derive a 32-byte key from X25519(private, peer_public) with HKDF-SHA256 under ``info``.

    Both ends of a pair obtain the same key when ``info`` is built from the pair in a fixed order.
    """
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public)
    )
    return HKDF(algorithm=hashes.SHA256(), length=SECRET_BYTES, salt=None, info=info).derive(shared)


@lru_cache(maxsize=4)
def _zeros(nbytes: int) -> bytes:
    """Zero plaintext for the keystream (cached: masks of one length, or of one block, are
    expanded many times)."""
    return bytes(nbytes)


class Keystream:
    """The AES-128-CTR keystream of a seed, read in consecutive pieces: the pieces together are
    the bytes one read of their total length writes (CTR mode keeps its counter and the unused
    part of its last block between calls).

    The first 16 bytes of the 32-byte seed are the AES key, the last 16 the initial counter block
    (AES-128 matches the ~128-bit security of X25519 and is a third faster than AES-256).

    Raises:
        ValueError: ``seed`` is not 32 bytes.
    """

    __slots__ = ("_encryptor",)

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SECRET_BYTES:
            raise ValueError(f"mask seed must be {SECRET_BYTES} bytes, got {len(seed)}")
        self._encryptor = Cipher(algorithms.AES(seed[:16]), modes.CTR(seed[16:])).encryptor()

    def read_into(self, out: bytearray, nbytes: int) -> None:
        """Write the next ``nbytes`` of the keystream to the start of ``out``, which must have at
        least ``nbytes + 15`` bytes (see :func:`mask_buffer`)."""
        if len(out) < nbytes + 15:
            raise ValueError("keystream buffer needs nbytes + 15 bytes")
        if self._encryptor.update_into(_zeros(nbytes), out) != nbytes:
            raise RuntimeError("short keystream write")


def mask_buffer(length: int, dtype: npt.DTypeLike) -> tuple[bytearray, npt.NDArray[Any]]:
    """A scratch buffer for :meth:`Keystream.read_into` and the integer view of its first part."""
    width = np.dtype(dtype).itemsize
    raw = bytearray(length * width + 15)
    view = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=length)
    return raw, view


def expand_mask(seed: bytes, length: int, dtype: npt.DTypeLike) -> npt.NDArray[np.unsignedinteger]:
    """Expand ``seed`` into ``length`` uniform unsigned integers (AES-128-CTR keystream).

    Args:
        seed: a 32-byte key (a derived pairwise key or a self-mask seed).
        length: number of integers.
        dtype: ``numpy.uint32`` or ``numpy.uint64`` (read little-endian).

    Returns:
        A new array of ``length`` integers, uniform over the dtype's range.
    """
    raw, view = mask_buffer(length, dtype)
    Keystream(seed).read_into(raw, view.nbytes)
    return view.copy()


def encrypt_share(key: bytes, plaintext: bytes, associated: bytes) -> tuple[bytes, bytes]:
    """Encrypt a share under AES-256-GCM; returns ``(nonce, ciphertext)`` with a random nonce."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt_share(key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """Decrypt and authenticate a share.

    Raises:
        ShareAuthenticationError: the ciphertext, nonce or binding does not authenticate.
    """
    if len(nonce) != NONCE_BYTES:
        raise ShareAuthenticationError(f"nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated)
    except InvalidTag as exc:
        raise ShareAuthenticationError("encrypted share failed authentication") from exc

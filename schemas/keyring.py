"""Public identity keys of the federation's members, by sender name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas.errors import KeyStoreError, UnknownSenderError

__all__ = ["KeyRing", "load_public_key"]

_RAW_SIZE = 32


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from 32 raw bytes or from SubjectPublicKeyInfo PEM.

    Raises:
        KeyStoreError: The bytes are neither, or the PEM holds another kind of key.
    """
    if len(data) == _RAW_SIZE:
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyStoreError(
            f"not an Ed25519 public key: {len(data)} bytes, neither raw 32 bytes nor PEM"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyStoreError(f"identity keys are Ed25519, got {type(key).__name__}")
    return key


class KeyRing:
    """Sender name to Ed25519 public key; the verifying side's view of identities."""

    def __init__(self, keys: dict[str, Ed25519PublicKey] | None = None) -> None:
        """Start from ``keys`` (copied)."""
        self._keys: dict[str, Ed25519PublicKey] = dict(keys or {})

    @classmethod
    def from_dir(cls, directory: Path) -> KeyRing:
        """Load every ``<sender>.pub`` PEM file in ``directory`` (``.key`` files are ignored).

        Raises:
            KeyStoreError: The directory is missing or a ``.pub`` file is not an Ed25519 key.
        """
        if not directory.is_dir():
            raise KeyStoreError(f"key directory {directory} does not exist")
        ring = cls()
        for path in sorted(directory.glob("*.pub")):
            try:
                ring.add(path.stem, path.read_bytes())
            except KeyStoreError as exc:
                raise KeyStoreError(f"{path}: {exc}") from exc
        return ring

    def add(self, sender: str, public_key: Ed25519PublicKey | bytes) -> None:
        """Register (or replace) the key of ``sender``; bytes may be raw 32 bytes or PEM."""
        key = load_public_key(public_key) if isinstance(public_key, bytes) else public_key
        self._keys[sender] = key

    def get(self, sender: str) -> Ed25519PublicKey:
        """The key of ``sender``; raises UnknownSenderError when there is none."""
        try:
            return self._keys[sender]
        except KeyError:
            raise UnknownSenderError(
                f"no identity public key for sender {sender!r}; cannot verify its signature"
            ) from None

    @property
    def senders(self) -> list[str]:
        """Names with a key, sorted."""
        return sorted(self._keys)

    def __contains__(self, sender: object) -> bool:
        return sender in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self.senders)

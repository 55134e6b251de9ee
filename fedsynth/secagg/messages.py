"""Messages of the secure-aggregation protocol (transport-neutral, frozen values).

The transport layer wraps each in the signed envelope of ARCHITECTURE.md (``message_id``,
``federation_id``, sender, ``created_at``, Ed25519 signature). That signature is what binds the
public keys of a :class:`CohortJoin` to its site: the state machines trust ``site_id`` fields only
because the adapter has checked that the envelope's signer is that site.

Wire forms: every field is ``str``, ``int``, ``float``, ``bytes``, ``bool`` or a tuple of these,
except ``CohortResult.sum_vector`` (a float64 numpy array, the aggregator's local output).
``MaskedInput.masked_vector`` is the little-endian bytes of ``vector_length`` unsigned integers
(``uint32`` when ``modulus_bits <= 32``, else ``uint64``) and ``masked_weight`` is one more integer
of the same masked stream (the element after the vector), modulo ``2^modulus_bits``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "CohortJoin",
    "CohortResult",
    "CohortRoster",
    "Deadline",
    "EncryptedShare",
    "MaskRequest",
    "MaskedInput",
    "RosterMember",
    "UnmaskRequest",
    "UnmaskResponse",
]

RosterMember = tuple[str, bytes, bytes]
"""``(site_id, dh_public_key, enc_public_key)`` as published in the roster."""


@dataclass(frozen=True, slots=True)
class CohortJoin:
    """Site -> aggregator: join the open cohort with fresh X25519 public keys."""

    cohort_id: str
    site_id: str
    dh_public_key: bytes
    enc_public_key: bytes
    base_version: int


@dataclass(frozen=True, slots=True)
class CohortRoster:
    """Aggregator -> sites: the members (sorted by site id) and the cohort's parameters."""

    cohort_id: str
    target_version: int
    members: tuple[RosterMember, ...]
    threshold: int
    degree: int
    modulus_bits: int
    vector_length: int


@dataclass(frozen=True, slots=True)
class EncryptedShare:
    """Site -> site (relayed): AES-GCM encryption of ``sender``'s shares for ``recipient``.

    The plaintext is the 66-byte Shamir share of the sender's self-mask seed followed by the 66-byte
    share of its masking (DH) private key; the associated data binds federation, cohort, sender and
    recipient.
    """

    cohort_id: str
    sender: str
    recipient: str
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class MaskRequest:
    """Aggregator -> sites: sharing is closed; mask with your neighbours among ``sharers``.

    ``sharers`` are the members whose shares reached all their neighbours; only they may send input.
    (Added to the issue's list: without it a member cannot know which pairwise masks are removable.)
    """

    cohort_id: str
    sharers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MaskedInput:
    """Site -> aggregator: ``y = Q(w * delta) + PRG(b) + sum(+-PRG(s_uv)) mod 2^m``."""

    cohort_id: str
    site_id: str
    masked_vector: bytes | memoryview
    masked_weight: int


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Aggregator -> sites: self-mask shares of ``survivors``, key shares of ``dropped``."""

    cohort_id: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """Site -> aggregator: the shares it holds, as ``(owner, 66-byte share)`` pairs."""

    cohort_id: str
    site_id: str
    self_mask_shares: tuple[tuple[str, bytes], ...]
    key_shares: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True, eq=False)
class CohortResult:
    """Aggregator -> sites: ``sum(w_i * delta_i)`` dequantized, ``sum(w_i)``, and the survivors."""

    cohort_id: str
    sum_vector: npt.NDArray[np.float64]
    weight_sum: float
    survivors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Deadline:
    """Local timer event (never on the wire): the deadline of ``stage`` has passed.

    A deadline whose ``stage`` is no longer current is ignored.
    """

    cohort_id: str
    stage: str

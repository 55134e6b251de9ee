"""Specific errors of the secure-aggregation protocol.

All derive from :class:`fedsynth.errors.SecAggError` so an adapter can catch the family at once and
send the offending message to the dead-letter topic with the error's text as the reason.
"""

from __future__ import annotations

from fedsynth.errors import SecAggError

__all__ = [
    "DuplicateMessageError",
    "ForeignMessageError",
    "LateInputError",
    "OutOfOrderError",
    "RecoveryError",
    "ShareAuthenticationError",
    "ShareRequestError",
    "UnsafeParametersError",
]


class OutOfOrderError(SecAggError):
    """A message arrived in a stage that does not accept it."""


class DuplicateMessageError(SecAggError):
    """A message of this kind from this sender was already accepted."""


class ForeignMessageError(SecAggError):
    """A message names another cohort, another recipient, or a sender outside the roster."""


class ShareAuthenticationError(SecAggError):
    """An encrypted share failed AES-GCM authentication (tampered, replayed or misbound)."""


class ShareRequestError(SecAggError):
    """An unmask request or response would reveal both kinds of share for one site."""


class LateInputError(SecAggError):
    """A masked input arrived after the survivor set was fixed; the site rejoins a later cohort."""


class UnsafeParametersError(SecAggError):
    """Quantization, modulus, degree or threshold parameters that could wrap or leak."""


class RecoveryError(SecAggError):
    """Too few shares to reconstruct a secret, or a rebuilt key that does not match the roster."""

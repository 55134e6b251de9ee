"""Errors raised by the message layer.

``schemas`` imports nothing of ours, so these derive from :class:`Exception` rather than from
``fedsynth.errors.FedSynthError``; adapters catch :class:`SchemaError` next to
``fedsynth.errors.MessageError`` and send the message to the dead-letter topic. Every class carries
``retriable = False``: a message that failed to decode or verify will not get better by retrying.
"""

from __future__ import annotations

__all__ = [
    "BadMarkerError",
    "BadSignatureError",
    "KeyStoreError",
    "SchemaError",
    "SchemaMismatchError",
    "TruncatedMessageError",
    "UnknownFingerprintError",
    "UnknownSchemaError",
    "UnknownSenderError",
]


class SchemaError(Exception):
    """Root of the message-layer errors.

    Attributes:
        retriable: Always False: the same bytes fail the same way again.
    """

    retriable: bool = False


class UnknownFingerprintError(SchemaError):
    """The message names a schema fingerprint that no local ``.avsc`` has."""


class UnknownSchemaError(SchemaError):
    """A schema name was asked for that no local ``.avsc`` defines."""


class BadMarkerError(SchemaError):
    """The bytes do not start with the Avro single-object marker ``C3 01``."""


class TruncatedMessageError(SchemaError):
    """The message ends before its header or its body is complete."""


class SchemaMismatchError(SchemaError):
    """A record does not match its schema (on encode), or the body does not decode under it."""


class BadSignatureError(SchemaError):
    """A signature is missing, malformed or does not verify under the sender's key."""


class UnknownSenderError(BadSignatureError):
    """No public key is known for the message's sender, so its signature cannot be checked."""


class KeyStoreError(SchemaError):
    """An identity key file is missing, unreadable, or would be overwritten."""

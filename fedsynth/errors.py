"""The one error root of fedsynth.

Every error the platform raises on purpose derives from :class:`FedSynthError`. Each carries a
``retriable`` flag so that adapters can decide between retrying (a broker that is not up yet) and
rejecting (a message with a bad signature goes to the dead-letter topic, it will not get better).
Adapters translate third-party exceptions into these at the edge with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "ConstraintError",
    "DataValidationError",
    "FedSynthError",
    "MessageError",
    "ProtocolError",
    "SecAggError",
    "StateInUseError",
    "TransportError",
]


class FedSynthError(Exception):
    """Root of every fedsynth error.

    Attributes:
        retriable: True when the same operation may succeed if tried again later.
    """

    retriable: bool = False


class ConfigError(FedSynthError):
    """A setting, file or command-line argument is invalid."""


class DataValidationError(FedSynthError):
    """A site's data does not match its dataset schema (the message names row and column)."""


class MessageError(FedSynthError):
    """A message cannot be decoded or verified; it goes to the dead-letter topic."""


class ProtocolError(FedSynthError):
    """A message is valid on its own but not allowed in the current protocol state."""


class SecAggError(ProtocolError):
    """The secure-aggregation protocol refused a message or a parameter choice."""


class BudgetExceededError(FedSynthError):
    """A training step would spend more privacy than the site's budget allows."""


class ConstraintError(FedSynthError):
    """Sampling constraints are infeasible under the schema or too rare to meet."""


class TransportError(FedSynthError):
    """The broker or the network failed; usually worth retrying."""

    retriable = True


class StateInUseError(FedSynthError):
    """Another process holds the state folder this one would work on (see
    :class:`fedsynth.durable.StateLock`); retrying after that process has exited succeeds."""

    retriable = True

"""Secure aggregation (SecAgg+) as pure, sans-I/O code.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning" (CCS 2017);
Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS 2020).
Sites drive :func:`start_client` / :func:`client_step`, the aggregator :func:`start_server` /
:func:`server_step`; both exchange the frozen messages of :mod:`fedsynth.secagg.messages`.
"""

from __future__ import annotations

from fedsynth.secagg.client import (
    CLIENT_TRANSITIONS,
    ClientConfig,
    ClientStage,
    ClientState,
    ClientUpdate,
    client_step,
    start_client,
)
from fedsynth.secagg.errors import (
    DuplicateMessageError,
    ForeignMessageError,
    LateInputError,
    OutOfOrderError,
    RecoveryError,
    ShareAuthenticationError,
    ShareRequestError,
    UnsafeParametersError,
)
from fedsynth.secagg.fixedpoint import FixedPointSpec, required_modulus_bits
from fedsynth.secagg.messages import (
    CohortJoin,
    CohortResult,
    CohortRoster,
    Deadline,
    EncryptedShare,
    MaskedInput,
    MaskRequest,
    UnmaskRequest,
    UnmaskResponse,
)
from fedsynth.secagg.server import (
    SERVER_TRANSITIONS,
    ServerConfig,
    ServerStage,
    ServerState,
    server_step,
    start_server,
)

__all__ = [
    "CLIENT_TRANSITIONS",
    "SERVER_TRANSITIONS",
    "ClientConfig",
    "ClientStage",
    "ClientState",
    "ClientUpdate",
    "CohortJoin",
    "CohortResult",
    "CohortRoster",
    "Deadline",
    "DuplicateMessageError",
    "EncryptedShare",
    "FixedPointSpec",
    "ForeignMessageError",
    "LateInputError",
    "MaskRequest",
    "MaskedInput",
    "OutOfOrderError",
    "RecoveryError",
    "ServerConfig",
    "ServerStage",
    "ServerState",
    "ShareAuthenticationError",
    "ShareRequestError",
    "UnmaskRequest",
    "UnmaskResponse",
    "UnsafeParametersError",
    "client_step",
    "required_modulus_bits",
    "server_step",
    "start_client",
    "start_server",
]

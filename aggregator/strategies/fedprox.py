"""FedProx: FedAvg on the server, a proximal term on the clients.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in Heterogeneous Networks",
MLSys 2020. The server aggregates exactly as FedAvg. Each client minimises
``F_k(w) + (mu / 2) ||w - w_global||^2``: the site agent ADDS :func:`proximal_penalty` of its
current parameters and the global version it started from to its training loss at every step.
``mu`` is part of the strategy so that the aggregator can announce it with each global version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator.strategies.base import ClientUpdate, StrategyResult, StrategyState
from aggregator.strategies.fedavg import FedAvg
from fedsynth.errors import ConfigError

__all__ = ["FedProx", "proximal_penalty"]


def proximal_penalty(params: Any, global_params: Any, mu: float) -> Any:
    """``(mu / 2) * sum ||p - g||^2`` over matching parameters.

    Works unchanged on numpy arrays and torch tensors (only ``-``, ``*`` and ``.sum()`` are used, so
    a torch result stays differentiable), or on equal-length sequences of either.

    Args:
        params: The client's current parameters (an array/tensor or a sequence of them).
        global_params: The global parameters it trained from, same structure.
        mu: Proximal coefficient, ``>= 0``.

    Returns:
        A scalar of the input's type (0-d array or tensor).

    Raises:
        ConfigError: ``mu < 0`` or structures of different lengths.
    """
    if mu < 0:
        raise ConfigError(f"FedProx mu must be >= 0, got {mu}")
    if isinstance(params, Sequence) and not isinstance(params, np.ndarray):
        if len(params) != len(global_params):
            raise ConfigError("params and global_params differ in length")
        terms = [((p - g) * (p - g)).sum() for p, g in zip(params, global_params, strict=True)]
        return (mu / 2.0) * sum(terms[1:], terms[0]) if terms else 0.0
    diff = params - global_params
    return (mu / 2.0) * (diff * diff).sum()


@dataclass(frozen=True, slots=True)
class FedProx:
    """FedProx rule: FedAvg aggregation plus the clients' proximal coefficient.

    Attributes:
        server: The FedAvg rule used on the server.
        mu: Proximal coefficient announced to clients.
    """

    server: FedAvg
    mu: float

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise ConfigError(f"FedProx mu must be >= 0, got {self.mu}")

    @property
    def name(self) -> str:
        """``"fedprox"``."""
        return "fedprox"

    def initial_state(self, n_parameters: int) -> StrategyState:
        """Same as FedAvg."""
        return self.server.initial_state(n_parameters)

    def on_update(
        self, state: StrategyState, update: ClientUpdate, version: int, params: np.ndarray
    ) -> StrategyResult:
        """Same as FedAvg."""
        return self.server.on_update(state, update, version, params)

    def on_timeout(self, state: StrategyState, version: int, params: np.ndarray) -> StrategyResult:
        """Same as FedAvg."""
        return self.server.on_timeout(state, version, params)

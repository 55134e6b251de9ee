"""FedAvg: synchronous rounds of sample-weighted averaging.

McMahan, Moore, Ramage, Hampson, Aguera y Arcas, "Communication-Efficient Learning of Deep Networks
from Decentralized Data", AISTATS 2017. Round ``r`` is global version ``r``: the server collects one
update per site trained from version ``r`` and, when ``sites_per_round`` distinct sites have
reported, sets ``x <- x + sum_i n_i delta_i / sum_i n_i`` (the sample-weighted mean of the
local models). At the round deadline it aggregates the sites that did report if there are at least
``min_sites_on_timeout`` of them, so a round finishes although sites drop out. Updates for another
round and second updates from one site are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggregator.strategies.base import ClientUpdate, StrategyResult, StrategyState, UpdateRefused
from aggregator.strategies.buffered import BufferSpec, buffered_on_timeout, buffered_on_update
from aggregator.strategies.fedbuff import weighted_columns, weighted_combine
from fedsynth.errors import ConfigError

__all__ = ["FedAvg"]


@dataclass(frozen=True, slots=True)
class FedAvg:
    """FedAvg rule.

    Attributes:
        sites_per_round: Distinct sites whose updates close a round.
        min_sites_on_timeout: Fewest updates the deadline may aggregate; ``None`` never does.
    """

    sites_per_round: int
    min_sites_on_timeout: int | None = 1

    def __post_init__(self) -> None:
        if self.sites_per_round < 1:
            raise ConfigError(f"sites_per_round must be >= 1, got {self.sites_per_round}")

    @property
    def name(self) -> str:
        """``"fedavg"``."""
        return "fedavg"

    @property
    def _spec(self) -> BufferSpec:
        return BufferSpec(
            self.sites_per_round, 1.0, min_updates_on_timeout=self.min_sites_on_timeout
        )

    def initial_state(self, n_parameters: int) -> StrategyState:
        """No update collected yet."""
        return StrategyState()

    def on_update(
        self, state: StrategyState, update: ClientUpdate, version: int, params: np.ndarray
    ) -> StrategyResult:
        """Collect the update for round ``version``; close the round when every site reported.

        Raises:
            UpdateRefused: ``wrong_round`` or ``duplicate_site``.
        """
        if update.base_version != version:
            raise UpdateRefused(
                "wrong_round", f"update for round {update.base_version}, current round {version}"
            )
        if any(u.site_id == update.site_id for u in state.buffer):
            raise UpdateRefused("duplicate_site", f"{update.site_id} already reported in {version}")
        return buffered_on_update(
            state, update, version, params, self._spec, weighted_combine, weighted_columns
        )

    def on_timeout(self, state: StrategyState, version: int, params: np.ndarray) -> StrategyResult:
        """Close the round with the sites that reported, if enough did."""
        return buffered_on_timeout(
            state, version, params, self._spec, weighted_combine, weighted_columns
        )

"""One local training round at a site: DP-SGD from a global version, returning the delta.

The privacy ledger is charged *before* the steps run (a crash then over-counts, never
under-counts), and a round the budget cannot afford is refused with BudgetExceededError before
any parameter moves.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedsynth.errors import ConfigError
from fedsynth.federation import ModelSpec
from fedsynth.model.config import DEFAULT_NOISE_MULTIPLICITY
from fedsynth.model.tabddpm import TabularDiffusion
from fedsynth.model.train import OpacusPrivacy, TrainReport, train_local
from fedsynth.privacy import PrivacyBudget, RDPAccountant, SiteLedger, noise_for_budget

__all__ = ["LocalTrainer", "RoundResult", "site_batch_size"]


def site_batch_size(batch_size: int, rows: int) -> int:
    """The batch a site trains with: ``batch_size``, at most half its rows, at least 2."""
    return max(2, min(batch_size, rows // 2))

log = logging.getLogger(__name__)
# Opacus' per-sample hooks trip this torch warning on every step; it says nothing to an operator.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


@dataclass(frozen=True, slots=True)
class RoundResult:
    """The delta of one round and what it cost."""

    delta: np.ndarray
    report: TrainReport
    epsilon_spent: float
    """The site's whole spend so far (histograms and every DP-SGD step, from its ledger)."""
    ledger_sequence: int | None = None
    """The ledger's sequence once this round was charged (None: no ledger)."""
    ledger_writes: tuple[str, ...] | None = None
    """The ids of the ledger's last writes once this round was charged, this round's last
    (:meth:`SiteLedger.recent_writes`; None: no ledger)."""


class LocalTrainer:
    """Trains the federation's model on this site's encoded rows, with DP-SGD by default."""

    def __init__(
        self,
        encoded: np.ndarray,
        cond: np.ndarray,
        *,
        ledger: SiteLedger | None,
        budget: PrivacyBudget | None,
        planned_steps: int,
        batch_size: int,
        max_grad_norm: float,
        noise_multiplicity: int = DEFAULT_NOISE_MULTIPLICITY,
        prior: Sequence[tuple[float, float, int]] = (),
        steps_done: int = 0,
    ) -> None:
        """``budget`` is the site's whole budget; ``prior`` the releases already charged to the
        ledger, as ``(noise_multiplier, sample_rate, steps)`` (the histograms): the DP-SGD noise
        is planned so that they and ``planned_steps`` steps fit the budget together.
        ``steps_done`` is how many steps the site trained before (kept across restarts by the
        caller); it sets where the learning-rate schedule stands (:meth:`round_lr`)."""
        if planned_steps < 1:
            raise ConfigError(f"planned_steps must be at least 1, got {planned_steps}")
        self.encoded, self.cond = encoded, cond
        self.planned_steps, self.steps_done = planned_steps, steps_done
        self.ledger, self.budget = ledger, budget
        self.batch_size = site_batch_size(batch_size, len(encoded))
        self.sample_rate = self.batch_size / len(encoded)
        self.max_grad_norm = max_grad_norm
        self.noise_multiplicity = noise_multiplicity
        self.noise = 0.0
        if ledger is not None and budget is not None:
            self.noise = noise_for_budget(
                budget.epsilon, budget.delta, self.sample_rate, planned_steps, prior=prior
            )
            log.info(
                "DP-SGD: noise multiplier %.3f for %d planned steps at q=%.3f",
                self.noise,
                planned_steps,
                self.sample_rate,
            )
        self._model: TabularDiffusion | None = None
        self._spec: ModelSpec | None = None
        self.seconds_per_step: float | None = None

    def steps_within(self, steps: int, max_seconds: float | None) -> int:
        """``steps``, or fewer if the last round's pace says they would not fit ``max_seconds``."""
        if max_seconds is None or self.seconds_per_step is None:
            return steps
        return max(1, min(steps, int(max_seconds / self.seconds_per_step)))

    def round_lr(self, lr: float, steps: int) -> float:
        """The learning rate of a round of ``steps`` steps when the federation's config does not
        anneal within a round: ``lr`` decayed linearly over the site's planned steps by the steps
        it has trained, as a server decays it over rounds (``fedsynth.model.FEDERATED_DP_CONFIG``).
        Past the plan (possible without DP) it stays at the last planned round's rate."""
        left = 1.0 - self.steps_done / self.planned_steps
        return lr * max(left, min(1.0, steps / self.planned_steps))

    def model_for(self, spec: ModelSpec, params: np.ndarray) -> TabularDiffusion:
        """The site's model object, rebuilt only when the federation's spec changes."""
        if self._model is None or spec != self._spec:
            local = replace(spec, config=replace(spec.config, batch_size=self.batch_size))
            self._model, self._spec = local.build(), spec
        self._model.load_flat_parameters(params)
        return self._model

    def train_round(
        self, spec: ModelSpec, params: np.ndarray, steps: int, rng: np.random.Generator
    ) -> RoundResult:
        """Charge the ledger, train ``steps`` steps from ``params``, return the delta."""
        privacy = None
        if self.ledger is not None:
            self.ledger.record(self.noise, self.sample_rate, steps, budget=self.budget)
            privacy = OpacusPrivacy(
                self.noise,
                self.max_grad_norm,
                RDPAccountant(),
                self.budget.delta if self.budget else 1e-5,
                noise_multiplicity=self.noise_multiplicity,
            )
        model = self.model_for(spec, params)
        if not spec.config.lr_anneal:
            model.config = replace(model.config, lr=self.round_lr(spec.config.lr, steps))
        report = train_local(model, self.encoded, self.cond, steps=steps, rng=rng, privacy=privacy)
        self.steps_done += report.steps
        self.seconds_per_step = report.seconds / max(1, report.steps)
        delta = model.flat_parameters() - params.astype(np.float32)
        if not np.all(np.isfinite(delta)):
            raise ConfigError("local training diverged (non-finite parameters); update not sent")
        if self.ledger is None:
            return RoundResult(delta, report, float("inf"))
        return RoundResult(
            delta, report, self.ledger.spent(), self.ledger.sequence, self.ledger.recent_writes()
        )

"""Site agent settings, validated once at start from the environment (``FEDSYNTH_*``) and flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedsynth.data.preprocess import default_histogram_noise
from fedsynth.model.config import DEFAULT_NOISE_MULTIPLICITY, FEDERATED_LOCAL_STEPS

__all__ = ["AgentSettings"]


class AgentSettings(BaseSettings):
    """One site's agent: where its data is, its privacy budget, its limits."""

    model_config = SettingsConfigDict(env_prefix="FEDSYNTH_", extra="ignore", frozen=True)

    site: str
    data: Path = Field(description="the site's CSV or Parquet file; never leaves this machine")
    federation_id: str = "fedsynth-demo"
    bootstrap: str | None = None
    run_dir: Path = Path(".fedsynth/run")
    dataset: str = "heart_disease_uci"
    consent: bool = True
    epsilon: float = Field(default=8.0, gt=0, description="total budget: histograms + DP-SGD")
    delta: float = Field(default=1e-5, gt=0, lt=1)
    hist_noise: float | None = Field(
        default=None,
        gt=0,
        description="noise multiplier of the Gaussian DP histograms, accounted with DP-SGD in "
        "the site's ledger (default 16 / epsilon)",
    )
    max_grad_norm: float = Field(default=1.0, gt=0)
    noise_multiplicity: int = Field(
        default=DEFAULT_NOISE_MULTIPLICITY,
        ge=1,
        description="DP-SGD: timestep/noise draws averaged per row before clipping (free)",
    )
    planned_rounds: int = Field(
        default=20, ge=1, description="rounds the DP noise and the learning-rate decay plan for"
    )
    steps_per_round: int = Field(default=FEDERATED_LOCAL_STEPS, ge=1)
    batch_size: int = Field(default=64, ge=2)
    threads: int = Field(default=1, ge=1, description="torch threads for local training")
    max_minutes_per_update: float | None = Field(
        default=None, gt=0, description="cap on local training time per update (steps shrink)"
    )
    heartbeat_s: float = Field(default=10.0, gt=0)
    seed: int | None = None
    dp: bool = Field(default=True, description="DP-SGD on (turning it off warns loudly)")
    secure: bool = Field(
        default=True, description="histograms travel only masked (the federation is in secure mode)"
    )

    @property
    def histogram_noise(self) -> float:
        """The histograms' noise multiplier: ``hist_noise`` or the default for ``epsilon``."""
        return default_histogram_noise(self.epsilon) if self.hist_noise is None else self.hist_noise

    @property
    def site_dir(self) -> Path:
        return self.run_dir / "sites" / self.site

    @property
    def keys_dir(self) -> Path:
        return self.run_dir / "keys"

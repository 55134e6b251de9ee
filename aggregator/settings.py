"""Aggregator settings, validated once at start from the environment (``FEDSYNTH_*``) and flags."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedsynth.model.config import FEDERATED_DP_CONFIG

__all__ = ["UNACKED_PER_CHANGE", "AggregatorSettings"]

log = logging.getLogger(__name__)


OPERATOR = "operator"
"""The sender name of the federation's operator: an ``OperatorCommand`` must be signed with the
``operator`` identity key of the key folder."""
RESERVED_SENDERS = frozenset({"aggregator", "gateway", OPERATOR})
"""Sender names that are no site's (their identity keys sit beside the sites' in one folder)."""


UNACKED_PER_CHANGE = 4
"""Group commit: besides ``checkpoint_every`` messages that changed state, at most this many
times as many messages are handled unacked under one checkpoint (chunks of payloads not yet
whole, refused records: they change no state, but each unacked event keeps its record, up to
900 KiB, in memory)."""


class AggregatorSettings(BaseSettings):
    """Everything the aggregator needs to run one federation."""

    model_config = SettingsConfigDict(env_prefix="FEDSYNTH_", extra="ignore", frozen=True)

    federation_id: str = "fedsynth-demo"
    bootstrap: str | None = None
    run_dir: Path = Path(".fedsynth/run")
    dataset: str = Field(default="heart_disease_uci", description="dataset schema name or path")
    sites: tuple[str, ...] = Field(description="site ids whose identity keys form the roster")
    rounds: int = Field(default=20, ge=1, description="global versions to publish, then stop")
    mode: Literal["plain", "secure"] = "secure"
    strategy: dict[str, Any] | None = Field(
        default=None,
        description='strategy config, e.g. {"name": "fedbuff", "buffer_size": 3};'
        " synchronous FedAvg over every roster site when unset",
    )
    seed: int = 0
    hello_timeout_s: float = Field(default=300.0, gt=0)
    round_timeout_s: float = Field(default=600.0, gt=0)
    chunk_timeout_s: float = Field(default=120.0, gt=0)
    max_norm: float | None = Field(default=None, gt=0)
    max_staleness: int | None = Field(default=None, ge=0)
    cohort_size: int | None = Field(default=None, ge=2, description="K; every roster site if unset")
    secure_clip: float = Field(default=0.5, gt=0, description="per-coordinate clip of w*delta / w")
    secure_max_weight: int = Field(default=10_000, ge=1, description="largest n_samples weight")
    secure_histograms: bool = Field(
        default=True, description="secure mode: sum the sites' DP histograms in a SecAgg+ cohort"
    )
    histogram_clip: float = Field(default=10_000.0, gt=0, description="largest count per bin")
    join_deadline_s: float = Field(default=120.0, gt=0)
    input_deadline_s: float = Field(default=300.0, gt=0)
    session_timeout_s: float = Field(
        default=10.0, gt=0, description="faust group session timeout (it joins in about half)"
    )
    # the federation's model: by default the federated DP recipe
    # (fedsynth.model.FEDERATED_DP_CONFIG), as sites train with DP-SGD unless told otherwise
    hidden: tuple[int, ...] = FEDERATED_DP_CONFIG.hidden
    n_timesteps: int = FEDERATED_DP_CONFIG.n_timesteps
    embed_dim: int = Field(default=FEDERATED_DP_CONFIG.embed_dim, ge=2)
    lr: float = Field(
        default=FEDERATED_DP_CONFIG.lr, gt=0,
        description="local AdamW learning rate",
    )
    lr_anneal: bool = Field(
        default=FEDERATED_DP_CONFIG.lr_anneal,
        description="decay the rate to 0 within each local round; off (default): each site "
        "decays it linearly over its planned steps, as a server decays it over rounds",
    )
    numeric_skip: bool = Field(
        default=FEDERATED_DP_CONFIG.numeric_skip,
        description="numeric outputs correct the best linear denoiser (DiffusionConfig)",
    )
    guidance_scale: float = Field(
        default=FEDERATED_DP_CONFIG.guidance_scale, ge=0, le=10,
        description="the model's own classifier-free guidance scale: what the gateway serves a "
        "request that names none (sampling only; training does not use it)",
    )
    ingest_workers: int = Field(
        default_factory=lambda: min(8, os.cpu_count() or 1),
        ge=1,
        description="threads that verify and decode inbound messages ahead of the engine",
    )
    prefetch_depth: int = Field(
        default=8, ge=1, description="messages verified ahead of the engine, per inbound topic"
    )
    check_crcs: bool = Field(
        default=False,
        description="CRC-32C check of fetched record batches (aiokafka check_crcs); off by "
        "default: every record the aggregator reads is signed over a SHA-256 of its bytes, which "
        "catches any corruption the CRC would (as a dead-lettered bad signature, not a consumer "
        "error), so the CRC only adds a second pass over every byte on the event loop",
    )
    checkpoint_every: int = Field(
        default=16,
        ge=1,
        description="most messages that changed state handled back to back under one checkpoint",
    )

    @property
    def unacked_limit(self) -> int:
        """Most messages handled under one checkpoint (:data:`UNACKED_PER_CHANGE`)."""
        return UNACKED_PER_CHANGE * self.checkpoint_every

    @field_validator("sites")
    @classmethod
    def _no_reserved_site(cls, sites: tuple[str, ...]) -> tuple[str, ...]:
        taken = sorted(RESERVED_SENDERS.intersection(sites))
        if taken:
            raise ValueError(f"{', '.join(taken)} may not be site ids: they name other senders")
        return sites

    @property
    def keys_dir(self) -> Path:
        return self.run_dir / "keys"

    @property
    def state_dir(self) -> Path:
        return self.run_dir / "aggregator"

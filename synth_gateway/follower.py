"""Follows ``fedsynth.global-model`` and keeps the newest verified version ready to sample.

Only versions signed by the aggregator's identity key are accepted. Each version is rebuilt into
a :class:`~fedsynth.model.tabddpm.TabularDiffusion`, the shares of its discrete levels and missing
values are calibrated to the sites' released DP histograms on its first use
(:meth:`~fedsynth.model.tabddpm.TabularDiffusion.calibrate_marginals`, post-processing,
deterministic), and it is wrapped as a :class:`~synth_gateway.ports.ReleasedModel`
whose sampler parses the caller's constraints against the dataset schema.

Guidance moves the shares the model draws, so a calibration holds for one scale: a request at
another scale than the model's own is served by a copy calibrated at that scale, made on first use
and kept for the :data:`CALIBRATED_SCALES` scales used last.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pandas as pd
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from fedsynth.errors import FedSynthError
from fedsynth.federation import ModelSpec, decode_vector
from fedsynth.messages import AGGREGATOR, Inbound, MessageReader
from fedsynth.model.constraints import Constraints
from fedsynth.model.tabddpm import TabularDiffusion
from schemas.signing import KeyRing
from synth_gateway.ports import ReleasedModel, StaticModelSource
from topics.clients import make_consumer
from topics.registry import GLOBAL_MODEL

__all__ = ["CALIBRATED_SCALES", "ModelFollower", "released_model"]

log = logging.getLogger(__name__)

#: Calibrated copies of one version kept at once, one per guidance scale (least recently used
#: goes first). A copy is a few hundred kilobytes; calibrating one takes a second or two (DP
#: recipe, one core).
CALIBRATED_SCALES = 4


def released_model(record: dict[str, Any]) -> ReleasedModel:
    """A sampleable model from one decoded GlobalModel record (MessageError if malformed)."""
    spec = ModelSpec.from_bytes(record["encoder"])
    params = decode_vector(record["vector"], record["codec"], int(record["n_parameters"]))
    model = spec.build(params)
    schema = spec.encoder.schema
    version = int(record["version"])
    lock = threading.Lock()
    by_scale: OrderedDict[float, TabularDiffusion] = OrderedDict()

    def sample(
        n: int, where: str | None, rng: np.random.Generator, guidance: float | None = None
    ) -> pd.DataFrame:
        conditions = Constraints.parse(where, schema) if where else None
        scale = model.config.guidance_scale if guidance is None else float(guidance)
        with lock:
            served = by_scale.get(scale)
            if served is None:  # on first use: versions superseded unused cost nothing
                served = copy.deepcopy(model)
                _calibrate(served, version, scale)
                by_scale[scale] = served
                while len(by_scale) > CALIBRATED_SCALES:
                    by_scale.popitem(last=False)
            by_scale.move_to_end(scale)
            return _sample(served, n, conditions, rng, scale)

    return ReleasedModel(
        model_name=record["model_name"],
        dataset=schema.name,
        version=version,
        contributors=tuple(record["contributors"]),
        epsilon_by_site={k: float(v) for k, v in record["epsilon_by_site"].items()},
        sample=sample,
        columns=tuple(c.name for c in schema.modelled_columns),
        guidance=model.config.guidance_scale,
    )


def _calibrate(model: TabularDiffusion, version: int, scale: float) -> None:
    before = model.calibrate_marginals(guidance=scale)
    if before:
        log.info(
            "version %d, guidance %g: level and missing shares calibrated to the DP histograms "
            "(model drew missing: %s)",
            version, scale,
            ", ".join(f"{k} {v[-1]:.0%}" for k, v in before.items()),
        )
    if model.pattern_accept is not None and model.encoder.missing_patterns is not None:
        log.info(
            "version %d, guidance %g: rows kept to %d released missingness patterns "
            "(+ other %.0f%%)",
            version, scale, len(model.encoder.missing_patterns.codes),
            100 * model.encoder.missing_patterns.other,
        )


def _sample(
    model: TabularDiffusion,
    n: int,
    conditions: Constraints | None,
    rng: np.random.Generator,
    guidance: float | None,
) -> pd.DataFrame:
    return model.sample(n, conditions=conditions, rng=rng, guidance=guidance)


class ModelFollower:
    """A background task reading the global-model topic into a model source."""

    def __init__(
        self, bootstrap: str, federation_id: str, keys: KeyRing, source: StaticModelSource
    ) -> None:
        self.bootstrap = bootstrap
        self.federation_id = federation_id
        self.keys = keys
        self.source = source
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        """Start following; safe to call twice."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="model-follower")

    async def stop(self) -> None:
        """Stop following; safe to call twice."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            try:
                await self._follow()
            except (KafkaError, OSError) as exc:
                log.warning(
                    "global-model follower lost the broker (%s); retry in %.0fs", exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, 30.0)

    async def _follow(self) -> None:
        consumer = make_consumer(self.bootstrap, group_id=None, client_id="gateway")
        await consumer.start()
        try:
            tp = TopicPartition(GLOBAL_MODEL.name, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            reader = MessageReader(self.federation_id, self.keys)
            async for rec in consumer:
                got = reader.read(rec.value)
                if (
                    isinstance(got, Inbound)
                    and got.name == "GlobalModel"
                    and got.record["sender"] == AGGREGATOR
                ):
                    await self._load(got.record)
        finally:
            await consumer.stop()

    async def _load(self, record: dict[str, Any]) -> None:
        current = self.source.current()
        if current is not None and record["version"] <= current.version:
            return
        try:
            model = await asyncio.to_thread(released_model, record)
        except FedSynthError as exc:
            log.warning("global version %s unusable: %s", record.get("version"), exc)
            return
        self.source.set(model)
        self.ready.set()
        log.info("gateway now serves model %s version %d", model.model_name, model.version)

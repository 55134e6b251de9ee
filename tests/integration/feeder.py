"""A scripted site population for aggregator tests: fixed bytes, sent when each version appears.

Every message is built once and cached by (site, base version), so repeated runs (an undisturbed
run and runs whose aggregator is killed) receive byte-identical inputs.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np
from aiokafka import TopicPartition

from fedsynth.federation import UPDATE_CODEC, decode_vector, encode_vector
from fedsynth.messages import Inbound, MessageReader
from schemas.signing import KeyRing
from tests.integration.harness import FED, Federation, produce
from topics.clients import make_consumer
from topics.registry import GLOBAL_MODEL, SITE_EVENTS, UPDATES


class Feeder:
    """Sends the sites' hellos, then each site's update for every new global version once.

    Updates use the agents' codec (``quantize8|zstd``: the aggregator sums their levels) unless
    ``codec`` names another.
    """

    def __init__(
        self, fed: Federation, max_chunk: int = 900 * 1024, codec: str = UPDATE_CODEC
    ) -> None:
        self.fed = fed
        self.max_chunk = max_chunk
        self.codec = codec
        self.cache: dict[tuple[str, int], list[bytes]] = {}
        self.hellos = [fed.hello(s, seed=i) for i, s in enumerate(fed.sites)]

    def update(self, site: str, version: int, n_parameters: int) -> list[bytes]:
        key = (site, version)
        if key not in self.cache:
            seed = abs(hash((site, version))) % 2**32
            rng = np.random.default_rng(seed)
            delta = rng.normal(0, 0.01, n_parameters).astype(np.float32)
            vector, _ = encode_vector(delta, self.codec, rng)
            fields = {
                "update_id": str(uuid.UUID(int=seed * 1000 + version)),
                "site_id": site,
                "base_version": version,
                "n_samples": 100 + 10 * self.fed.sites.index(site),
                "mode": "plain",
                "cohort_id": None,
                "weight": 1.0,
                "codec": self.codec,
                "vector": vector,
                "n_parameters": n_parameters,
                "train_loss": 0.0,
                "epsilon_spent": 0.25 * (version + 1),  # one ledger: grows every update
            }
            chunks = self.fed.factory(site).build_chunked("ModelUpdate", fields, self.max_chunk)
            self.cache[key] = [c.value for c in chunks]
        return self.cache[key]

    async def run(
        self, bootstrap: str, final: int, sent: set[int] | None = None
    ) -> dict[int, np.ndarray]:
        """Feed until version ``final`` is published; returns every version's vector."""
        sent = set() if sent is None else sent
        await produce(bootstrap, SITE_EVENTS.name, self.hellos)
        ring = KeyRing()
        ring.add("aggregator", self.fed.keys["aggregator"].public_raw())
        reader = MessageReader(FED, ring)
        versions: dict[int, np.ndarray] = {}
        consumer = make_consumer(bootstrap, group_id=None)
        await consumer.start()
        try:
            tp = TopicPartition(GLOBAL_MODEL.name, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while final not in versions:
                batch = await consumer.getmany(timeout_ms=300)
                for rec in (r for recs in batch.values() for r in recs):
                    got = reader.read(rec.value)
                    if isinstance(got, Inbound):
                        await self._on_version(bootstrap, got.record, versions, sent)
        finally:
            await consumer.stop()
        return versions

    async def _on_version(
        self, bootstrap: str, rec: dict[str, Any], versions: dict[int, np.ndarray], sent: set[int]
    ) -> None:
        v = int(rec["version"])
        versions[v] = decode_vector(rec["vector"], rec["codec"], int(rec["n_parameters"]))
        if v in sent or rec.get("final"):
            return
        sent.add(v)
        await self.send_updates(bootstrap, v, int(rec["n_parameters"]))

    async def send_updates(self, bootstrap: str, version: int, n_parameters: int) -> None:
        """Every site's update for ``version`` (tests override this to disturb the sending)."""
        for site in self.fed.sites:
            await produce(
                bootstrap, UPDATES.name, self.update(site, version, n_parameters), key=site.encode()
            )


__all__ = ["Feeder", "asyncio"]

"""A secure-mode agent whose update was spent in a cohort trains its next update from the version
that cohort's sum makes, not from an older one (``SecureSite.train_from``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.secure import SecureSite, SecureSiteConfig
from agents.site import GlobalVersion, SiteAgent
from aggregator.strategies.staleness import constant_staleness
from fedsynth.secagg import FixedPointSpec
from tests.unit.test_agent_histograms import _agent


class _Done(Exception):
    pass


class _Quiet:
    """A consumer with nothing to hand over; runs one scripted step before each poll."""

    def __init__(self, steps: list[Callable[[], None]]) -> None:
        self.steps = steps

    async def getmany(self, **_: object) -> dict[Any, Any]:
        if not self.steps:
            raise _Done
        self.steps.pop(0)()
        return {}


def _version(v: int) -> GlobalVersion:
    return GlobalVersion(v, np.zeros(1, np.float32), None, False, [])  # type: ignore[arg-type]


async def test_the_agent_waits_for_the_version_holding_its_spent_update(tmp_path: Path) -> None:
    agent: SiteAgent = _agent(tmp_path)
    spec = FixedPointSpec(clip=1.0, levels=1 << 10, max_weight=500.0)
    agent.secure = SecureSite(
        SecureSiteConfig(agent.s.federation_id, agent.s.site, spec, constant_staleness),
        np.random.default_rng(0),
    )
    agent.secure._awaiting = ("c1", 6)  # spent in a cohort for version 5: its sum makes 6
    agent.state["trained_version"] = 4
    trained: list[int] = []

    async def train_and_send(gv: GlobalVersion) -> bool:
        trained.append(gv.version)
        agent.state["trained_version"] = gv.version
        return True

    async def heartbeat(status: str) -> None:
        return None

    agent._train_and_send = train_and_send  # type: ignore[method-assign]
    agent._heartbeat = heartbeat  # type: ignore[method-assign]

    def see(v: int) -> Callable[[], None]:
        def step() -> None:
            agent.latest = _version(v)
        return step

    with pytest.raises(_Done):
        await agent._follow(_Quiet([see(5), see(5), see(6)]))
    assert trained == [6]  # version 5 was newer than its last base, yet lacks its update

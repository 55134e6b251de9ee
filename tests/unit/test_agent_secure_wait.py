"""A secure-mode agent whose update was spent in a cohort trains its next update from the version
that cohort's sum makes, not from an older one (``SecureSite.train_from``), also after a restart."""

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
from tests.unit.test_cohorts import config


class _Done(Exception):
    pass


class _Quiet:
    """A consumer with nothing to hand over; runs one scripted step before each poll. It has read
    the control topic to ``position``, of ``highwater`` records (None: nothing fetched yet)."""

    def __init__(
        self, steps: list[Callable[[], None]], position: int = 0, highwater: int | None = 0
    ) -> None:
        self.steps = steps
        self._position, self._highwater = position, highwater

    def highwater(self, _tp: object) -> int | None:
        return self._highwater

    async def position(self, _tp: object) -> int:
        return self._position

    async def getmany(self, **_: object) -> dict[Any, Any]:
        if not self.steps:
            raise _Done
        self.steps.pop(0)()
        return {}


def scripted(agent: SiteAgent) -> tuple[list[int], list[str]]:
    """Stand-ins for the agent's training and heartbeats; the versions it trained on and the
    statuses it reported, in order."""
    trained: list[int] = []
    beats: list[str] = []

    async def train_and_send(gv: GlobalVersion) -> bool:
        trained.append(gv.version)
        agent.state["trained_version"] = gv.version
        return True

    async def heartbeat(status: str) -> None:
        beats.append(status)

    agent._train_and_send = train_and_send  # type: ignore[method-assign]
    agent._heartbeat = heartbeat  # type: ignore[method-assign]
    return trained, beats


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
    trained, _ = scripted(agent)

    def see(v: int) -> Callable[[], None]:
        def step() -> None:
            agent.latest = _version(v)
        return step

    with pytest.raises(_Done):
        await agent._follow(_Quiet([see(5), see(5), see(6)]))
    assert trained == [6]  # version 5 was newer than its last base, yet lacks its update


def _open(cohort_id: str, target: int) -> dict[str, Any]:
    """A ``CohortOpen`` as the site reads it (its join deadline long past: a replayed record)."""
    return {
        "federation_id": "fedsynth-demo",
        "sender": "aggregator",
        "message_id": f"open-{cohort_id}",
        "cohort_id": cohort_id,
        "target_version": target,
        "join_deadline_ms": 0,
    }


def _restarted_with_a_wait(tmp_path: Path) -> SiteAgent:
    """An agent whose update was spent in cohort c3 (for version 5), stopped and started again."""
    first: SiteAgent = _agent(tmp_path)
    first._start_secure(config().site_terms())
    assert first.secure is not None
    first.secure._awaiting = ("c3", 6)  # as an UnmaskRequest naming it a survivor leaves it
    first._sync_store(first.secure)
    again: SiteAgent = _agent(tmp_path)
    again._start_secure(config().site_terms())
    return again


def test_a_restarted_agent_keeps_its_wait_through_the_replay_of_older_cohorts(
    tmp_path: Path,
) -> None:
    agent = _restarted_with_a_wait(tmp_path)
    site = agent.secure
    assert site is not None and site.train_from == 6
    assert agent.s.federation_id == "fedsynth-demo"
    for cohort_id, target in (("c1", 3), ("c2", 4)):  # the replay: cohorts before the spent one
        site.on_record("CohortOpen", _open(cohort_id, target), now=1.0)
        assert site.train_from == 6, cohort_id
    site.on_record("CohortOpen", _open("c3", 5), now=1.0)  # the spent cohort's own open
    assert site.train_from == 6
    site.on_record("CohortOpen", _open("c4", 5), now=1.0)  # read after it: c3 failed
    assert site.train_from == 0 and site.drain_rejections() == []
    agent._sync_store(site)
    assert _agent(tmp_path).state["awaiting"] is None  # lifted on disk too


@pytest.mark.parametrize(
    ("position", "highwater", "lifted"),
    [(7, 7, True), (3, 7, False), (0, None, False)],
    ids=["read-to-the-end", "still-replaying", "nothing-fetched"],
)
async def test_a_resumed_wait_is_armed_once_the_agent_has_read_the_control_topic(
    tmp_path: Path, position: int, highwater: int | None, lifted: bool
) -> None:
    # the spent cohort's open record is gone (retention): only reading to the end arms the wait
    agent = _restarted_with_a_wait(tmp_path)
    site = agent.secure
    assert site is not None
    site.on_record("CohortOpen", _open("c1", 3), now=1.0)

    async def heartbeat(status: str) -> None:
        return None

    agent._heartbeat = heartbeat  # type: ignore[method-assign]
    with pytest.raises(_Done):
        await agent._follow(_Quiet([lambda: None], position, highwater))
    site.on_record("CohortOpen", _open("c4", 5), now=1.0)
    assert site.train_from == (0 if lifted else 6)

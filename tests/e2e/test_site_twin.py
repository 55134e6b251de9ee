"""A second agent of one site on "another host", with its own copy of the site's state folder,
in the demo's secure federation: both agents' privacy ledgers start alike and grow in lockstep,
so the first of the twin's reports that the aggregator holds against an applied one gives the
second ledger away. The site is suspended, the run finishes with the other three sites, and the
site's agents stop once a version gives the site's privacy as unbounded.

The agents, the aggregator and the broker are the demo's (a tiny model). The twin is started
from a copy of the run directory made before anything ran: the folder lock (`StateLock`) covers
one host, and a copy is what a second host would have.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from agents.demo import DemoOptions, agent_argv, prepare, service_env, start_services
from agents.processes import ProcessGroup
from schemas.signing import KeyRing
from tests.e2e.test_agent_restart import FAST, final_and_updates
from topics.broker import EmbeddedBroker
from topics.registry import ensure_topics

SITE = "Hungary"
ROUNDS = 4


@pytest.mark.slow
def test_a_second_ledger_of_one_site_is_caught_and_the_others_finish(tmp_path: Path) -> None:
    opts = DemoOptions(run_dir=tmp_path / "run", rounds=ROUNDS, steps_per_round=4, epsilon=8.0)
    _, _, files = prepare(opts, Console(quiet=True))
    twin_opts = DemoOptions(
        run_dir=tmp_path / "twin", rounds=ROUNDS, steps_per_round=4, epsilon=8.0
    )
    shutil.copytree(opts.run_dir, twin_opts.run_dir)
    env = {**service_env(opts), **FAST}
    with EmbeddedBroker(record=False) as broker, ProcessGroup(opts.run_dir / "logs") as group:
        asyncio.run(ensure_topics(broker.bootstrap))
        start_services(opts, group, broker.bootstrap, files, port=None, env=FAST)
        twin_argv = agent_argv(twin_opts, broker.bootstrap, SITE, files[SITE])
        group.start(f"twin-{SITE}", twin_argv, env)
        keys = KeyRing.from_dir(opts.run_dir / "keys")
        try:
            asyncio.run(final_and_updates(broker.bootstrap, keys, timeout_s=300))
        except AssertionError as exc:
            logs = "\n\n".join(f"== {c.name}\n{c.log_tail(30)}" for c in group.children)
            raise AssertionError(f"{exc}\n{logs}") from None
    log = (opts.run_dir / "logs" / "aggregator.log").read_text()
    assert f"site {SITE} suspended: its privacy ledger went back" in log, log[-4000:]
    published = [line for line in log.splitlines() if "published global version" in line]
    after = log[log.index(f"site {SITE} suspended") :]
    later = [line for line in after.splitlines() if "published global version" in line]
    assert len(published) == ROUNDS + 1 and "(final)" in published[-1], published
    assert later and all(SITE not in line.split("contributors")[1] for line in later), later
    agents = [opts.run_dir / "logs" / f"{who}-{SITE}.log" for who in ("agent", "twin")]
    stopped = [p.name for p in agents if "privacy as unbounded" in p.read_text()]
    assert stopped, "a version after the suspension stops the site's agents"

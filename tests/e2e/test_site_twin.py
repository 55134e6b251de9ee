"""A second agent of one site on "another host", with its own copy of the site's state folder,
in the demo's secure federation: both agents' privacy ledgers start alike and grow in lockstep,
so the first of the twin's reports that the aggregator holds against an applied one gives the
second ledger away. The site is suspended, the federation goes on with the other three sites,
and the site's agent stops once it reads the suspension in the audit chain (or a version that
gives the site's privacy as unbounded, should that come first). Then the operators take the
site back as README "When something fails" says: the twin is stopped, its
ledger added to the agent's (`fedsynth ledger absorb`), and, after the aggregator made a version
without the site (which the restarted agent then finds), the site reinstated at the printed
total while the aggregator runs (`fedsynth aggregator --reinstate ... --send`: the operator's
signed command on the site-events topic), and the agent started again; the site contributes to
later versions and the run finishes. (The offline reinstatement, on a stopped aggregator's
checkpoint, is tested on a real checkpoint in tests/unit/test_reinstate.py.)

The agents, the aggregator and the broker are the demo's (a tiny model). The twin is started
from a copy of the run directory made before anything ran: the folder lock (`StateLock`) covers
one host, and a copy is what a second host would have.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path

import pytest
from rich.console import Console

from agents.demo import DemoOptions, agent_argv, prepare, service_env, start_services
from agents.processes import Child, ProcessGroup
from aggregator.audit import audit_findings, read_audit
from aggregator.checkpoint import CheckpointStore
from aggregator.cli import load_checkpoint_key
from aggregator.settings import AggregatorSettings
from fedsynth.cli import main
from schemas.signing import KeyRing
from tests.e2e.test_agent_restart import FAST, final_and_updates
from topics.broker import EmbeddedBroker
from topics.registry import ensure_topics

SITE = "Hungary"
ROUNDS = 8  # room after a late suspension for versions the site is back in


def _wait(what: str, done: object, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"no {what} in {timeout_s:.0f}s"
        time.sleep(0.5)


def _child(group: ProcessGroup, name: str) -> Child:
    return next(c for c in group.children if c.name == name)


@pytest.mark.slow
def test_a_second_ledger_of_one_site_is_caught_and_the_site_taken_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = DemoOptions(run_dir=tmp_path / "run", rounds=ROUNDS, steps_per_round=4, epsilon=8.0)
    _, _, files = prepare(opts, Console(quiet=True))
    twin_opts = DemoOptions(
        run_dir=tmp_path / "twin", rounds=ROUNDS, steps_per_round=4, epsilon=8.0
    )
    shutil.copytree(opts.run_dir, twin_opts.run_dir)
    env = {**service_env(opts), **FAST}
    logs = opts.run_dir / "logs"
    aggregator_log = logs / "aggregator.log"
    with EmbeddedBroker(record=False) as broker, ProcessGroup(logs) as group:
        asyncio.run(ensure_topics(broker.bootstrap))
        start_services(opts, group, broker.bootstrap, files, port=None, env=FAST)
        twin = group.start(
            f"twin-{SITE}", agent_argv(twin_opts, broker.bootstrap, SITE, files[SITE]), env
        )
        try:
            _wait("suspension", lambda: f"site {SITE} suspended" in aggregator_log.read_text())
            group.stop_one(twin)
            agent = _child(group, f"agent-{SITE}")
            _wait("stop of the site's agent", lambda: not agent.alive())
            assert agent.popen.returncode == 3, agent.log_tail()
            # by the audit chain's suspension, or by a version that gives its epsilon as infinite
            why = r"global version (\d+) (?:gives site|\(audit event)"
            stopped_at = int(re.findall(why, agent.log_tail())[-1])
            # a version made while the site is out: the restarted agent finds it published
            _wait("version while the site is out", lambda: f"published global version "
                  f"{stopped_at + 1} " in aggregator_log.read_text())

            other = twin_opts.run_dir / "sites" / SITE / "ledger.json"
            assert main(["ledger", "absorb", str(other), "--site", SITE,
                         "--run-dir", str(opts.run_dir)]) == 0
            command = next(
                line.split() for line in capsys.readouterr().out.splitlines()
                if "--reinstate" in line and "--send" in line
            )
            assert "--absorbed-write" in command, command  # the twin's last write id
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            assert main(["aggregator", "--run-dir", str(opts.run_dir), "--bootstrap",
                         broker.bootstrap, *command[2:], "--note", "e2e"]) == 0
            _wait("reinstatement", lambda: f"site {SITE} reinstated" in aggregator_log.read_text())
            group.start(
                f"agent-{SITE}-2", agent_argv(opts, broker.bootstrap, SITE, files[SITE]), env
            )
            keys = KeyRing.from_dir(opts.run_dir / "keys")
            asyncio.run(final_and_updates(broker.bootstrap, keys, timeout_s=300))
            trail = asyncio.run(read_audit(broker.bootstrap, "fedsynth-demo", keys))
        except AssertionError as exc:
            tails = "\n\n".join(f"== {c.name}\n{c.log_tail(30)}" for c in group.children)
            raise AssertionError(f"{exc}\n{tails}") from None
    log = aggregator_log.read_text()
    assert f"site {SITE} suspended: its privacy ledger went back" in log, log[-4000:]
    suspended = log[log.index(f"site {SITE} suspended") : log.index(f"site {SITE} reinstated")]
    while_out = [line for line in suspended.splitlines() if "published global version" in line]
    assert all(SITE not in line.split("contributors")[1] for line in while_out), while_out
    second = log[log.index(f"site {SITE} reinstated") :]
    assert "suspended:" not in second.split("\n", 1)[1], second[-4000:]
    published = [line for line in log.splitlines() if "published global" in line]
    assert len(published) == ROUNDS + 1 and "(final)" in published[-1], published
    back = [line for line in second.splitlines() if "published global version" in line]
    assert any(SITE in line.split("contributors")[1] for line in back), back
    # the audit chain holds both sides of it, signed and linked, in order (as `fedsynth audit`
    # reads it)
    chains, _, findings = audit_findings(trail)
    assert findings == [] and len(chains) == 1, findings
    chain = chains[0]
    about = [(e.actor, e.action) for e in chain if e.details.get("site") == SITE]
    assert about == [("aggregator", "suspend_site"), ("operator", "reinstate_site")], about
    suspension = next(e for e in chain if e.action == "suspend_site")
    assert "went back" in suspension.details["reason"]
    assert sum(e.action == "publish_version" for e in chain) == ROUNDS + 1
    # every site's agent reported its ledger's write ids, and the aggregator kept their links
    settings = AggregatorSettings(run_dir=opts.run_dir, sites=tuple(files))
    store = CheckpointStore(settings.state_dir / "checkpoint.bin",
                            load_checkpoint_key(settings, create=False), settings.federation_id)
    ckpt = store.load()
    assert ckpt is not None
    links = ckpt.extra["service"]["privacy_ledgers"]["links"]
    assert set(links) == set(files) and all(links.values()), links

"""Taking a suspended site back: the pure rule, the service's state, and the offline command on
a real encrypted checkpoint (``fedsynth aggregator --reinstate``), whose audit event the
restarted aggregator sends with its outbox."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.outbox import Outbox, OutboxMessage
from aggregator.app import AggregatorRuntime
from aggregator.ledgers import PrivacyLedgers, Report
from aggregator.operator import reinstate_command
from aggregator.reinstate import reinstate_site
from aggregator.service import (
    AggregatorService,
    Effects,
    Phase,
    SiteReinstated,
    SiteSuspended,
)
from aggregator.settings import AggregatorSettings
from fedsynth.cli import main
from fedsynth.durable import StateInUseError, StateLock
from fedsynth.errors import ConfigError
from fedsynth.messages import Inbound, MessageFactory, MessageReader
from fedsynth.privacy import SiteLedger
from observability.audit import GENESIS_HASH, AuditEvent, verify_chain
from schemas.signing import IdentityKey, KeyRing
from tests.integration.harness import FED, Federation
from tests.unit.test_privacy_ledgers import _feed, _update
from topics.registry import SITE_EVENTS, UPDATES

KEY = bytes(range(32))


# ------------------------------------------------------------------------------------ pure
def _suspended() -> PrivacyLedgers:
    ledgers = PrivacyLedgers()
    ledgers.record("A", Report(1.5))
    assert ledgers.admit("A", Report(1.2)) is not None  # a second ledger's report
    return ledgers


def test_a_reinstated_site_must_report_more_than_its_absorbed_total_from_then_on() -> None:
    ledgers = _suspended()
    why = ledgers.reinstate("A", 3.0, reported=1.5)
    assert "went back" in why and ledgers.suspended("A") is None
    assert ledgers.refusal("A", Report(2.9)) is not None, "a report below the total"
    assert ledgers.admit("A", Report(3.0)) is None, "an update trained before the absorb reports it"
    ledgers.record("A", Report(3.0))
    assert ledgers.refusal("A", Report(3.0)) is not None and ledgers.admit("A", Report(3.2)) is None
    ledgers.record("A", Report(3.2))
    assert ledgers.admit("A", Report(1.2)) is not None and ledgers.suspended("A") is not None, (
        "the other ledger, still running, is caught again"
    )


def test_a_record_created_before_the_reinstatement_is_refused_without_suspending() -> None:
    """The stopped agent's last record may still be on its way: dated before the reinstatement
    it is refused and the site stays admitted; dated after, or undated, it suspends again."""
    ledgers = _suspended()
    ledgers.reinstate("A", 3.0, reported=1.5, at_ms=10_000)
    why = ledgers.admit("A", Report(1.6, 9, created_ms=9_999))
    assert why is not None and "created before its reinstatement" in why
    assert ledgers.suspended("A") is None
    assert ledgers.admit("A", Report(3.1, 9, created_ms=9_999)) is None, "one that passes, passes"
    ledgers.record("A", Report(3.1, 9))
    assert ledgers.admit("A", Report(3.3, 9, created_ms=9_000)) is not None, "a sequence too"
    assert ledgers.suspended("A") is None
    back = PrivacyLedgers.from_state(json.loads(json.dumps(ledgers.to_state())))
    assert back.admit("A", Report(1.7, None, created_ms=10_000)) is not None
    assert back.suspended("A") is not None, "created at the reinstatement or later: caught"
    undated = _suspended()
    undated.reinstate("A", 3.0, reported=1.5, at_ms=10_000)
    assert undated.admit("A", Report(1.7)) is not None and undated.suspended("A") is not None


def test_the_added_ledgers_last_write_judges_a_record_whatever_the_sites_clock_says() -> None:
    """With the last write id of the ledger the reinstatement took in: a record that goes back
    and was charged to that write is the stopped agent's last (refused, the site stays admitted)
    even dated after the reinstatement; one whose ledger wrote after it is an agent still
    running on that ledger (suspends) even dated before; one whose ids do not reach it is dated
    by the clock as before. The id is in the checkpointed state."""
    twin = ("t1", "t2", "t3")
    ledgers = _suspended()
    ledgers.reinstate("A", 3.0, reported=1.5, at_ms=10_000, absorbed_write="t3")
    back = PrivacyLedgers.from_state(json.loads(json.dumps(ledgers.to_state())))
    for state in (ledgers, back):
        last = state.admit("A", Report(1.6, 9, created_ms=20_000, writes=twin))
        assert last is not None and "the last of the ledger its reinstatement took in" in last
        assert state.suspended("A") is None
        old = state.admit("A", Report(1.4, 8, created_ms=9_000, writes=twin[:2]))  # ids short of t3
        assert old is not None and "created before its reinstatement" in old
        assert state.suspended("A") is None
    running = ledgers.admit("A", Report(1.7, 10, created_ms=9_500, writes=(*twin, "t4")))
    assert running is not None and "wrote after write t3" in running
    assert ledgers.suspended("A") is not None and "still running" in str(ledgers.suspended("A"))
    again = _suspended()
    again.reinstate("A", 3.0, reported=1.5, at_ms=10_000, absorbed_write="t3")
    assert again.admit("A", Report(1.7, 10, created_ms=20_000, writes=("x1", "x2"))) is not None
    assert again.suspended("A") is not None, "ids that do not reach it: the clock says after"
    plain = _suspended()
    plain.reinstate("A", 3.0, reported=1.5, at_ms=10_000)  # no id: the clock alone, as before
    assert plain.admit("A", Report(1.6, 9, created_ms=20_000, writes=twin)) is not None
    assert plain.suspended("A") is not None
    older = {k: v for k, v in ledgers.to_state().items() if k != "absorbed"}
    assert PrivacyLedgers.from_state(older).to_state()["absorbed"] == {}, "a state before ids"


def test_an_absorbed_write_that_an_applied_update_shows_followed_is_refused() -> None:
    """The surviving ledger's own write (a copy that never wrote on its own was absorbed) would
    make its next record suspend the site again: the reinstatement says so instead."""
    ledgers = PrivacyLedgers()
    ledgers.record("A", Report(1.5, 5, writes=("w1", "w2", "w3")))
    assert ledgers.admit("A", Report(1.2, 6, writes=("w1", "x2"))) is not None  # forked
    for own in ("w1", "w2"):
        with pytest.raises(ConfigError, match=f"write {own} was followed by w"):
            ledgers.reinstate("A", 3.0, reported=1.5, absorbed_write=own)
    assert ledgers.suspended("A") is not None, "nothing changed"
    ledgers.reinstate("A", 3.0, reported=1.5, absorbed_write="x2")  # the other ledger's last
    assert ledgers.suspended("A") is None


@pytest.mark.parametrize(
    ("site", "epsilon", "match"),
    [
        ("B", 3.0, "'B' is not suspended"),
        ("A", 1.5, "reported epsilon 1.5 already"),
        ("A", math.inf, "not a privacy total"),
        ("A", math.nan, "not a privacy total"),
    ],
)
def test_reinstatement_is_refused_for_a_total_no_ledger_merge_gives(
    site: str, epsilon: float, match: str
) -> None:
    ledgers = _suspended()
    with pytest.raises(ConfigError, match=match):
        ledgers.reinstate(site, epsilon, reported=1.5)
    assert ledgers.suspended("A") is not None


# ---------------------------------------------------------------- service and checkpoint
@pytest.fixture
def runtime_maker(tmp_path: Path) -> Iterator[tuple[Federation, AggregatorSettings, list]]:
    fed = Federation.create(tmp_path, ["A", "B"])
    settings = AggregatorSettings(
        run_dir=tmp_path, federation_id=FED, sites=fed.sites, hidden=(16, 16), n_timesteps=5,
        mode="plain", rounds=10,
    )
    made: list[AggregatorRuntime] = []
    try:
        yield fed, settings, made
    finally:
        for runtime in made:
            runtime.pool.shutdown()
            runtime.engine_thread.shutdown()
            runtime.telemetry.shutdown()


def _runtime(settings: AggregatorSettings, made: list) -> AggregatorRuntime:
    runtime = AggregatorRuntime(None, settings, KEY)  # type: ignore[arg-type]  # never started
    made.append(runtime)
    return runtime


def _suspend_a_and_checkpoint(
    fed: Federation, settings: AggregatorSettings, made: list
) -> int:
    """Version 1 from A and B at epsilon 0.5, then a second ledger of A (0.4) suspends it; the
    runtime writes its checkpoint. Returns the model's parameter count."""
    runtime = _runtime(settings, made)
    service = runtime.service
    for i, site in enumerate(fed.sites):
        assert not service.handle(fed.hello(site, seed=i)).dead
    assert service.phase is Phase.TRAINING and service.state is not None
    n = int(service.state.params.size)
    assert _feed(service, _update(fed, "A", 1, 0, 0.5, n)) == []
    assert _feed(service, _update(fed, "B", 2, 0, 0.5, n)) == []
    twin = _feed(service, _update(fed, "A", 3, 1, 0.4, n))
    assert len(twin) == 1 and "went back" in twin[0]
    assert service.epsilon_by_site()["A"] == math.inf
    runtime._checkpoint()
    return n


def test_the_offline_command_takes_a_suspended_site_back_with_an_audit_event(
    runtime_maker: tuple[Federation, AggregatorSettings, list],
) -> None:
    fed, settings, made = runtime_maker
    n = _suspend_a_and_checkpoint(fed, settings, made)

    with StateLock(settings.state_dir, "a running aggregator"), pytest.raises(StateInUseError):
        reinstate_site(settings, KEY, "A", 0.9)
    with pytest.raises(ConfigError, match="reported epsilon 0.5 already"):
        reinstate_site(settings, KEY, "A", 0.45)  # not a total that holds both ledgers
    with pytest.raises(ConfigError, match="'C' is not in this federation"):
        reinstate_site(settings, KEY, "C", 0.9)
    on_its_way = _update(fed, "A", 6, 1, 0.55, n)  # the other agent's last record, then stopped
    time.sleep(0.01)  # records are dated in ms
    assert "went back" in reinstate_site(settings, KEY, "A", 0.9)
    with pytest.raises(ConfigError, match="not suspended"):
        reinstate_site(settings, KEY, "A", 1.0)  # once is enough

    restarted = _runtime(settings, made)  # restores from the checkpoint, as a restart does
    again = restarted.service
    assert again.ledgers.suspended("A") is None and again.epsilon_by_site()["A"] == 0.9
    assert again.state is not None and again.state.model_version == 1
    late = _feed(again, on_its_way)
    assert len(late) == 1 and "created before its reinstatement" in late[0], late
    assert again.ledgers.suspended("A") is None, "a record from before does not suspend again"
    assert _feed(again, _update(fed, "A", 4, 1, 1.1, n)) == []  # the merged ledger goes on
    stale = _feed(again, _update(fed, "A", 5, 1, 0.6, n))  # the other one, not stopped
    assert len(stale) == 1 and "went back" in stale[0]

    record = restarted.outbox[-1]
    assert record.topic == "fedsynth.audit" and record.key == b"operator"
    msg = MessageReader(FED, KeyRing.from_dir(settings.keys_dir)).read(record.value)
    assert isinstance(msg, Inbound) and msg.name == "AuditEvent", msg
    event = AuditEvent.from_dict(json.loads(msg.record["detail"]))
    assert (event.actor, event.action) == ("operator", "reinstate_site")
    assert event.details["site"] == "A" and event.details["epsilon"] == 0.9
    assert event.details["at_ms"] <= time.time() * 1000
    assert event.details["note"] == "" and event.details["command"] is None  # offline
    assert event.seq == 0 and verify_chain([event], GENESIS_HASH).ok
    assert restarted.audit_head() == event.to_dict(), "the chain goes on from the event"


def test_reinstating_before_any_checkpoint_says_there_is_nothing_to_take_back(
    runtime_maker: tuple[Federation, AggregatorSettings, list],
) -> None:
    _, settings, _ = runtime_maker
    with pytest.raises(ConfigError, match="has not published version 0"):
        reinstate_site(settings, KEY, "A", 1.0)


def test_the_service_state_keeps_the_reinstated_total_as_the_sites_report() -> None:
    ledgers = _suspended()
    extra = {"sites": {"A": [50, "", 1.5]}, "privacy_ledgers": ledgers.to_state(), "phase": "x"}
    out, why = AggregatorService.reinstated(extra, "A", 2.0)
    assert "went back" in why and out["sites"]["A"] == [50, "", 2.0] and out["phase"] == "x"
    back = PrivacyLedgers.from_state(out["privacy_ledgers"])
    assert back.refusal("A", Report(2.0)) is None and back.refusal("A", Report(1.99)) is not None
    assert extra["sites"]["A"] == [50, "", 1.5], "the input is not changed"


def test_the_two_commands_take_a_site_back_from_its_ledgers_total(
    runtime_maker: tuple[Federation, AggregatorSettings, list],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`fedsynth ledger absorb` prints the command the aggregator's operator runs next."""
    fed, settings, made = runtime_maker
    _suspend_a_and_checkpoint(fed, settings, made)

    run_dir = settings.run_dir
    (run_dir / "sites" / "A").mkdir(parents=True)
    ours = SiteLedger.create(run_dir / "sites" / "A" / "ledger.json", site_id="A", delta=1e-5)
    ours.record(1.0, 0.1, 30)
    theirs = SiteLedger.create(run_dir / "twin.json", site_id="A", delta=1e-5)
    theirs.record(1.0, 0.1, 20)
    outbox = Outbox(run_dir / "sites" / "A" / "outbox")  # left by an agent stopped mid-send
    outbox.put(OutboxMessage("m-update", UPDATES.name, b"A", b"stale total"))
    outbox.put(OutboxMessage("m-beat", SITE_EVENTS.name, b"A", b"heartbeat"))
    argv = ["ledger", "absorb", str(theirs.path), "--site", "A", "--run-dir", str(run_dir)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "dropped 1 unsent update message(s)" in printed
    assert [m.message_id for m in outbox.pending()] == ["m-beat"]
    command = next(line.split() for line in printed.splitlines() if "--reinstate" in line)
    total = float(command[command.index("--epsilon") + 1])
    assert total == SiteLedger.open(ours.path, site_id="A", delta=1e-5).spent()
    last_write = theirs.recent_writes(1)[0]
    assert command[command.index("--absorbed-write") + 1] == last_write
    assert main(argv) == 1, "the same ledger is not added twice"

    common = ["--run-dir", str(run_dir), "--federation", FED, "--sites", "A,B", "--plain"]
    assert main(["aggregator", *common, *command[2:]]) == 1, "no key: nothing is made up"
    assert not (settings.state_dir / "checkpoint.key").exists()
    monkeypatch.setenv("FEDSYNTH_CHECKPOINT_KEY", KEY.hex())
    assert main(["aggregator", *common, "--reinstate", "A"]) == 1, "--epsilon is needed too"
    assert main(["aggregator", *common, *command[2:]]) == 0
    assert "reinstated" in capsys.readouterr().out
    back = _runtime(settings, made).service
    assert back.ledgers.suspended("A") is None and back.epsilon_by_site()["A"] == total
    assert back.ledgers.to_state()["absorbed"] == {"A": last_write}


def test_absorbing_a_copy_that_never_wrote_on_its_own_names_no_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy's last write is the site ledger's own: naming it would make the reinstatement
    suspend the site again at its next record (that write followed by its next one)."""
    (tmp_path / "sites" / "A").mkdir(parents=True)
    ours = SiteLedger.create(tmp_path / "sites" / "A" / "ledger.json", site_id="A", delta=1e-5)
    ours.record(1.0, 0.1, 30)
    idle = tmp_path / "idle.json"
    idle.write_bytes(ours.path.read_bytes())  # copied, and never trained
    ours.record(1.0, 0.1, 30)
    argv = ["ledger", "absorb", str(idle), "--site", "A", "--run-dir", str(tmp_path)]
    assert main(argv) == 0
    command = next(line for line in capsys.readouterr().out.splitlines() if "--reinstate" in line)
    assert "--epsilon" in command and "--absorbed-write" not in command, command


def test_ledger_show_prints_the_total_and_a_missing_ledger_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sites" / "A").mkdir(parents=True)
    ledger = SiteLedger.create(tmp_path / "sites" / "A" / "ledger.json", site_id="A", delta=1e-5)
    ledger.record(1.0, 0.1, 30)
    assert main(["ledger", "show", "--site", "A", "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"epsilon {ledger.spent()!r} at delta 1e-05, 30 steps, sequence 1" in out
    assert main(["ledger", "show", "--site", "B", "--run-dir", str(tmp_path)]) == 1
    assert "site 'B' has no privacy ledger at" in capsys.readouterr().err


# ------------------------------------------------------------------- online, by command
def _training_runtime(
    fed: Federation, settings: AggregatorSettings, made: list
) -> tuple[AggregatorRuntime, int]:
    """A runtime whose service is past every site's hello; and the parameter count."""
    runtime = _runtime(settings, made)
    service = runtime.service
    for i, site in enumerate(fed.sites):
        assert not service.handle(fed.hello(site, seed=i)).dead
    assert service.state is not None
    return runtime, int(service.state.params.size)


def _suspended_runtime(
    fed: Federation, settings: AggregatorSettings, made: list
) -> tuple[AggregatorRuntime, int]:
    runtime, n = _training_runtime(fed, settings, made)
    service = runtime.service
    assert _feed(service, _update(fed, "A", 1, 0, 0.5, n)) == []
    assert _feed(service, _update(fed, "B", 2, 0, 0.5, n)) == []
    assert "went back" in _feed(service, _update(fed, "A", 3, 1, 0.4, n))[0]
    return runtime, n


def _audited(
    runtime: AggregatorRuntime, settings: AggregatorSettings, fx: Effects
) -> list[AuditEvent]:
    """The audit events the app appends for ``fx``, read back from their signed records."""
    reader = MessageReader(FED, KeyRing.from_dir(settings.keys_dir))
    events = []
    for record in runtime._audit_records(fx):
        msg = reader.read(record.value)
        assert isinstance(msg, Inbound) and msg.name == "AuditEvent", msg
        events.append(AuditEvent.from_dict(json.loads(msg.record["detail"])))
    return events


def test_a_suspension_goes_into_the_audit_chain_once(
    runtime_maker: tuple[Federation, AggregatorSettings, list],
) -> None:
    fed, settings, made = runtime_maker
    runtime, n = _training_runtime(fed, settings, made)
    service = runtime.service
    assert _feed(service, _update(fed, "A", 1, 0, 0.5, n)) == []
    (last,) = _update(fed, "B", 2, 0, 0.5, n)  # completes the round: version 1
    (published,) = _audited(runtime, settings, service.handle(last))
    assert (published.actor, published.action) == ("aggregator", "publish_version")
    assert published.details["version"] == 1  # once: the engine's event, not a copy of it
    (twin,) = _update(fed, "A", 3, 1, 0.4, n)  # a second ledger's update
    fx = service.handle(twin)
    (dead,) = fx.dead
    (event,) = fx.events
    assert isinstance(event, SiteSuspended) and event.site == "A" and fx.changed
    assert "went back" in event.reason and event.reason in dead.reason

    (audit,) = _audited(runtime, settings, fx)  # into the audit chain, signed by the aggregator
    assert (audit.actor, audit.action) == ("aggregator", "suspend_site")
    assert audit.details == {"site": "A", "reason": event.reason}

    (later,) = _update(fed, "A", 4, 1, 5.0, n)  # refused as suspended: no second event
    again = service.handle(later)
    assert len(again.dead) == 1 and not again.events


def test_the_operators_command_takes_a_suspended_site_back_while_running(
    runtime_maker: tuple[Federation, AggregatorSettings, list],
) -> None:
    fed, settings, made = runtime_maker
    runtime, n = _suspended_runtime(fed, settings, made)
    service = runtime.service
    on_its_way = _update(fed, "A", 6, 1, 0.45, n)  # the other agent's last record
    time.sleep(0.01)
    command = reinstate_command(FED, fed.keys["operator"], "A", 0.9, note="ticket 42")
    fx = service.handle(command.value)
    assert not fx.dead and fx.changed and service.ledgers.suspended("A") is None
    assert service.epsilon_by_site()["A"] == 0.9
    (event,) = fx.events
    assert isinstance(event, SiteReinstated) and (event.site, event.epsilon) == ("A", 0.9)

    (audit,) = _audited(runtime, settings, fx)  # into the audit chain, signed by the aggregator
    assert (audit.actor, audit.action) == ("operator", "reinstate_site")
    assert audit.details["note"] == "ticket 42" and audit.details["command"] == command.message_id
    assert "went back" in audit.details["suspended"]

    late = _feed(service, on_its_way)
    assert len(late) == 1 and "created before its reinstatement" in late[0], late
    assert _feed(service, _update(fed, "A", 4, 1, 1.1, n)) == []
    again = _feed(service, [reinstate_command(FED, fed.keys["operator"], "A", 2.0).value])
    assert len(again) == 1 and "not suspended" in again[0], again


def test_the_operators_command_names_the_added_ledgers_last_write(
    runtime_maker: tuple[Federation, AggregatorSettings, list],
) -> None:
    """The running aggregator judges later records by the absorbed ledger's last write: its
    own last record, sent after the command, is refused and the site stays admitted; a record
    from that ledger written after it, though created before the command, suspends the site."""
    fed, settings, made = runtime_maker
    runtime, n = _suspended_runtime(fed, settings, made)
    service = runtime.service
    still_running = _update(fed, "A", 7, 1, 0.46, n, writes=("t1", "t2", "t3", "t4"))
    time.sleep(0.01)
    command = reinstate_command(FED, fed.keys["operator"], "A", 0.9, absorbed_write="t3")
    fx = service.handle(command.value)
    assert not fx.dead and service.ledgers.suspended("A") is None
    (audit,) = _audited(runtime, settings, fx)
    assert audit.details["absorbed_write"] == "t3"
    last = _feed(service, _update(fed, "A", 6, 1, 0.45, n, writes=("t1", "t2", "t3")))
    assert len(last) == 1 and "the last of the ledger its reinstatement took in" in last[0]
    assert service.ledgers.suspended("A") is None
    caught = _feed(service, still_running)
    assert len(caught) == 1 and "still running" in caught[0], caught
    assert service.ledgers.suspended("A") is not None


@pytest.mark.parametrize(
    ("sender", "site", "epsilon", "match"),
    [
        ("A", "A", 0.9, "only the operator's key"),  # a site signing a command
        ("operator", "C", 0.9, "'C' is not a site of this run"),
        ("operator", "A", 0.45, "reported epsilon 0.5 already"),
    ],
)
def test_a_command_that_may_not_be_applied_is_dead_lettered_with_its_reason(
    runtime_maker: tuple[Federation, AggregatorSettings, list],
    sender: str, site: str, epsilon: float, match: str,
) -> None:
    fed, settings, made = runtime_maker
    runtime, _ = _suspended_runtime(fed, settings, made)
    command = MessageFactory(FED, sender, fed.keys[sender]).build(
        "OperatorCommand",
        {"action": "reinstate_site", "site_id": site, "epsilon": epsilon, "note": ""},
    )
    dead = _feed(runtime.service, [command.value])
    assert len(dead) == 1 and match in dead[0], dead
    assert runtime.service.ledgers.suspended("A") is not None


@pytest.mark.parametrize(("site", "epsilon"), [("", 1.0), ("A", math.inf), ("A", 0.0)])
def test_a_command_is_not_built_for_no_site_or_no_total(site: str, epsilon: float) -> None:
    with pytest.raises(ConfigError):
        reinstate_command(FED, IdentityKey.generate(), site, epsilon)


def test_sending_to_no_broker_says_the_command_was_not_sent(
    runtime_maker: tuple[Federation, AggregatorSettings, list],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    fed, settings, _ = runtime_maker
    monkeypatch.delenv("FEDSYNTH_SITES", raising=False)
    code = main(["aggregator", "--run-dir", str(settings.run_dir), "--bootstrap", "127.0.0.1:1",
                 "--reinstate", "A", "--epsilon", "0.9", "--send"])
    assert code == 1 and "the command was not sent: broker 127.0.0.1:1" in capsys.readouterr().err
    (settings.keys_dir / "operator.key").unlink()
    assert main(["aggregator", "--run-dir", str(settings.run_dir), "--reinstate", "A",
                 "--epsilon", "0.9", "--send"]) == 1
    assert "operator.key" in capsys.readouterr().err, "a missing operator key is named"


@pytest.mark.parametrize("name", ["operator", "aggregator", "gateway"])
def test_no_site_may_take_another_senders_name(tmp_path: Path, name: str) -> None:
    """Their keys sit beside the sites' in one folder: a site so named could sign as them."""
    with pytest.raises(ValueError, match=f"{name} may not be site ids"):
        AggregatorSettings(run_dir=tmp_path, sites=("A", name))

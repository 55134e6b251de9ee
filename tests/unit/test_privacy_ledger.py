"""The site ledger: persistence across restarts, monotone spending, and refusal of bad files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fedsynth.errors import BudgetExceededError
from fedsynth.privacy import (
    LedgerCorruptError,
    LedgerError,
    LedgerMismatchError,
    LedgerMissingError,
    PrivacyBudget,
    PrivacyConfigError,
    PRVAccountant,
    RDPAccountant,
    SiteLedger,
)
from fedsynth.privacy.ledger import REPORTED_WRITES

DELTA = 1e-5


def _ledger(tmp_path: Path, site: str = "cleveland") -> SiteLedger:
    return SiteLedger.create(tmp_path / "ledger.json", site_id=site, delta=DELTA)


def test_spent_privacy_survives_restarts_and_only_grows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = SiteLedger.create(path, site_id="cleveland", delta=DELTA)
    assert ledger.spent() == 0.0 and ledger.sequence == 0
    history: list[float] = [0.0]
    for round_ in range(4):
        ledger.record(1.1, 0.05, 40)
        history.append(ledger.spent())
        ledger = SiteLedger.open(path, site_id="cleveland", delta=DELTA)  # "restart"
        assert ledger.spent(DELTA) == pytest.approx(history[-1], rel=1e-12)
        assert ledger.total_steps == 40 * (round_ + 1)
        assert ledger.sequence == round_ + 1
    assert all(a < b for a, b in zip(history, history[1:], strict=False))
    reference = RDPAccountant()
    reference.step(noise_multiplier=1.1, sample_rate=0.05, steps=160)
    assert ledger.spent() == pytest.approx(reference.epsilon(DELTA), rel=1e-12)
    assert ledger.spent(1e-6) > ledger.spent()
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]  # no temporary files left


def test_prv_ledger_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    SiteLedger.create(path, site_id="va", delta=DELTA, mechanism="prv").record(1.0, 0.1, 20)
    ledger = SiteLedger.open(path, site_id="va", delta=DELTA)
    assert isinstance(ledger.accountant, PRVAccountant)
    assert ledger.total_steps == 20


def test_accountant_property_is_a_copy(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.accountant.step(noise_multiplier=1.0, sample_rate=0.1, steps=100)
    assert ledger.total_steps == 0


def test_budget_refusal_writes_nothing(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.record(1.0, 0.1, 50)
    before = ledger.path.read_bytes()
    budget = PrivacyBudget(epsilon=ledger.spent() + 0.1, delta=DELTA)
    with pytest.raises(BudgetExceededError, match="the step was not taken"):
        ledger.record(1.0, 0.1, 500, budget=budget)
    assert ledger.path.read_bytes() == before
    assert ledger.total_steps == 50 and ledger.sequence == 1
    with pytest.raises(PrivacyConfigError, match="differs from the ledger's delta"):
        ledger.record(1.0, 0.1, 1, budget=PrivacyBudget(10.0, 1e-6))
    assert ledger.record(1.0, 0.1, 1, budget=budget) <= budget.epsilon


def test_create_never_overwrites(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.record(1.0, 0.1, 5)
    with pytest.raises(LedgerError, match="already exists"):
        _ledger(tmp_path)
    assert SiteLedger.open(ledger.path, site_id="cleveland", delta=DELTA).total_steps == 5


def test_missing_file_is_an_error_for_a_site_that_trained(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    with pytest.raises(LedgerMissingError, match="missing"):
        SiteLedger.open(path, site_id="hungary", delta=DELTA)
    with pytest.raises(LedgerMissingError):
        SiteLedger.open_or_create(path, site_id="hungary", delta=DELTA, trained_before=True)
    assert not path.exists()
    fresh = SiteLedger.open_or_create(path, site_id="hungary", delta=DELTA, trained_before=False)
    fresh.record(1.0, 0.1, 3)
    again = SiteLedger.open_or_create(path, site_id="hungary", delta=DELTA, trained_before=False)
    assert again.total_steps == 3  # an existing file is opened, never replaced


def test_other_site_other_delta_or_rollback_is_refused(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.record(1.0, 0.1, 5)
    old = ledger.path.read_bytes()
    ledger.record(1.0, 0.1, 5)
    with pytest.raises(LedgerMismatchError, match="belongs to site 'cleveland', not 'va'"):
        SiteLedger.open(ledger.path, site_id="va", delta=DELTA)
    with pytest.raises(LedgerMismatchError, match="delta"):
        SiteLedger.open(ledger.path, site_id="cleveland", delta=1e-6)
    ledger.path.write_bytes(old)  # an operator restores a backup
    with pytest.raises(LedgerMismatchError, match="rolled-back"):
        SiteLedger.open(ledger.path, site_id="cleveland", delta=DELTA, min_sequence=2)


def _tamper(path: Path, change: dict[str, object], *, reseal: bool = False) -> None:
    body = json.loads(path.read_text())
    body.update(change)
    if reseal:  # a well-formed checksum over bad content: the fields themselves must be checked
        body.pop("checksum")
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        body["checksum"] = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    path.write_text(json.dumps(body))


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda p: p.write_text(p.read_text()[:40]),  # truncated
        lambda p: p.write_text("not json"),
        lambda p: p.write_bytes(b"\xff\xfe"),
        lambda p: p.write_text("[]"),
        lambda p: _tamper(p, {"format": "other/1"}),
        lambda p: _tamper(p, {"sequence": 0}),  # hand edit: checksum no longer matches
        lambda p: _tamper(p, {"accountant": {"mechanism": "rdp", "history": []}}),
        lambda p: _tamper(p, {"accountant": {"mechanism": "rdp", "history": "x"}}, reseal=True),
        lambda p: _tamper(p, {"sequence": -1}, reseal=True),
        lambda p: _tamper(p, {"site_id": 7}, reseal=True),
    ],
)
def test_corrupted_ledger_is_a_clear_error(tmp_path: Path, corrupt: object) -> None:
    ledger = _ledger(tmp_path)
    ledger.record(1.0, 0.1, 5)
    corrupt(ledger.path)  # type: ignore[operator]
    with pytest.raises(LedgerCorruptError, match="privacy ledger"):
        SiteLedger.open(ledger.path, site_id="cleveland", delta=DELTA)


def test_failed_write_leaves_memory_and_file_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = _ledger(tmp_path)
    ledger.record(1.0, 0.1, 5)
    before = ledger.path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fedsynth.privacy.ledger.os.replace", broken_replace)
    with pytest.raises(LedgerError, match="could not be written: .*No space left"):
        ledger.record(1.0, 0.1, 5)
    monkeypatch.undo()
    assert ledger.total_steps == 5 and ledger.sequence == 1
    assert ledger.path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]  # temporary file removed


def test_create_validates_arguments(tmp_path: Path) -> None:
    with pytest.raises(PrivacyConfigError):
        SiteLedger.create(tmp_path / "a.json", site_id="", delta=DELTA)
    with pytest.raises(PrivacyConfigError):
        SiteLedger.create(tmp_path / "a.json", site_id="s", delta=0.0)
    with pytest.raises(PrivacyConfigError):
        SiteLedger.create(tmp_path / "a.json", site_id="s", delta=DELTA, mechanism="gdp")
    assert not (tmp_path / "a.json").exists()


# ---------------------------------------------------------------------- a second ledger
def test_ledgers_that_share_no_write_are_added_whole_though_their_steps_are_alike(
    tmp_path: Path,
) -> None:
    """Two ledgers created apart (a copy made before the site's first write) that recorded the
    same steps spent them twice: nothing is shared. A copy that trained no more adds nothing."""
    ours = SiteLedger.create(tmp_path / "ledger.json", site_id="hungary", delta=DELTA)
    (tmp_path / "twin").mkdir()
    twin = SiteLedger.create(tmp_path / "twin" / "ledger.json", site_id="hungary", delta=DELTA)
    for ledger in (ours, twin):
        ledger.record(1.1, 0.05, 40)
    reference = RDPAccountant()
    reference.step(noise_multiplier=1.1, sample_rate=0.05, steps=80)
    assert ours.absorb(twin.path) == pytest.approx(reference.epsilon(DELTA), rel=1e-12)
    assert ours.total_steps == 80
    (tmp_path / "idle").mkdir()
    idle = tmp_path / "idle" / "ledger.json"
    idle.write_text(ours.path.read_text())  # copied now, and never trained
    assert ours.absorb(idle) == pytest.approx(reference.epsilon(DELTA), rel=1e-12)
    assert ours.total_steps == 80 and ours.sequence == 3


def test_a_ledger_whose_writes_contradict_its_steps_is_refused(tmp_path: Path) -> None:
    ours = SiteLedger.create(tmp_path / "ledger.json", site_id="hungary", delta=DELTA)
    ours.record(1.1, 0.05, 40)
    for writes, match in (([["x", 41]], "more steps"), ([["x", 5], ["y", 4]], "go back"),
                          ([["x"]], "bad write"), ("x", "bad writes")):
        path = tmp_path / f"bad-{match.replace(' ', '-')}.json"
        path.write_text(ours.path.read_text())
        _tamper(path, {"writes": writes}, reseal=True)
        with pytest.raises(LedgerCorruptError, match=match):
            SiteLedger.open(path, site_id="hungary", delta=DELTA)
    (tmp_path / "forged").mkdir()
    forged = tmp_path / "forged" / "ledger.json"
    forged.write_text(ours.path.read_text())
    created, trained = json.loads(ours.path.read_text())["writes"]
    empty = SiteLedger.create(tmp_path / "empty.json", site_id="hungary", delta=DELTA)
    _tamper(forged, {"writes": [created, [trained[0], 0]],
                     "accountant": empty.accountant.to_state()},
            reseal=True)  # the same write ids, but no steps behind the second
    with pytest.raises(LedgerError, match="records 0 steps after it, not 40"):
        ours.absorb(forged)


def test_absorbing_a_second_ledger_composes_both_histories_once(tmp_path: Path) -> None:
    """A copy of the folder that trained on its own: the merged ledger spends as both did, the
    steps recorded before the copy (their writes are in both files) counted once."""
    ours = SiteLedger.create(tmp_path / "ledger.json", site_id="hungary", delta=DELTA)
    ours.record(1.1, 0.05, 40)
    twin_dir = tmp_path / "twin"
    twin_dir.mkdir()
    twin_path = twin_dir / "ledger.json"
    twin_path.write_text((tmp_path / "ledger.json").read_text())  # the copied folder
    twin = SiteLedger.open(twin_path, site_id="hungary", delta=DELTA)
    ours.record(1.1, 0.05, 40)
    twin.record(0.9, 0.05, 10)
    before = ours.spent()
    merged = ours.absorb(twin_path)
    reference = RDPAccountant()
    reference.step(noise_multiplier=1.1, sample_rate=0.05, steps=80)  # ours, the copied 40 too
    reference.step(noise_multiplier=0.9, sample_rate=0.05, steps=10)  # the twin's own
    assert merged == pytest.approx(reference.epsilon(DELTA), rel=1e-12)
    assert merged > max(before, twin.spent())
    reopened = SiteLedger.open(tmp_path / "ledger.json", site_id="hungary", delta=DELTA,
                               min_sequence=3)
    assert reopened.spent() == merged and reopened.total_steps == 90
    with pytest.raises(LedgerError, match="absorbed into .* before"):
        reopened.absorb(twin_path)  # the same file again would count its steps twice
    reopened.record(1.1, 0.05, 1)  # later writes keep the record of what was absorbed
    with pytest.raises(LedgerError, match="before"):
        SiteLedger.open(tmp_path / "ledger.json", site_id="hungary", delta=DELTA).absorb(
            twin_path
        )


def test_absorb_refuses_another_site_itself_and_a_bad_file(tmp_path: Path) -> None:
    ours = _ledger(tmp_path, "hungary")
    other = SiteLedger.create(tmp_path / "other.json", site_id="va", delta=DELTA)
    other.record(1.0, 0.1, 5)
    with pytest.raises(LedgerMismatchError, match="belongs to site 'va', not 'hungary'"):
        ours.absorb(other.path)
    with pytest.raises(LedgerError, match="is this ledger"):
        ours.absorb(ours.path)
    with pytest.raises(LedgerMissingError, match="to absorb is missing"):
        ours.absorb(tmp_path / "nowhere.json")
    body = json.loads(other.path.read_text())
    body["site_id"] = "hungary"  # a hand edit: the checksum no longer matches
    other.path.write_text(json.dumps(body))
    with pytest.raises(LedgerCorruptError, match="checksum"):
        ours.absorb(other.path)
    assert ours.sequence == 0 and ours.spent() == 0.0


def test_a_prv_ledger_absorbs_an_rdp_one_at_its_own_delta(tmp_path: Path) -> None:
    ours = SiteLedger.create(tmp_path / "ledger.json", site_id="va", delta=DELTA, mechanism="prv")
    ours.record(1.0, 0.1, 20)
    theirs = SiteLedger.create(tmp_path / "theirs.json", site_id="va", delta=1e-6)
    theirs.record(1.0, 0.1, 20)
    merged = ours.absorb(theirs.path)
    reference = PRVAccountant()
    reference.step(noise_multiplier=1.0, sample_rate=0.1, steps=40)
    assert merged == pytest.approx(reference.epsilon(DELTA), rel=1e-6)


def test_recent_writes_name_the_last_writes_and_a_copy_shares_them_up_to_the_copy(
    tmp_path: Path,
) -> None:
    ledger = SiteLedger.create(tmp_path / "a.json", site_id="s", delta=1e-5)
    ids = list(ledger.recent_writes())
    assert len(ids) == 1 and ledger.recent_writes(0) == (), "the creation draws an id"
    for _ in range(REPORTED_WRITES + 2):
        ledger.record(1.0, 0.01, 3)
        ids.append(ledger.recent_writes(1)[0])
    assert len(set(ids)) == len(ids), "each write draws its own id"
    assert ledger.recent_writes() == tuple(ids[-REPORTED_WRITES:])
    assert ledger.recent_writes(100) == tuple(ids)
    (tmp_path / "b.json").write_bytes(ledger.path.read_bytes())
    copy = SiteLedger.open(tmp_path / "b.json", site_id="s", delta=1e-5)
    assert SiteLedger.open(ledger.path, site_id="s", delta=1e-5).recent_writes() == tuple(
        ids[-REPORTED_WRITES:]
    ), "the ids are in the file"
    ledger.record(1.0, 0.01, 3)
    copy.record(1.0, 0.01, 3)
    mine, theirs = ledger.recent_writes(), copy.recent_writes()
    assert mine[:-1] == theirs[:-1] == tuple(ids[-REPORTED_WRITES + 1:]) and mine[-1] != theirs[-1]
    with pytest.raises(PrivacyConfigError, match="n must be >= 0"):
        ledger.recent_writes(-1)


def test_the_last_write_of_a_ledger_file_is_read_for_any_site_and_delta(tmp_path: Path) -> None:
    ledger = SiteLedger.create(tmp_path / "a.json", site_id="s", delta=1e-6)
    assert SiteLedger.last_write_of(ledger.path) == ledger.recent_writes(1)[0], "the creation's"
    ledger.record(1.0, 0.01, 3)
    ledger.record(1.0, 0.01, 3)
    assert SiteLedger.last_write_of(ledger.path) == ledger.recent_writes(1)[0]
    with pytest.raises(LedgerMissingError, match="b.json is missing"):
        SiteLedger.last_write_of(tmp_path / "b.json")
    ledger.path.write_text(ledger.path.read_text().replace('"sequence": 2', '"sequence": 3'))
    with pytest.raises(LedgerCorruptError, match="checksum"):
        SiteLedger.last_write_of(ledger.path)

"""agents.pending.PendingStore: a secure update waiting for a cohort survives a restart, marked
with the cohort its masked input went to."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.pending import PendingStore
from agents.secure import PendingUpdate, SecureSite, SecureSiteConfig
from aggregator.strategies.staleness import constant_staleness
from fedsynth.errors import ConfigError
from fedsynth.secagg import FixedPointSpec


def _update(uid: str = "u-1") -> PendingUpdate:
    delta = np.random.default_rng(3).normal(size=1000).astype(np.float32)
    return PendingUpdate(uid, delta, 243, 4, 0.625, 2.5, 17, ("w1", "w2"))


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    store = PendingStore(tmp_path / "site" / "pending-update.npz")
    assert store.load() is None
    update = _update()
    store.save(update)
    back = PendingStore(store.path).load()  # a new process would build a new store
    assert back is not None
    assert (back.update_id, back.n_samples, back.base_version) == ("u-1", 243, 4)
    assert (back.train_loss, back.epsilon_spent, back.ledger_sequence) == (0.625, 2.5, 17)
    assert back.ledger_writes == ("w1", "w2")
    assert back.delta.dtype == np.float32 and np.array_equal(back.delta, update.delta)
    assert not list(store.path.parent.glob("*.tmp"))


@pytest.mark.parametrize("field", ["ledger_sequence", "ledger_writes"])
def test_a_file_from_before_the_ledger_fields_loads_and_a_bad_one_is_named(
    tmp_path: Path, field: str
) -> None:
    store = PendingStore(tmp_path / "pending-update.npz")
    bad: list[object] = ["7", True] if field == "ledger_sequence" else ["w1", [1, 2], 3]
    for value, ok in ((None, True), *((b, False) for b in bad)):
        header = {"update_id": "u-1", "n_samples": 3, "base_version": 0, "train_loss": 0.0,
                  "epsilon_spent": 1.0}
        if value is not None:
            header[field] = value
        np.savez(store.path, delta=np.zeros(3, np.float32),
                 header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
        if ok:
            back = store.load()
            assert back is not None and getattr(back, field) is None
        else:
            with pytest.raises(ConfigError, match="pending-update.npz"):
                store.load()


def test_a_new_update_replaces_the_saved_one_and_discard_deletes_it(tmp_path: Path) -> None:
    store = PendingStore(tmp_path / "pending-update.npz")
    store.save(_update("u-1"))
    store.save(_update("u-2"))  # replaces
    assert store.saved_id() == "u-2"
    assert store.discard() and store.load() is None
    assert not store.discard()


def test_a_corrupt_file_is_named(tmp_path: Path) -> None:
    store = PendingStore(tmp_path / "pending-update.npz")
    store.path.write_bytes(b"not a numpy file")
    with pytest.raises(ConfigError, match="pending-update.npz"):
        store.load()


def test_saved_id_reads_the_header_only(tmp_path: Path) -> None:
    store = PendingStore(tmp_path / "pending-update.npz")
    assert store.saved_id() is None
    store.save(_update("u-7"))
    assert store.saved_id() == "u-7"
    store.path.write_bytes(b"not a numpy file")
    with pytest.raises(ConfigError, match="pending-update.npz"):
        store.saved_id()


def test_a_masked_input_marks_the_update_with_its_cohort_before_it_is_sent(tmp_path: Path) -> None:
    store = PendingStore(tmp_path / "pending-update.npz")
    store.save(_update("u-1"))
    store.before_send("CohortJoin", {"cohort_id": "c1"})  # joining marks nothing
    assert store.masked_in() is None
    store.before_send("ModelUpdate", {"update_id": "u-1", "cohort_id": "c1"})
    assert PendingStore(store.path).masked_in() == "c1"  # what a restarted agent reads
    assert store.load() is not None  # kept: the cohort may still fail without counting it
    assert store.clear_mark() and store.masked_in() is None and store.load() is not None
    store.before_send("ModelUpdate", {"update_id": "u-1", "cohort_id": "c2"})
    assert store.discard() and store.masked_in() is None
    assert not store.mark_path.exists()


def test_a_mark_never_names_another_update(tmp_path: Path) -> None:
    store = PendingStore(tmp_path / "pending-update.npz")
    store.before_send("ModelUpdate", {"update_id": "u-1", "cohort_id": "c1"})  # none saved
    assert not store.mark_path.exists()
    store.save(_update("u-1"))
    store.before_send("ModelUpdate", {"update_id": "u-1", "cohort_id": "c1"})
    store.save(_update("u-2"))  # a new update: the old mark goes
    assert store.masked_in() is None and not store.mark_path.exists()
    store.mark_path.write_text('{"update_id": "u-1", "cohort_id": "c1"}')  # left by a crash
    assert store.masked_in() is None


def test_a_corrupt_mark_is_named(tmp_path: Path) -> None:
    store = PendingStore(tmp_path / "pending-update.npz")
    store.save(_update("u-1"))
    store.mark_path.write_text("{")
    with pytest.raises(ConfigError, match="pending-update.npz.masked"):
        store.masked_in()


def _site() -> SecureSite:
    spec = FixedPointSpec(clip=1.0, levels=1 << 10, max_weight=500.0)
    return SecureSite(
        SecureSiteConfig("fed", "A", spec, constant_staleness), np.random.default_rng(0)
    )


def test_a_restored_update_reports_a_ledger_total_grown_by_an_absorbed_ledger(
    tmp_path: Path,
) -> None:
    """Its steps are in the total; a report below it would be refused from a reinstated site."""
    store = PendingStore(tmp_path / "pending-update.npz")
    store.save(_update("u-1"))  # saved at epsilon 2.5
    store.before_send("ModelUpdate", {"update_id": "u-1", "cohort_id": "c1"})
    site = _site()
    restored = store.restore(site, spent=4.0)
    assert restored is not None and restored.epsilon_spent == 4.0
    assert site.pending is restored and site.masked_in == "c1", "its mark is kept"
    back = PendingStore(store.path).load()
    assert back is not None and back.epsilon_spent == 4.0 and store.masked_in() == "c1"
    again = PendingStore(store.path).restore(_site(), spent=2.5)  # never lowered
    assert again is not None and again.epsilon_spent == 4.0
    assert np.array_equal(again.delta, _update().delta)

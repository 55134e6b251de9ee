"""Encrypted, atomic checkpoints: round trip, wrong key, tampering, crash mid-write, resume."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from aggregator import checkpoint as ckpt
from aggregator.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    load_checkpoint,
    new_key,
    save_checkpoint,
)
from aggregator.engine import (
    AggregatorEngine,
    CohortAggregated,
    EngineConfig,
    EngineState,
    UpdateReceived,
)
from aggregator.strategies import BufferSpec, ClientUpdate, FedAdam
from aggregator.strategies.base import Delta
from fedsynth.codec.quantize import QuantizedVector
from fedsynth.errors import ConfigError
from fedsynth.federation import decode_delta, decode_vector, encode_vector

FED = "fed-test"
SITES = frozenset({"s1", "s2", "s3"})
ENGINE = AggregatorEngine(
    FedAdam(BufferSpec(2, 0.1)), EngineConfig(n_parameters=4, max_staleness=3)
)


def events(n: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        delta = rng.normal(size=4).astype(np.float32)
        update = ClientUpdate(f"u{i}", f"s{i % 3 + 1}", max(0, i // 2 - 1), i + 1, delta, 0.5)
        out.append(UpdateReceived(update, f"m{i}"))
        if i == 4:
            out.append(CohortAggregated("c1", rng.normal(size=4), 2.5, ("s1", "s2"), 1))
    return out


def run(evts, state=None):
    state = state or ENGINE.initial_state(np.arange(4, dtype=np.float32), SITES)
    for e in evts:
        state, _ = ENGINE.step(state, e)
    return state


def assert_same_state(a, b) -> None:
    assert a.model_version == b.model_version
    assert a.params.tobytes() == b.params.tobytes() and a.params.dtype == b.params.dtype
    sa, sb = a.strategy_state, b.strategy_state
    assert [u.update_id for u in sa.buffer] == [u.update_id for u in sb.buffer]
    for ua, ub in zip(sa.buffer, sb.buffer, strict=True):
        assert (ua.site_id, ua.base_version, ua.n_samples, ua.weight_hint) == (
            ub.site_id,
            ub.base_version,
            ub.n_samples,
            ub.weight_hint,
        )
        assert type(ua.delta) is type(ub.delta)
        if isinstance(ua.delta, QuantizedVector):
            assert (ua.delta.low, ua.delta.high, ua.delta.bits) == (
                ub.delta.low, ub.delta.high, ub.delta.bits
            )
            assert ua.delta.levels.tobytes() == ub.delta.levels.tobytes()
        else:
            assert ua.delta.tobytes() == ub.delta.tobytes()
    assert sorted(sa.slots) == sorted(sb.slots)
    for k in sa.slots:
        assert sa.slots[k].tobytes() == sb.slots[k].tobytes()
    assert dict(sa.counters) == dict(sb.counters)
    assert a.known_sites == b.known_sites and dict(a.seen) == dict(b.seen)
    assert a.applied_cohorts == b.applied_cohorts and a.history == b.history


def test_round_trip(tmp_path: Path) -> None:
    state = run(events(7))
    assert state.strategy_state.buffer and state.applied_cohorts  # a non-trivial state
    key, path = new_key(), tmp_path / "agg.ckpt"
    offsets = {("fedsynth.updates", 0): 17, ("fedsynth.updates", 1): 4}
    save_checkpoint(
        path, Checkpoint(state, offsets, {"strategy": "fedadam", "n": [1, 2]}), key, FED
    )
    loaded = load_checkpoint(path, key, FED)
    assert loaded is not None
    assert_same_state(loaded.state, state)
    assert dict(loaded.offsets) == offsets
    assert dict(loaded.extra) == {"strategy": "fedadam", "n": [1, 2]}
    assert not loaded.state.params.flags.writeable


def test_encoding_is_deterministic() -> None:
    state = run(events(6))
    assert ckpt.encode_checkpoint(Checkpoint(state)) == ckpt.encode_checkpoint(Checkpoint(state))


def test_resume_from_checkpoint_is_bit_identical(tmp_path: Path) -> None:
    evts = events(12)
    straight = run(evts)
    key, path = new_key(), tmp_path / "agg.ckpt"
    for cut in (3, 6, 9):
        save_checkpoint(path, Checkpoint(run(evts[:cut])), key, FED)
        restored = load_checkpoint(path, key, FED)
        assert restored is not None
        assert_same_state(run(evts[cut:], restored.state), straight)


def test_absent_file_gives_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "missing.ckpt", new_key(), FED) is None


@pytest.mark.parametrize("wrong", ["key", "federation"])
def test_wrong_key_or_federation_is_refused(tmp_path: Path, wrong: str) -> None:
    key, path = new_key(), tmp_path / "agg.ckpt"
    save_checkpoint(path, Checkpoint(run(events(3))), key, FED)
    other_key = new_key() if wrong == "key" else key
    other_fed = "fed-other" if wrong == "federation" else FED
    with pytest.raises(CheckpointError, match="authentication failed"):
        load_checkpoint(path, other_key, other_fed)


@pytest.mark.parametrize("position", [len(ckpt.MAGIC) + 2, 40, -1])
def test_tampering_is_detected(tmp_path: Path, position: int) -> None:
    key, path = new_key(), tmp_path / "agg.ckpt"
    save_checkpoint(path, Checkpoint(run(events(3))), key, FED)
    blob = bytearray(path.read_bytes())
    blob[position] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError):
        load_checkpoint(path, key, FED)


def test_foreign_or_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agg.ckpt"
    path.write_bytes(b"not a checkpoint at all, just some bytes")
    with pytest.raises(CheckpointError, match="not a fedsynth checkpoint"):
        load_checkpoint(path, new_key(), FED)


def test_key_must_be_32_bytes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        save_checkpoint(tmp_path / "a.ckpt", Checkpoint(run([])), b"short", FED)


def test_crash_before_replace_leaves_the_old_checkpoint(tmp_path: Path, monkeypatch) -> None:
    key, path = new_key(), tmp_path / "agg.ckpt"
    old = run(events(3))
    save_checkpoint(path, Checkpoint(old), key, FED)

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(path, Checkpoint(run(events(8))), key, FED)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agg.ckpt"]  # temp file cleaned up
    loaded = load_checkpoint(path, key, FED)
    assert loaded is not None
    assert_same_state(loaded.state, old)


def test_half_written_temp_file_does_not_affect_loading(tmp_path: Path) -> None:
    key, path = new_key(), tmp_path / "agg.ckpt"
    old = run(events(3))
    save_checkpoint(path, Checkpoint(old), key, FED)
    (tmp_path / ".agg.ckpt.crash.tmp").write_bytes(ckpt.MAGIC + os.urandom(20))  # killed mid-write
    loaded = load_checkpoint(path, key, FED)
    assert loaded is not None
    assert_same_state(loaded.state, old)


# ------------------------------------------------------------------ manifest + blobs (the app's)
def test_store_round_trip_resume_and_only_new_arrays_are_written(tmp_path: Path) -> None:
    evts = events(12)
    straight = run(evts)
    key, path = new_key(), tmp_path / "checkpoint.bin"
    store = CheckpointStore(path, key, FED)
    assert store.load() is None
    state = run([])
    for i, event in enumerate(evts):
        state, _ = ENGINE.step(state, event)
        before = {p.name: p.stat().st_mtime_ns for p in store.blob_dir.glob("*")} if i else {}
        store.save(Checkpoint(state, {("fedsynth.updates", 0): i + 1}, {"i": i}))
        after = {p.name: p.stat().st_mtime_ns for p in store.blob_dir.glob("*")}
        rewritten = [n for n in before.keys() & after.keys() if before[n] != after[n]]
        assert not rewritten, f"event {i}: blobs rewritten {rewritten}"
        # every blob on disk is referenced: one per live array, nothing left behind
        live = 1 + len(state.strategy_state.buffer) + len(state.strategy_state.slots)
        assert len(after) == live
        fresh = CheckpointStore(path, key, FED).load()  # a restarted process
        assert fresh is not None and dict(fresh.extra) == {"i": i}
        assert_same_state(fresh.state, state)
        assert_same_state(run(evts[i + 1 :], fresh.state), straight)
    # load_checkpoint reads the store's layout as well
    loaded = load_checkpoint(path, key, FED)
    assert loaded is not None
    assert_same_state(loaded.state, straight)


def test_store_refuses_tampered_swapped_or_missing_blobs(tmp_path: Path) -> None:
    key, path = new_key(), tmp_path / "checkpoint.bin"
    CheckpointStore(path, key, FED).save(Checkpoint(run(events(3))))
    blobs = sorted(CheckpointStore(path, key, FED).blob_dir.iterdir())
    assert len(blobs) >= 2
    first, second = blobs[0].read_bytes(), blobs[1].read_bytes()
    blobs[0].write_bytes(second)  # a valid blob under another id
    with pytest.raises(CheckpointError, match="authentication failed"):
        CheckpointStore(path, key, FED).load()
    flipped = bytearray(first)
    flipped[-3] ^= 0x01
    blobs[0].write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="authentication failed"):
        CheckpointStore(path, key, FED).load()
    blobs[0].unlink()
    with pytest.raises(CheckpointError, match="missing"):
        CheckpointStore(path, key, FED).load()
    with pytest.raises(CheckpointError, match="authentication failed"):
        CheckpointStore(path, new_key(), FED).load()


def test_store_crash_before_the_manifest_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, path = new_key(), tmp_path / "checkpoint.bin"
    store = CheckpointStore(path, key, FED)
    old = run(events(3))
    store.save(Checkpoint(old))
    real_replace = ckpt.os.replace

    def crash_on_manifest(src: str, dst: str) -> None:
        if Path(dst) == path:
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_manifest)
    with pytest.raises(OSError, match="power cut"):
        store.save(Checkpoint(run(events(8))))
    monkeypatch.undo()
    loaded = CheckpointStore(path, key, FED).load()
    assert loaded is not None
    assert_same_state(loaded.state, old)
    newer = run(events(9))
    store.save(Checkpoint(newer))  # the next save removes the orphaned blobs
    live = 1 + len(newer.strategy_state.buffer) + len(newer.strategy_state.slots)
    assert len(list(store.blob_dir.iterdir())) == live


def test_the_outbox_travels_with_the_state_in_both_layouts(tmp_path: Path) -> None:
    """Records decided with a state are saved with it (write-ahead) and read back byte for
    byte; once sent, a checkpoint without them drops their blobs."""
    from aggregator.checkpoint import OutboxRecord

    state = run(events(5))
    outbox = (
        OutboxRecord("fedsynth.global-model", b"model/0", os.urandom(3000), (("tp", b"00-ab"),)),
        OutboxRecord("fedsynth.audit", b"aggregator", b""),
    )
    key = new_key()
    save_checkpoint(tmp_path / "one.bin", Checkpoint(state, outbox=outbox), key, FED)
    one = load_checkpoint(tmp_path / "one.bin", key, FED)
    assert one is not None and one.outbox == outbox
    store = CheckpointStore(tmp_path / "checkpoint.bin", key, FED)
    store.save(Checkpoint(state, outbox=outbox))
    loaded = CheckpointStore(tmp_path / "checkpoint.bin", key, FED).load()
    assert loaded is not None and loaded.outbox == outbox
    assert_same_state(loaded.state, state)
    with_outbox = len(list(store.blob_dir.iterdir()))
    store.save(Checkpoint(state))
    assert len(list(store.blob_dir.iterdir())) == with_outbox - len(outbox)
    reloaded = store.load()
    assert reloaded is not None and reloaded.outbox == ()


def test_named_arrays_travel_with_the_state_and_an_unchanged_one_is_not_rewritten(
    tmp_path: Path,
) -> None:
    """An open cohort's masked running sum rides in ``arrays``: read back exactly in both layouts,
    stored once while the same array object is saved again."""
    state = run(events(5))
    total = np.arange(1, 10_002, dtype=np.uint64) * np.uint64(2**40 + 3)
    key = new_key()
    save_checkpoint(tmp_path / "one.bin", Checkpoint(state, arrays={"cohort.total": total}), key,
                    FED)
    one = load_checkpoint(tmp_path / "one.bin", key, FED)
    assert one is not None and np.array_equal(one.arrays["cohort.total"], total)
    assert one.arrays["cohort.total"].dtype == np.uint64
    store = CheckpointStore(tmp_path / "checkpoint.bin", key, FED)
    store.save(Checkpoint(state, arrays={"cohort.total": total}))
    blobs = set(store.blob_dir.iterdir())
    store.save(Checkpoint(state, arrays={"cohort.total": total}))
    assert set(store.blob_dir.iterdir()) == blobs  # nothing new to write
    loaded = CheckpointStore(tmp_path / "checkpoint.bin", key, FED).load()
    assert loaded is not None and np.array_equal(loaded.arrays["cohort.total"], total)
    store.save(Checkpoint(state))
    assert len(list(store.blob_dir.iterdir())) == len(blobs) - 1
    reloaded = store.load()
    assert reloaded is not None and dict(reloaded.arrays) == {}


def _encoded_update(
    i: int, n: int, codec: str, decode: Callable[[bytes, str, int], Delta] = decode_vector
) -> tuple[ClientUpdate, bytes]:
    """An update whose delta is what its wire bytes decode to, as the aggregator gets it."""
    rng = np.random.default_rng(i)
    data, _ = encode_vector(rng.normal(0, 0.01, n), codec, rng)
    delta = decode(data, codec, n)
    return ClientUpdate(f"e{i}", f"s{i % 3 + 1}", 0, 10 + i, delta, 1.0), data


def _buffering(
    tmp_path: Path, n: int
) -> tuple[AggregatorEngine, CheckpointStore, EngineState, bytes, Path]:
    """A FedAdam engine (K = 3) over ``n`` parameters at version 0, and a store holding its
    first checkpoint (the model's blob), its key and its path."""
    engine = AggregatorEngine(
        FedAdam(BufferSpec(3, 0.1)), EngineConfig(n_parameters=n, max_staleness=3)
    )
    key, path = new_key(), tmp_path / "checkpoint.bin"
    store = CheckpointStore(path, key, FED)
    state = engine.initial_state(np.zeros(n, np.float32), SITES)
    store.save(Checkpoint(state))
    return engine, store, state, key, path


@pytest.mark.parametrize("codec", ["quantize8|zstd", "quantize16", "topk0.1|zstd", "float32"])
def test_a_noted_delta_is_stored_as_its_wire_bytes_and_loads_bit_for_bit(
    tmp_path: Path, codec: str
) -> None:
    n = 20_000
    engine, store, state, key, path = _buffering(tmp_path, n)
    sizes = []
    for i in range(2):
        update, data = _encoded_update(i, n, codec)
        store.note_encoded(update.delta, codec, memoryview(data))
        before = set(store.blob_dir.iterdir())
        state, _ = engine.step(state, UpdateReceived(update, f"m{i}"))
        store.save(Checkpoint(state))
        (new,) = set(store.blob_dir.iterdir()) - before  # the delta's blob, nothing else
        sizes.append(new.stat().st_size - len(data))
    assert max(sizes) < 200  # the wire bytes plus a header, nonce and tag
    fresh = CheckpointStore(path, key, FED).load()
    assert fresh is not None
    assert_same_state(fresh.state, state)
    assert not fresh.state.strategy_state.buffer[0].delta.flags.writeable
    # the next update completes the buffer the same way from the loaded state
    update, data = _encoded_update(2, n, codec)
    step = UpdateReceived(update, "m2")
    assert_same_state(engine.step(fresh.state, step)[0], engine.step(state, step)[0])


@pytest.mark.parametrize("codec", ["quantize8|zstd", "quantize16", "quantize2"])
def test_a_quantized_delta_is_stored_as_its_levels_and_loads_as_it_was_summed(
    tmp_path: Path, codec: str
) -> None:
    n = 20_000
    engine, store, state, key, path = _buffering(tmp_path, n)
    updates = [_encoded_update(i, n, codec, decode_delta)[0] for i in range(3)]
    assert all(isinstance(u.delta, QuantizedVector) for u in updates)
    for i, update in enumerate(updates[:2]):
        before = set(store.blob_dir.iterdir())
        state, _ = engine.step(state, UpdateReceived(update, f"m{i}"))
        store.save(Checkpoint(state))
        (new,) = set(store.blob_dir.iterdir()) - before  # the levels' blob, nothing else
        assert new.stat().st_size < update.delta.levels.nbytes + 300
    save_checkpoint(tmp_path / "one.bin", Checkpoint(state), key, FED)
    for loaded in (CheckpointStore(path, key, FED).load(),
                   load_checkpoint(tmp_path / "one.bin", key, FED)):
        assert loaded is not None
        assert_same_state(loaded.state, state)
        assert not loaded.state.strategy_state.buffer[0].delta.levels.flags.writeable
        # the flush sums the loaded levels exactly as it sums the ones decoded from the wire
        step = UpdateReceived(updates[2], "m2")
        after, _ = engine.step(loaded.state, step)
        assert after.model_version == 1
        assert_same_state(after, engine.step(state, step)[0])


def test_an_unnoted_array_is_stored_whole_and_a_noted_one_that_does_not_decode_is_refused(
    tmp_path: Path,
) -> None:
    key, path = new_key(), tmp_path / "checkpoint.bin"
    store = CheckpointStore(path, key, FED)
    state = run(events(1))
    wide = np.ones(4, np.float64)
    store.note_encoded(wide, "float32", b"\x00" * 16)  # not a float32 vector: not noted
    store.save(Checkpoint(state, arrays={"wide": wide}))
    loaded = CheckpointStore(path, key, FED).load()
    assert loaded is not None and loaded.arrays["wide"].tobytes() == wide.tobytes()
    delta = state.strategy_state.buffer[0].delta.copy()
    store.note_encoded(delta, "quantize8|zstd", b"not a zstd frame")  # a caller's mistake
    store.save(Checkpoint(state, arrays={"delta": delta}))
    with pytest.raises(CheckpointError, match="does not decode"):
        CheckpointStore(path, key, FED).load()


def test_the_wire_bytes_of_an_array_are_let_go_once_it_is_saved_or_gone(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoint.bin", new_key(), FED)
    state = run(events(1))
    for i in range(50):  # rejected updates: noted, then dropped without a checkpoint
        update, data = _encoded_update(i, 1000, "quantize8|zstd")
        store.note_encoded(update.delta, "quantize8|zstd", data)
        del update
    kept, data = _encoded_update(99, 1000, "quantize8|zstd")
    store.note_encoded(kept.delta, "quantize8|zstd", data)
    assert len(store._encoded) == 1  # only the live array's bytes are held
    store.save(Checkpoint(state, arrays={"kept": kept.delta}))
    assert not store._encoded

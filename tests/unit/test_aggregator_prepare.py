"""A plain update's vector is decoded on the worker that verifies it, whether it came in one
chunk or in several, and the ordered step only takes it (no broker: the runtime's real reader,
thread pool and service, fed signed chunks)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import aggregator.service as service_module
from aggregator.checkpoint import CheckpointStore
from aggregator.service import AggregatorService, Phase, prepare
from aggregator.strategies.base import Delta
from fedsynth.codec.quantize import QuantizedVector
from fedsynth.federation import UPDATE_CODEC, decode_delta, decode_vector
from tests.integration.feeder import Feeder
from tests.unit.service_maker import Maker


def _trained(
    make_service: Maker, codec: str = UPDATE_CODEC
) -> tuple[Feeder, AggregatorService, int]:
    fed, make = make_service
    service = make(mode="plain", rounds=2, strategy={"name": "fedbuff", "buffer_size": 2})
    feeder = Feeder(fed, max_chunk=4096, codec=codec)  # every update in several chunks
    for hello in feeder.hellos:
        assert not service.handle(hello).dead
    assert service.phase is Phase.TRAINING and service.state is not None
    return feeder, service, int(service.state.params.size)


@pytest.mark.parametrize("codec", [UPDATE_CODEC, "float32"])
@pytest.mark.parametrize("max_chunk", [4096, 1 << 20])
def test_the_ordered_step_decodes_no_vector_the_workers_decoded(
    make_service: Maker, monkeypatch: pytest.MonkeyPatch, max_chunk: int, codec: str
) -> None:
    feeder, service, n = _trained(make_service, codec)
    feeder.max_chunk = max_chunk
    chunks = [c for site in ("A", "B") for c in feeder.update(site, 0, n)]
    assert (len(chunks) > 2) == (max_chunk == 4096)
    with ThreadPoolExecutor(3) as pool:  # verified in any order, as the prefetch workers do
        prepared = list(pool.map(lambda c: prepare(service.reader, c), chunks))
    decoded: list[int] = []

    def counting(*args: object) -> Delta:
        decoded.append(1)
        return decode_delta(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(service_module, "decode_delta", counting)
    for p in prepared:  # in consumption order, as the engine thread does
        assert not service.handle(p).dead
    assert not decoded
    assert service.state is not None and service.state.model_version == 1
    (entry,) = service.state.history
    assert entry.contributors == ("A", "B")


def test_a_vector_the_worker_could_not_decode_is_dead_lettered_in_order(
    make_service: Maker,
) -> None:
    fed, make = make_service
    feeder, service, n = _trained(make_service)
    fields = {
        "update_id": "00000000-0000-0000-0000-00000000000b", "site_id": "A", "base_version": 0,
        "n_samples": 10, "mode": "plain", "cohort_id": None, "weight": 1.0, "codec": "float32",
        "vector": bytes(4 * n - 2), "n_parameters": n, "train_loss": 0.0, "epsilon_spent": 0.0,
    }
    chunks = fed.factory("A").build_chunked("ModelUpdate", fields, 4096)
    prepared = [prepare(service.reader, c.value) for c in chunks]
    dead = [d for p in prepared for d in service.handle(p).dead]
    assert len(dead) == 1 and dead[0].error_class == "MessageError", dead
    assert service.state is not None and service.state.model_version == 0


def test_a_quantized_delta_is_buffered_as_its_levels_and_not_noted(make_service: Maker) -> None:
    feeder, service, n = _trained(make_service)  # the agents' codec, quantize8|zstd
    noted: list[object] = []
    service.note_encoded = lambda *args: noted.append(args)
    for chunk in feeder.update("A", 0, n):
        assert not service.handle(prepare(service.reader, chunk)).dead
    assert service.state is not None
    (buffered,) = service.state.strategy_state.buffer
    assert isinstance(buffered.delta, QuantizedVector) and buffered.delta.size == n
    assert not noted  # the checkpoint stores the levels themselves (about a quarter of float32)


def test_each_buffered_float_delta_is_noted_with_its_wire_bytes_for_the_checkpoint(
    make_service: Maker,
) -> None:
    feeder, service, n = _trained(make_service, "float32")
    assert isinstance(getattr(service.note_encoded, "__self__", None), CheckpointStore)
    noted: list[tuple[np.ndarray, str, bytes]] = []
    service.note_encoded = lambda arr, codec, data: noted.append((arr, codec, bytes(data)))
    for chunk in feeder.update("A", 0, n):
        assert not service.handle(prepare(service.reader, chunk)).dead
    assert service.state is not None
    (buffered,) = service.state.strategy_state.buffer
    ((arr, codec, data),) = noted
    assert arr is buffered.delta  # the very array the checkpoint will find in the state
    assert decode_vector(data, codec, n).tobytes() == arr.tobytes()

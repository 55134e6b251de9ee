"""Codecs: quantization, top-k with error feedback, zstd framing, named pipelines, size reports."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.codec import (
    ErrorFeedback,
    Pipeline,
    QuantizedVector,
    dequantize,
    quantize,
    read_levels,
    topk_decode,
    topk_encode,
    zstd_compress,
    zstd_decompress,
)
from fedsynth.errors import ConfigError, MessageError


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_quantize_error_bounded_by_one_level(bits: int) -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=1001)
    frame = quantize(v, bits, rng)
    out = dequantize(frame)
    step = (v.max() - v.min()) / ((1 << bits) - 1)
    assert out.shape == v.shape and np.max(np.abs(out - v)) <= step + 1e-12
    assert len(frame) == 26 + -(-1001 * bits // 8)


def test_quantize_is_unbiased() -> None:
    rng = np.random.default_rng(1)
    v = np.tile([0.0, 0.3, 1.0], 20000)
    out = dequantize(quantize(v, 1, rng))
    assert abs(out[1::3].mean() - 0.3) < 0.01


def test_quantize_refuses_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError):
        quantize(np.zeros(3), 3, rng)
    with pytest.raises(MessageError):
        quantize(np.array([np.inf]), 8, rng)
    with pytest.raises(MessageError):
        dequantize(quantize(np.ones(10), 8, rng)[:-1])


def test_topk_keeps_largest_and_error_feedback_loses_nothing() -> None:
    v = np.array([0.1, -5.0, 0.2, 3.0, -0.05])
    assert np.array_equal(topk_decode(topk_encode(v, 2)), [0, -5.0, 0, 3.0, 0])
    ef = ErrorFeedback(5)
    sent = sum(topk_decode(ef.compress(v, 1)) for _ in range(4))
    assert np.allclose(sent + ef.residual, 4 * v, atol=1e-6)
    with pytest.raises(MessageError):
        topk_decode(topk_encode(v, 2)[:-1])


def test_zstd_round_trip_and_bounds() -> None:
    data = b"fedsynth " * 1000
    frame = zstd_compress(data)
    assert len(frame) < len(data) and zstd_decompress(frame) == data
    with pytest.raises(MessageError):
        zstd_decompress(frame, max_size=100)
    with pytest.raises(MessageError):
        zstd_decompress(b"not zstd")


def test_pipeline_parse_reports_and_round_trip() -> None:
    rng = np.random.default_rng(2)
    v = np.round(rng.normal(size=4096), 1)
    pipe = Pipeline.parse("quantize8|zstd")
    assert pipe.name == "quantize8|zstd" and Pipeline.parse(pipe.name) == pipe
    data, reports = pipe.encode(v, rng)
    assert [r.stage for r in reports] == ["quantize8", "zstd"]
    assert reports[0].bytes_in == v.nbytes and reports[-1].bytes_out == len(data)
    assert reports[0].bytes_out == reports[1].bytes_in and reports[0].ratio > 7
    assert np.max(np.abs(pipe.decode(data) - v)) <= (v.max() - v.min()) / 255 + 1e-12
    exact = Pipeline.parse("float64|zstd19")
    assert np.array_equal(exact.decode(exact.encode(v, rng)[0]), v)


@pytest.mark.parametrize("spec", ["zstd", "quantize3", "quantize8|gzip", "", "topk2"])
def test_pipeline_refuses_bad_specs(spec: str) -> None:
    with pytest.raises(ConfigError):
        Pipeline.parse(spec)


def test_levels_are_read_without_forming_floats_and_refuse_bad_frames() -> None:
    rng = np.random.default_rng(3)
    v = rng.normal(size=1000)
    frame = quantize(v, 8, rng)
    levels = read_levels(frame)
    assert levels.levels.dtype == np.uint8 and levels.bits == 8 and levels.size == 1000
    assert levels.low == v.min() and levels.high == v.max()
    assert np.shares_memory(levels.levels, np.frombuffer(frame, np.uint8))  # a view, no copy
    assert Pipeline.parse("float32").decode_compact(v.astype("<f4").tobytes()).dtype == np.float32
    with pytest.raises(MessageError, match="does not hold 1000 values"):
        read_levels(frame[:-1])
    with pytest.raises(MessageError, match="not a quantized frame"):
        read_levels(b"X" + frame[1:])
    with pytest.raises(ConfigError, match="read-only"):
        QuantizedVector(np.zeros(3, np.uint8), 0.0, 1.0, 8)
    frozen = np.zeros(3, np.uint16)
    frozen.setflags(write=False)
    with pytest.raises(ConfigError, match="1-D uint8"):
        QuantizedVector(frozen, 0.0, 1.0, 8)

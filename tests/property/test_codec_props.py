"""Round-trip properties of the codecs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsynth.codec import Pipeline, topk_decode, topk_encode, zstd_compress, zstd_decompress
from fedsynth.codec.quantize import QuantizedVector, dequantize, quantize

finite = arrays(np.float64, st.integers(0, 300),
                elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))


@settings(max_examples=60, deadline=None)
@given(finite, st.sampled_from(["float64", "float64|zstd", "float64|zstd1|zstd"]))
def test_lossless_pipelines_round_trip(v: np.ndarray, spec: str) -> None:
    pipe = Pipeline.parse(spec)
    data, reports = pipe.encode(v, np.random.default_rng(0))
    assert np.array_equal(pipe.decode(data), v)
    assert reports[-1].bytes_out == len(data)


@settings(max_examples=60, deadline=None)
@given(finite, st.sampled_from([1, 2, 4, 8, 16]), st.booleans())
def test_quantized_pipelines_within_one_level(v: np.ndarray, bits: int, zstd: bool) -> None:
    pipe = Pipeline.parse(f"quantize{bits}" + ("|zstd" if zstd else ""))
    out = pipe.decode(pipe.encode(v, np.random.default_rng(1))[0])
    assert out.shape == v.shape
    if v.size:
        step = (v.max() - v.min()) / ((1 << bits) - 1)
        assert np.all(np.abs(out - v) <= step * (1 + 1e-9) + 1e-9)


@settings(max_examples=60, deadline=None)
@given(finite, st.data())
def test_topk_keeps_exactly_k_largest(v: np.ndarray, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, v.size))
    out = topk_decode(topk_encode(v, k))
    kept = np.flatnonzero(out != 0)
    assert len(kept) <= k
    if 0 < k < v.size:
        threshold = np.sort(np.abs(v))[::-1][k - 1]
        assert np.all(np.abs(v[kept]) >= threshold - 1e-9 * abs(threshold))
    assert np.allclose(out[kept], v[kept].astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000))
def test_zstd_round_trip(data: bytes) -> None:
    assert zstd_decompress(zstd_compress(data)) == data


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 50), st.sampled_from([1, 2, 4, 8, 16]))
def test_a_subnormal_range_quantizes_without_nan(n: int, bits: int) -> None:
    """``top / (high - low)`` overflows for a range of a few subnormals; the levels stay valid."""
    v = np.zeros(n)
    v[n // 2] = 5e-324 * (1 + n % 3)
    pipe = Pipeline.parse(f"quantize{bits}")
    with np.errstate(all="raise"):
        out = pipe.decode(pipe.encode(v, np.random.default_rng(1))[0])
    assert np.all(np.isfinite(out)) and np.all(np.abs(out - v) <= 1e-320)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([1, 2, 4, 8, 16]),
       st.sampled_from([0, 1, 1000, (1 << 16) - 1, 1 << 16, (1 << 18) + 3]),
       st.floats(-1e3, 1e3), st.floats(0, 1e3), st.integers(0, 2**32 - 1))
def test_float32_decode_is_the_float64_decode_rounded(
    bits: int, n: int, low: float, width: float, seed: int
) -> None:
    """Every decode path (table, whole-vector, blocks) gives float32(low + l * step) bit for bit."""
    rng = np.random.default_rng(seed)
    frame = quantize(low + width * rng.random(n), bits, rng)
    wide = dequantize(frame, np.float64)
    narrow = dequantize(frame, np.float32)
    assert narrow.dtype == np.float32
    assert np.array_equal(narrow.view(np.uint32), wide.astype(np.float32).view(np.uint32))


@settings(max_examples=40, deadline=None)
@given(finite, st.sampled_from([1, 2, 4, 8, 16]), st.booleans(), st.data())
def test_levels_hold_the_values_the_floats_decode_to(
    v: np.ndarray, bits: int, zstd: bool, data: st.DataObject
) -> None:
    """A frame read as levels gives, for any columns, the float64 values :func:`dequantize` gives,
    and its dense form is the float32 decode bit for bit."""
    pipe = Pipeline.parse(f"quantize{bits}" + ("|zstd" if zstd else ""))
    wire = pipe.encode(v, np.random.default_rng(2))[0]
    levels = pipe.decode_compact(wire)
    assert isinstance(levels, QuantizedVector) and levels.shape == v.shape
    assert not levels.levels.flags.writeable
    wide = pipe.decode(wire, np.float64)
    start = data.draw(st.integers(0, v.size))
    stop = data.draw(st.integers(start, v.size))
    got = levels.values(slice(start, stop), np.empty(stop - start))
    assert np.array_equal(got, wide[start:stop])
    narrow = pipe.decode(wire, np.float32)
    assert np.array_equal(levels.dense(np.float32).view(np.uint32), narrow.view(np.uint32))

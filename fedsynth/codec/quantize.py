"""Stochastic k-bit quantization of float vectors (QSGD-style, unbiased).

Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient Quantization and Encoding"
(NeurIPS 2017). Each value is mapped to one of ``2^k`` evenly spaced levels between the vector's
minimum and maximum, rounding up with probability equal to the fractional part, so the decoded
vector equals the input in expectation. Frame: ``b"Q"``, bits (u8), count (u64), low and high
(f64), then the levels packed little-endian into bytes (1, 2, 4 or 8 bits per value) or as u16.

A frame decodes either to floats (:func:`dequantize`) or to its levels (:func:`read_levels`, a
:class:`QuantizedVector`): a consumer that only forms weighted sums, such as the aggregator's
FedBuff step, multiplies the levels by ``weight * step`` as it adds them and never builds the float
vector (``docs/bench-aggregate.md``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedsynth.errors import ConfigError, MessageError

__all__ = ["SUPPORTED_BITS", "QuantizedVector", "dequantize", "quantize", "read_levels"]

SUPPORTED_BITS = (1, 2, 4, 8, 16)
_HEADER = struct.Struct("<cBQdd")


def _pack(levels: npt.NDArray[np.uint16], bits: int) -> bytes:
    if bits == 16:
        return levels.astype("<u2").tobytes()
    small = levels.astype(np.uint8)
    if bits == 8:
        return small.tobytes()
    per = 8 // bits
    padded = np.zeros(-(-small.size // per) * per, dtype=np.uint8)
    padded[: small.size] = small
    groups = padded.reshape(-1, per)
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    packed: npt.NDArray[np.uint8] = np.bitwise_or.reduce(groups << shifts, axis=1).astype(np.uint8)
    return packed.tobytes()


def _unpack(
    raw: bytes | memoryview, bits: int, count: int
) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]:
    if bits == 16:
        return np.frombuffer(raw, dtype="<u2", count=count).astype(np.uint16)
    data = np.frombuffer(raw, dtype=np.uint8)
    if bits == 8:
        return data[:count]
    per = 8 // bits
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    values = (data[:, None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(-1)[:count]


def quantize(vector: npt.ArrayLike, bits: int, rng: np.random.Generator) -> bytes:
    """Encode a finite float vector with ``bits`` bits per value and stochastic rounding.

    Raises:
        ConfigError: unsupported ``bits``.
        MessageError: non-finite values.
    """
    if bits not in SUPPORTED_BITS:
        raise ConfigError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    flat = np.asarray(vector, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(flat)):
        raise MessageError("cannot quantize NaN or infinity")
    low = float(flat.min()) if flat.size else 0.0
    high = float(flat.max()) if flat.size else 0.0
    top = (1 << bits) - 1
    if high > low:
        scale = top / (high - low)
        if math.isfinite(scale):
            scaled = (flat - low) * scale
        else:  # a subnormal range: top / range overflows (0 * inf would be NaN)
            scaled = (flat - low) / (high - low) * top
    else:
        scaled = np.zeros_like(flat)
    floor = np.floor(scaled)
    levels = np.minimum(floor + (rng.random(flat.size) < scaled - floor), top).astype(np.uint16)
    return _HEADER.pack(b"Q", bits, flat.size, low, high) + _pack(levels, bits)


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class QuantizedVector:
    """A vector held as its quantization levels: value ``i`` is ``low + levels[i] * step``.

    ``step`` is ``(high - low) / (2^bits - 1)`` and each value is defined in float64, as
    :func:`dequantize` forms it; :meth:`dense` rounds it to float32 as :func:`dequantize` does.
    ``low`` and ``high`` are the frame's, unchecked: a frame sent with a non-finite range gives
    non-finite values, for a validator to refuse. Immutable: ``levels`` is a read-only 1-D
    ``uint8`` (up to 8 bits) or ``uint16`` array.

    Attributes:
        levels: One level per value, each in ``[0, 2^bits - 1]``.
        low: The value of level 0.
        high: The value of the top level ``2^bits - 1``.
        bits: Bits per level of the frame it came from.
    """

    levels: npt.NDArray[np.uint8] | npt.NDArray[np.uint16]
    low: float
    high: float
    bits: int

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ConfigError(f"bits must be one of {SUPPORTED_BITS}, got {self.bits}")
        want = np.uint16 if self.bits == 16 else np.uint8
        if self.levels.dtype != want or self.levels.ndim != 1:
            raise ConfigError(
                f"{self.bits}-bit levels must be a 1-D {np.dtype(want)} array, got "
                f"{self.levels.dtype} of shape {self.levels.shape}"
            )
        if self.levels.flags.writeable:
            raise ConfigError("levels must be read-only (a QuantizedVector is immutable)")

    @property
    def size(self) -> int:
        """Number of values."""
        return int(self.levels.size)

    @property
    def shape(self) -> tuple[int]:
        """``(size,)``, like a 1-D array's."""
        return (self.size,)

    @property
    def step(self) -> float:
        """The distance between neighbouring levels' values."""
        return (self.high - self.low) / ((1 << self.bits) - 1)

    def values(self, columns: slice, out: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Write the float64 values of ``columns`` into ``out`` (its length must match)."""
        np.multiply(self.levels[columns], self.step, out=out)
        out += self.low
        return out

    def dense(self, dtype: npt.DTypeLike = np.float32) -> npt.NDArray[np.floating]:
        """The whole vector as ``dtype`` (each float64 value rounded once), writable."""
        step = self.step
        if np.dtype(dtype) == np.float32 and self.size >= _BLOCKED_MIN:
            return _affine_blocks(self.levels, self.low, step)
        if self.bits == 16:
            wide: npt.NDArray[np.float64] = self.low + self.levels.astype(np.float64) * step
            return wide.astype(dtype, copy=False)
        top = (1 << self.bits) - 1
        table = (self.low + np.arange(top + 1, dtype=np.float64) * step).astype(dtype)
        out: npt.NDArray[np.floating] = np.take(table, self.levels)
        return out


def read_levels(frame: bytes | memoryview) -> QuantizedVector:
    """Read a frame made by :func:`quantize` without forming its floats.

    The levels of an 8-bit frame are a read-only view of ``frame``; other widths are unpacked
    into a new (read-only) array.

    Raises:
        MessageError: a malformed or truncated frame.
    """
    if len(frame) < _HEADER.size:
        raise MessageError("quantized frame shorter than its header")
    magic, bits, count, low, high = _HEADER.unpack_from(frame)
    if magic != b"Q" or bits not in SUPPORTED_BITS:
        raise MessageError("not a quantized frame")
    body = memoryview(frame)[_HEADER.size :]
    if len(body) != -(-count * bits // 8):
        raise MessageError(f"quantized body of {len(body)} bytes does not hold {count} values")
    levels = _unpack(body, bits, count)
    if levels.flags.writeable:
        levels.setflags(write=False)
    return QuantizedVector(levels, low, high, bits)


def dequantize(
    frame: bytes, dtype: npt.DTypeLike = np.float64
) -> npt.NDArray[np.floating]:
    """Decode a frame made by :func:`quantize`.

    Each level ``l`` decodes to ``low + l * ((high - low) / (2^bits - 1))`` computed in float64;
    with ``dtype=np.float32`` that value is rounded to float32 (the same as casting the float64
    result). A large float32 decode is formed block by block (:func:`_affine_blocks`); otherwise,
    up to 8 bits, the ``2^bits`` values are computed once and looked up.

    Raises:
        MessageError: a malformed or truncated frame.
    """
    return read_levels(frame).dense(dtype)


_BLOCKED_MIN = 1 << 16
_BLOCK = 1 << 18


def _affine_blocks(
    levels: npt.NDArray[np.uint8] | npt.NDArray[np.uint16], low: float, step: float
) -> npt.NDArray[np.float32]:
    """``float32(low + level * step)``, formed in float64 one block of columns at a time.

    The same bits as the float64 formula cast at the end (the same two float64 operations, one
    rounding to float32), without a float64 copy of the whole vector; for 1M 8-bit levels this
    is faster than a table lookup, which numpy does through an index array of ``intp``.
    """
    out = np.empty(levels.size, dtype=np.float32)
    buf = np.empty(min(_BLOCK, levels.size), dtype=np.float64)
    for start in range(0, levels.size, _BLOCK):
        stop = min(start + _BLOCK, levels.size)
        wide = buf[: stop - start]
        np.multiply(levels[start:stop], step, out=wide)
        wide += low
        out[start:stop] = wide
    return out

"""Top-k sparsification with error feedback (plain mode only: masking needs dense vectors).

Stich et al., "Sparsified SGD with Memory" (NeurIPS 2018); Lin et al., "Deep Gradient Compression"
(ICLR 2018). Only the ``k`` largest-magnitude coordinates are sent; what was left out is kept in a
residual and added to the next update, so nothing is lost over rounds. Frame: ``b"K"``, length
(u64), k (u64), then k indices (u32) and k values (f32), little-endian.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

from fedsynth.errors import ConfigError, MessageError

__all__ = ["ErrorFeedback", "topk_decode", "topk_encode"]

_HEADER = struct.Struct("<cQQ")


def topk_encode(vector: npt.ArrayLike, k: int) -> bytes:
    """Keep the ``k`` largest-magnitude coordinates (ties by lowest index) as a sparse frame."""
    flat = np.asarray(vector, dtype=np.float64).reshape(-1)
    if not 0 <= k <= flat.size:
        raise ConfigError(f"k must be in [0, {flat.size}], got {k}")
    if k == flat.size:
        idx = np.arange(flat.size)
    else:
        idx = np.sort(np.argpartition(-np.abs(flat), k - 1)[:k]) if k else np.empty(0, np.int64)
    body = idx.astype("<u4").tobytes() + flat[idx].astype("<f4").tobytes()
    return _HEADER.pack(b"K", flat.size, k) + body


def topk_decode(frame: bytes) -> npt.NDArray[np.float64]:
    """Decode a sparse frame into a dense vector (zeros where nothing was sent)."""
    if len(frame) < _HEADER.size:
        raise MessageError("sparse frame shorter than its header")
    magic, length, k = _HEADER.unpack_from(frame)
    if magic != b"K" or k > length or len(frame) != _HEADER.size + 8 * k:
        raise MessageError("malformed sparse frame")
    idx = np.frombuffer(frame, dtype="<u4", count=k, offset=_HEADER.size)
    values = np.frombuffer(frame, dtype="<f4", count=k, offset=_HEADER.size + 4 * k)
    if k and int(idx.max()) >= length:
        raise MessageError("sparse index out of range")
    out = np.zeros(length, dtype=np.float64)
    out[idx] = values
    return out


class ErrorFeedback:
    """The residual of one site's top-k compression, carried from update to update."""

    def __init__(self, length: int) -> None:
        """Start with a zero residual of ``length`` coordinates."""
        self.residual: npt.NDArray[np.float64] = np.zeros(length, dtype=np.float64)

    def compress(self, delta: npt.ArrayLike, k: int) -> bytes:
        """Send the top-k of ``delta + residual`` and keep the rest as the new residual."""
        corrected = np.asarray(delta, dtype=np.float64).reshape(-1) + self.residual
        frame = topk_encode(corrected, k)
        self.residual = corrected - topk_decode(frame)
        return frame

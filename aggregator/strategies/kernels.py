"""Numeric kernels of the aggregation rules: pure functions on arrays.

Every function takes arrays (a delta may also be a
:class:`~fedsynth.codec.quantize.QuantizedVector`, whose float64 values are formed block by block
as they are used), returns new arrays and mutates nothing. Reductions run in float64
(so that results do not depend on float32 rounding of intermediate sums) in a fixed order, which
makes them bit-for-bit reproducible for the same inputs.

References:
    * Weighted mean: McMahan et al., "Communication-Efficient Learning of Deep Networks from
      Decentralized Data", AISTATS 2017.
    * Coordinate-wise median and trimmed mean: Yin et al., "Byzantine-Robust Distributed Learning:
      Towards Optimal Statistical Rates", ICML 2018.
    * Krum and multi-Krum: Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
      Gradient Descent", NeurIPS 2017.
    * Norm clipping: Sun et al., "Can You Really Backdoor Federated Learning?", 2019.
    * Adaptive server optimizer: Reddi et al., "Adaptive Federated Optimization", ICLR 2021.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedsynth.codec.quantize import QuantizedVector
from fedsynth.errors import ConfigError

__all__ = [
    "adam_server_step",
    "apply_direction",
    "apply_direction_into",
    "clip_by_norm",
    "coordinate_median",
    "krum_scores",
    "krum_select",
    "l2_norm",
    "pairwise_sq_distances",
    "stack_deltas",
    "trimmed_mean",
    "weighted_mean",
    "weighted_mean_rows",
]


def stack_deltas(
    deltas: Sequence[np.ndarray | QuantizedVector], columns: slice | None = None
) -> np.ndarray:
    """Stack 1-D vectors (or their ``columns``) into a ``(k, d)`` float64 matrix.

    Raises:
        ConfigError: No vectors, or vectors of different lengths.
    """
    if not deltas:
        raise ConfigError("cannot aggregate zero updates")
    sizes = {_size(d) for d in deltas}
    if len(sizes) != 1:
        raise ConfigError(f"updates have different sizes: {sorted(sizes)}")
    n = sizes.pop()
    cols = slice(0, n) if columns is None else columns
    width = len(range(*cols.indices(n)))
    out = np.empty((len(deltas), width), dtype=np.float64)
    for row, d in zip(out, deltas, strict=True):
        if isinstance(d, QuantizedVector):
            d.values(cols, out=row)
        else:
            row[:] = np.asarray(d).reshape(-1)[cols]  # one float32 -> float64 pass
    return out


def _size(vector: np.ndarray | QuantizedVector) -> int:
    return vector.size if isinstance(vector, QuantizedVector) else int(np.asarray(vector).size)


def weighted_mean(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_i w_i x_i / sum_i w_i`` over the rows of ``vectors``.

    Computed coordinate by coordinate in row order (``x_0 c_0 + x_1 c_1 + ...`` with
    ``c_i = w_i / sum w``, no fused multiply-add), so a coordinate's bits do not depend on the
    other coordinates: the same result for the whole vector or any block of its columns, and
    the same as :func:`weighted_mean_rows`.

    Args:
        vectors: ``(k, d)`` array.
        weights: ``(k,)`` non-negative weights with a positive sum.

    Returns:
        The ``(d,)`` float64 weighted mean.

    Raises:
        ConfigError: Shapes disagree, a weight is negative or not finite, or the sum
            is not positive.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ConfigError(f"vectors must be a (k, d) matrix, got shape {x.shape}")
    return weighted_mean_rows(list(x), weights)


def weighted_mean_rows(
    rows: Sequence[np.ndarray | QuantizedVector],
    weights: np.ndarray,
    columns: slice | None = None,
) -> np.ndarray:
    """:func:`weighted_mean` of 1-D rows (any float dtype), over their ``columns`` only.

    No ``(k, d)`` stack is built: each row is converted to float64 as it is multiplied, so over
    a cache-sized block of columns the work stays in cache. A quantized row (value
    ``low + level * step``) adds ``level * (c * step)`` in that pass, straight from its levels,
    and its ``c * low`` joins one constant added at the end: per coordinate the same terms as
    for its float64 values, rounded differently, and still independent of the other columns.

    Raises:
        ConfigError: As :func:`weighted_mean`.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if not rows or len(rows) != w.size:
        raise ConfigError(f"weights {w.shape} do not match {len(rows)} vectors")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ConfigError(f"weights must be finite and >= 0, got {w.tolist()}")
    total = float(w.sum())
    if total <= 0:
        raise ConfigError("weights sum to zero")
    coeffs = w / total
    cols = slice(None) if columns is None else columns
    out: np.ndarray | None = None
    term: np.ndarray | None = None
    offset = 0.0
    for row, c in zip(rows, coeffs, strict=True):
        if isinstance(row, QuantizedVector):
            source, factor = row.levels[cols], c * row.step
            offset += c * row.low
        else:
            source, factor = np.asarray(row)[cols], c
        if out is None:
            out = np.multiply(source, factor, dtype=np.float64)
            continue
        if term is None:
            term = np.empty_like(out)
        np.multiply(source, factor, out=term, dtype=np.float64)
        out += term
    assert out is not None
    if offset != 0.0:
        out += offset
    return np.asarray(out, dtype=np.float64)


_NORM_BLOCK = 1 << 16


def l2_norm(vector: np.ndarray | QuantizedVector) -> float:
    """The L2 norm of ``vector``, its squares summed in float64 in a fixed order.

    Block by block: each block of ``2^16`` values is widened into one reused float64 buffer and
    its squares summed there, the block sums added in turn, so no float64 copy of the whole
    vector is made (for 1M float32 values that copy's fresh pages cost more than the sums).
    For float32 input the sum cannot overflow, so a NaN or infinite value, and only such a
    value, gives a norm that is not finite. A quantized vector's float64 values are formed in
    the same buffer.
    """
    quantized = vector if isinstance(vector, QuantizedVector) else None
    flat = np.asarray(vector).reshape(-1) if quantized is None else quantized.levels
    buf = np.empty(min(_NORM_BLOCK, flat.size), dtype=np.float64)
    total = 0.0
    for start in range(0, flat.size, _NORM_BLOCK):
        block = buf[: min(_NORM_BLOCK, flat.size - start)]
        if quantized is None:
            block[...] = flat[start : start + block.size]
        else:
            quantized.values(slice(start, start + block.size), out=block)
        total += float(np.dot(block, block))
    return math.sqrt(total)


def clip_by_norm(
    vector: np.ndarray, max_norm: float, norm: float | None = None
) -> np.ndarray:
    """Scale ``vector`` down so that its L2 norm is at most ``max_norm`` (same dtype).

    ``norm``: the vector's L2 norm when the caller already has it (:func:`l2_norm` otherwise).

    Raises:
        ConfigError: ``max_norm`` is not positive.
    """
    if not max_norm > 0:
        raise ConfigError(f"max_norm must be > 0, got {max_norm}")
    v = np.asarray(vector)
    norm = l2_norm(v) if norm is None else norm
    if norm <= max_norm:
        return np.array(v, copy=True)
    return np.asarray(v.astype(np.float64) * (max_norm / norm), dtype=v.dtype)


def coordinate_median(vectors: np.ndarray) -> np.ndarray:
    """Coordinate-wise median of the rows of a ``(k, d)`` array (float64)."""
    return np.median(np.asarray(vectors, dtype=np.float64), axis=0)


def trimmed_mean(vectors: np.ndarray, trim: int) -> np.ndarray:
    """Coordinate-wise mean after dropping the ``trim`` smallest and ``trim`` largest values.

    Raises:
        ConfigError: ``2 * trim >= k`` (nothing would be left) or ``trim < 0``.
    """
    x = np.asarray(vectors, dtype=np.float64)
    k = x.shape[0]
    if trim < 0 or 2 * trim >= k:
        raise ConfigError(f"cannot trim {trim} from each end of {k} values")
    ordered = np.sort(x, axis=0)
    return np.asarray(ordered[trim : k - trim].mean(axis=0), dtype=np.float64)


def pairwise_sq_distances(vectors: np.ndarray) -> np.ndarray:
    """``(k, k)`` matrix of squared Euclidean distances between rows (O(k d) memory)."""
    x = np.asarray(vectors, dtype=np.float64)
    k = x.shape[0]
    out = np.zeros((k, k), dtype=np.float64)
    for i in range(k):
        diff = x - x[i]
        out[i] = np.einsum("ij,ij->i", diff, diff)
    return out


def krum_scores(vectors: np.ndarray, n_byzantine: int) -> np.ndarray:
    """Krum score of each row: sum of squared distances to its ``k - f - 2`` nearest other rows.

    Raises:
        ConfigError: ``k < 2 f + 3`` (Krum's requirement ``n > 2f + 2``).
    """
    x = np.asarray(vectors, dtype=np.float64)
    k = x.shape[0]
    if n_byzantine < 0 or k < 2 * n_byzantine + 3:
        raise ConfigError(f"Krum needs k >= 2f + 3 updates, got k={k}, f={n_byzantine}")
    dist = pairwise_sq_distances(x)
    n_near = k - n_byzantine - 2
    scores = np.empty(k, dtype=np.float64)
    for i in range(k):
        others = np.sort(np.delete(dist[i], i))
        scores[i] = others[:n_near].sum()
    return scores


def krum_select(vectors: np.ndarray, n_byzantine: int, n_selected: int) -> np.ndarray:
    """Indices of the ``n_selected`` rows with the lowest Krum scores (ties: lower index first).

    Raises:
        ConfigError: ``n_selected`` outside ``1..k``, or too few rows for ``n_byzantine``.
    """
    scores = krum_scores(vectors, n_byzantine)
    if not 1 <= n_selected <= scores.size:
        raise ConfigError(f"multi-Krum m must be in 1..{scores.size}, got {n_selected}")
    return np.argsort(scores, kind="stable")[:n_selected]


def apply_direction(params: np.ndarray, direction: np.ndarray, lr: float) -> np.ndarray:
    """``params + lr * direction`` computed in float64, returned as read-only float32."""
    out = np.empty(np.broadcast_shapes(np.shape(params), np.shape(direction)), dtype=np.float32)
    apply_direction_into(out, params, direction, lr)
    out.setflags(write=False)
    return out


def apply_direction_into(
    out: np.ndarray, params: np.ndarray, direction: np.ndarray, lr: float
) -> None:
    """Write ``params + lr * direction`` (formed in float64, rounded once) into float32 ``out``."""
    step = np.asarray(direction, dtype=np.float64)
    if lr != 1.0:  # x * 1.0 == x exactly: skip a pass over the vector
        step = lr * step
    # one pass: the sum is formed in float64 and only the result is rounded to float32
    np.add(params, step, out=out, dtype=np.float64, casting="same_kind")


def adam_server_step(
    m: np.ndarray,
    v: np.ndarray,
    pseudo_grad: np.ndarray,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One FedAdam moment update (Reddi et al. 2021, Algorithm 2, no bias correction).

    ``m' = b1 m + (1 - b1) D``, ``v' = b2 v + (1 - b2) D^2``, direction ``m' / (sqrt(v') + tau)``.

    Returns:
        ``(m', v', direction)``, all float64. The caller applies ``x + lr * direction``.
    """
    d = np.asarray(pseudo_grad, dtype=np.float64)
    m_new = beta1 * np.asarray(m, dtype=np.float64) + (1.0 - beta1) * d
    v_new = beta2 * np.asarray(v, dtype=np.float64) + (1.0 - beta2) * d * d
    return m_new, v_new, m_new / (np.sqrt(v_new) + tau)

"""Coordinate-wise kernels over cache-sized column blocks.

A buffered rule whose combiner works coordinate by coordinate (weighted mean, median, trimmed
mean) gives the same bits for every coordinate however the vector is cut into blocks, so its
flush (combine the buffer in float64, add to the model, round to float32) runs block by block:
a block's float64 temporaries stay in cache instead of streaming 8 MB vectors through memory
several times.

Threads were tried for the blocks and dropped: on 2 cores they compete with the ingest workers,
and on a 16-core machine they did not shorten the engine step, which waits for the GIL there
(docs/bench-aggregate-history.md, "On 16 cores").
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BLOCK", "column_slices", "for_columns"]

BLOCK = 1 << 16
"""Columns per block: 64k float64 values (512 KiB) per temporary keep a block in L2 cache."""


def column_slices(n: int) -> list[slice]:
    """``[0, n)`` cut into consecutive slices of at most :data:`BLOCK` columns (one slice if
    ``n <= BLOCK``, also for ``n == 0``)."""
    if n <= BLOCK:
        return [slice(0, n)]
    return [slice(start, min(start + BLOCK, n)) for start in range(0, n, BLOCK)]


def for_columns(n: int, work: Callable[[slice], None]) -> None:
    """Call ``work(s)`` for every slice of :func:`column_slices`, in order."""
    for cols in column_slices(n):
        work(cols)

"""Staleness functions, re-exported from :mod:`fedsynth.staleness`.

They live in the core because sites need the same ``s(t)`` as the aggregator: in secure mode each
site pre-scales its own update by ``s(v_c - b)`` before masking.
"""

from fedsynth.staleness import (
    StalenessFn,
    constant_staleness,
    hinge_staleness,
    make_staleness,
    polynomial_staleness,
)

__all__ = [
    "StalenessFn",
    "constant_staleness",
    "hinge_staleness",
    "make_staleness",
    "polynomial_staleness",
]

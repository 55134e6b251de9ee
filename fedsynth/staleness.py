"""Staleness functions ``s(t)`` that down-weight an update trained ``t`` versions ago.

From FedAsync (Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", 2019, section 5):

* constant: ``s(t) = 1``;
* polynomial: ``s_a(t) = (1 + t) ** -a``;
* hinge: ``s_{a,b}(t) = 1`` if ``t <= b`` else ``1 / (a (t - b) + 1)``.

Every function satisfies ``s(0) = 1`` and is non-increasing in ``t`` for ``a >= 0``. They accept a
scalar or an integer array and are pure.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from fedsynth.errors import ConfigError

__all__ = [
    "StalenessFn",
    "constant_staleness",
    "hinge_staleness",
    "make_staleness",
    "polynomial_staleness",
]

StalenessFn: TypeAlias = Callable[[int], float]
"""A staleness function of one non-negative integer staleness."""


def _as_float_array(t: npt.ArrayLike) -> np.ndarray:
    arr = np.asarray(t, dtype=np.float64)
    if np.any(arr < 0):
        raise ConfigError(f"staleness must be >= 0, got {t!r}")
    return arr


def constant_staleness(t: int) -> float:
    """``s(t) = 1`` for every ``t >= 0``."""
    _as_float_array(t)
    return 1.0


def polynomial_staleness(t: int, a: float) -> float:
    """``s_a(t) = (1 + t) ** -a``.

    Args:
        t: Staleness (``>= 0``).
        a: Decay exponent (``>= 0``).
    """
    return float(np.power(1.0 + _as_float_array(t), -a))


def hinge_staleness(t: int, a: float, b: float) -> float:
    """``s_{a,b}(t) = 1`` if ``t <= b`` else ``1 / (a (t - b) + 1)``.

    Args:
        t: Staleness (``>= 0``).
        a: Slope after the hinge (``>= 0``).
        b: Staleness tolerated at full weight (``>= 0``).
    """
    stale = float(_as_float_array(t))
    # only past the hinge: np.where would also evaluate 1 / (a (t - b) + 1) where it can be 1 / 0
    return 1.0 if stale <= b else 1.0 / (a * (stale - b) + 1.0)


def make_staleness(kind: str, a: float = 0.0, b: float = 0.0) -> StalenessFn:
    """Bind a staleness function by name and parameters.

    Args:
        kind: ``"constant"``, ``"polynomial"`` or ``"hinge"``.
        a: Exponent (polynomial) or slope (hinge).
        b: Hinge point (hinge only).

    Returns:
        A one-argument function of the staleness.

    Raises:
        ConfigError: Unknown kind or negative parameter.
    """
    if a < 0 or b < 0:
        raise ConfigError(f"staleness parameters must be >= 0, got a={a}, b={b}")
    factories: dict[str, Callable[[], StalenessFn]] = {
        "constant": lambda: constant_staleness,
        "polynomial": lambda: partial(polynomial_staleness, a=a),
        "hinge": lambda: partial(hinge_staleness, a=a, b=b),
    }
    factory = factories.get(kind)
    if factory is None:
        raise ConfigError(f"unknown staleness function {kind!r}; known: {sorted(factories)}")
    return factory()

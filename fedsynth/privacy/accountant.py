"""The accountant Protocol and the choice of accountant by name.

An accountant tracks the privacy spent by a sequence of DP-SGD steps (Poisson-subsampled Gaussian
mechanism, Abadi et al. 2016) and converts it to (epsilon, delta)-DP. Implementations:
:class:`~fedsynth.privacy.rdp.RDPAccountant` (Renyi DP, Mironov et al. 2019) and
:class:`~fedsynth.privacy.prv.PRVAccountant` (Gopi et al. 2021).

Accountants are chosen by name through a read-only mapping, and restored from their own state (the
state names its mechanism), so a saved accountant always comes back as the same kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from fedsynth.privacy.errors import AccountantStateError, PrivacyConfigError
from fedsynth.privacy.history import StepSegment
from fedsynth.privacy.prv import PRVAccountant
from fedsynth.privacy.rdp import RDPAccountant

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "accountant_from_state",
    "copy_accountant",
    "make_accountant",
]


@runtime_checkable
class Accountant(Protocol):
    """What every privacy accountant offers."""

    @property
    def total_steps(self) -> int:
        """Number of steps recorded so far."""
        ...

    @property
    def history(self) -> tuple[StepSegment, ...]:
        """The steps recorded so far, as run-length segments in order."""
        ...

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Records ``steps`` steps of the subsampled Gaussian mechanism.

        Args:
            noise_multiplier: Noise std divided by the clipping norm (>= 0).
            sample_rate: Poisson sampling probability, in (0, 1].
            steps: Number of identical steps (>= 1).
        """
        ...

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0.0 before any step)."""
        ...

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot that names its mechanism."""
        ...

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Accountant:
        """Rebuilds an accountant of this class from :meth:`to_state` output."""
        ...


class _AccountantClass(Protocol):
    def __call__(self) -> Accountant: ...

    def from_state(self, state: dict[str, Any]) -> Accountant: ...


#: Accountant classes by mechanism name (read-only).
ACCOUNTANTS: Mapping[str, _AccountantClass] = MappingProxyType(
    {RDPAccountant.mechanism: RDPAccountant, PRVAccountant.mechanism: PRVAccountant}
)


def make_accountant(mechanism: str = "rdp") -> Accountant:
    """A fresh accountant for ``mechanism`` (``"rdp"`` or ``"prv"``).

    Raises:
        PrivacyConfigError: For an unknown mechanism.
    """
    try:
        cls = ACCOUNTANTS[mechanism]
    except KeyError:
        raise PrivacyConfigError(
            f"unknown accountant {mechanism!r}; choose one of {sorted(ACCOUNTANTS)}"
        ) from None
    return cls()


def accountant_from_state(state: dict[str, Any]) -> Accountant:
    """Restores whichever accountant wrote ``state`` (its ``mechanism`` field decides).

    Raises:
        AccountantStateError: When the state is malformed or names an unknown mechanism.
    """
    if not isinstance(state, dict):
        raise AccountantStateError(f"accountant state must be a dict, got {type(state).__name__}")
    mechanism = state.get("mechanism")
    cls = ACCOUNTANTS.get(mechanism) if isinstance(mechanism, str) else None
    if cls is None:
        raise AccountantStateError(f"accountant state names unknown mechanism {mechanism!r}")
    return cls.from_state(state)


def copy_accountant(accountant: Accountant) -> Accountant:
    """An independent copy of ``accountant`` (through its state, so nothing is shared)."""
    return type(accountant).from_state(accountant.to_state())

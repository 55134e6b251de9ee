"""Step history shared by the accountants: what was spent, never how it is converted.

An accountant for the Poisson-subsampled Gaussian mechanism needs only the sequence of
``(noise_multiplier, sample_rate, steps)`` segments; consecutive steps with identical parameters are
merged into one segment. The conversion to epsilon (RDP, PRV) lives in the accountant modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedsynth.privacy.errors import AccountantStateError, PrivacyConfigError

__all__ = [
    "StepSegment",
    "append_steps",
    "history_from_accountant_state",
    "history_from_state",
    "history_to_state",
    "validate_step",
]


@dataclass(frozen=True, slots=True)
class StepSegment:
    """A run of identical DP-SGD steps.

    Attributes:
        noise_multiplier: Gaussian noise std divided by the clipping norm.
        sample_rate: Poisson sampling probability of each record per step.
        steps: Number of steps taken with these parameters.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int


def validate_step(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    """Checks step parameters and raises :class:`PrivacyConfigError` when they are out of range.

    Args:
        noise_multiplier: Must be finite and >= 0 (0 means no privacy: epsilon becomes infinite).
        sample_rate: Must lie in (0, 1].
        steps: Must be a positive integer.
    """
    if not (isinstance(noise_multiplier, int | float) and math.isfinite(noise_multiplier)):
        raise PrivacyConfigError(f"noise_multiplier must be finite, got {noise_multiplier!r}")
    if noise_multiplier < 0:
        raise PrivacyConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if not (isinstance(sample_rate, int | float) and 0.0 < sample_rate <= 1.0):
        raise PrivacyConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PrivacyConfigError(f"steps must be a positive integer, got {steps!r}")


def append_steps(
    history: tuple[StepSegment, ...], noise_multiplier: float, sample_rate: float, steps: int
) -> tuple[StepSegment, ...]:
    """Returns ``history`` with ``steps`` more steps, merged into the last segment when equal.

    Args:
        history: The segments so far.
        noise_multiplier: Noise multiplier of the new steps.
        sample_rate: Sample rate of the new steps.
        steps: How many steps.

    Returns:
        The new history (the input is not modified).
    """
    validate_step(noise_multiplier, sample_rate, steps)
    sigma, q = float(noise_multiplier), float(sample_rate)
    if history and history[-1].noise_multiplier == sigma and history[-1].sample_rate == q:
        last = history[-1]
        return (*history[:-1], StepSegment(sigma, q, last.steps + steps))
    return (*history, StepSegment(sigma, q, steps))


def history_to_state(history: tuple[StepSegment, ...]) -> list[list[float | int]]:
    """Serializes segments as JSON-ready ``[noise_multiplier, sample_rate, steps]`` triples."""
    return [[s.noise_multiplier, s.sample_rate, s.steps] for s in history]


def history_from_state(raw: Any) -> tuple[StepSegment, ...]:
    """Parses the output of :func:`history_to_state`, validating every field.

    Raises:
        AccountantStateError: When ``raw`` is not a list of valid triples.
    """
    if not isinstance(raw, list):
        raise AccountantStateError(f"history must be a list, got {type(raw).__name__}")
    segments: list[StepSegment] = []
    for index, item in enumerate(raw):
        if not (isinstance(item, list) and len(item) == 3):
            raise AccountantStateError(f"history[{index}] must be a 3-item list, got {item!r}")
        sigma, q, steps = item
        try:
            validate_step(sigma, q, steps)
        except PrivacyConfigError as exc:
            raise AccountantStateError(f"history[{index}] is invalid: {exc}") from exc
        segments.append(StepSegment(float(sigma), float(q), int(steps)))
    return tuple(segments)


def history_from_accountant_state(state: Any, mechanism: str) -> tuple[StepSegment, ...]:
    """Checks the envelope written by an accountant's ``to_state`` and parses its history.

    Args:
        state: The dict produced by ``to_state`` (after a JSON round trip or not).
        mechanism: The mechanism the caller expects (``"rdp"``, ``"prv"``).

    Raises:
        AccountantStateError: On a wrong mechanism, a wrong format or a bad history.
    """
    if not isinstance(state, dict):
        raise AccountantStateError(f"accountant state must be a dict, got {type(state).__name__}")
    found = state.get("mechanism")
    if found != mechanism:
        raise AccountantStateError(
            f"accountant state is for mechanism {found!r}, expected {mechanism!r}"
        )
    return history_from_state(state.get("history"))

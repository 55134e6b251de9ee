"""Errors specific to privacy accounting, all under :class:`fedsynth.errors.FedSynthError`.

``BudgetExceededError`` itself lives in :mod:`fedsynth.errors`; the classes here describe broken or
mismatched accountant state and site ledgers. None of them is retriable: a ledger that is missing,
corrupted or belongs to another site will not get better by trying again, and continuing would risk
spending privacy twice.
"""

from __future__ import annotations

from fedsynth.errors import ConfigError, FedSynthError

__all__ = [
    "AccountantStateError",
    "LedgerCorruptError",
    "LedgerError",
    "LedgerMismatchError",
    "LedgerMissingError",
    "PrivacyConfigError",
]


class PrivacyConfigError(ConfigError):
    """A privacy parameter is out of range (noise multiplier, sample rate, steps, budget)."""


class AccountantStateError(FedSynthError):
    """A serialized accountant state cannot be restored (wrong mechanism, bad fields)."""


class LedgerError(FedSynthError):
    """Root of the site ledger errors."""


class LedgerMissingError(LedgerError):
    """The ledger file is absent although the site says it has trained before."""


class LedgerCorruptError(LedgerError):
    """The ledger file cannot be parsed or its checksum does not match its content."""


class LedgerMismatchError(LedgerError):
    """The ledger belongs to another site, another delta, or is older than expected."""

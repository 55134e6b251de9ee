"""Differential privacy for fedsynth: DP-SGD wiring, accountants, budgets and the site ledger.

Sample-level DP at each site (Abadi et al. 2016, through Opacus); one accountant per site for its
whole life, persisted by :class:`SiteLedger`; a :class:`BudgetGuard` that refuses a step before it
would exceed the site's :class:`PrivacyBudget`.
"""

from __future__ import annotations

from fedsynth.privacy.accountant import (
    ACCOUNTANTS,
    Accountant,
    accountant_from_state,
    copy_accountant,
    make_accountant,
)
from fedsynth.privacy.budget import BudgetGuard, PrivacyBudget, noise_for_budget
from fedsynth.privacy.dpsgd import DPConfig, make_private
from fedsynth.privacy.errors import (
    AccountantStateError,
    LedgerCorruptError,
    LedgerError,
    LedgerMismatchError,
    LedgerMissingError,
    PrivacyConfigError,
)
from fedsynth.privacy.ledger import SiteLedger
from fedsynth.privacy.prv import PRVAccountant
from fedsynth.privacy.rdp import RDPAccountant

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "AccountantStateError",
    "BudgetGuard",
    "DPConfig",
    "LedgerCorruptError",
    "LedgerError",
    "LedgerMismatchError",
    "LedgerMissingError",
    "PRVAccountant",
    "PrivacyBudget",
    "PrivacyConfigError",
    "RDPAccountant",
    "SiteLedger",
    "accountant_from_state",
    "copy_accountant",
    "make_accountant",
    "make_private",
    "noise_for_budget",
]

"""Evaluation of synthetic data: fidelity, utility and privacy, and the report that shows them.

Typical use::

    specs = column_specs_from_frame(real, exclude={"id"})
    report = evaluate(train, synthetic, holdout, specs, threshold_target("num", ">0"))
    write_report(report, train, synthetic, "out/")
"""

from fedsynth.eval.columns import ColumnKind, ColumnSpec, column_specs_from_frame
from fedsynth.eval.fidelity import FidelityReport, measure_fidelity
from fedsynth.eval.privacy import PrivacyReport, measure_privacy
from fedsynth.eval.report import EvaluationReport, evaluate, split_holdout, write_report
from fedsynth.eval.utility import Target, UtilityReport, measure_utility, threshold_target

__all__ = [
    "ColumnKind",
    "ColumnSpec",
    "EvaluationReport",
    "FidelityReport",
    "PrivacyReport",
    "Target",
    "UtilityReport",
    "column_specs_from_frame",
    "evaluate",
    "measure_fidelity",
    "measure_privacy",
    "split_holdout",
    "threshold_target",
    "measure_utility",
    "write_report",
]

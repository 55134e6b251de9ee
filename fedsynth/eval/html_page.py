"""The evaluation report as one self-contained HTML page.

Everything the page shows is inline: CSS in a ``<style>`` element, figures as PNG data URIs. It
loads nothing from the network and links to no other file, so it can be mailed or archived as is.
Every number comes with a sentence that says what it means for a hospital analyst.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

import pandas as pd

from fedsynth.eval import plots
from fedsynth.eval.privacy import MAX_CLOSER_TO_TRAIN_SHARE, MAX_MEMBERSHIP_AUC
from fedsynth.eval.results import EvaluationReport

__all__ = ["render_html"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Arial,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;line-height:1.45;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}
.card{border:1px solid #ddd;border-radius:8px;padding:.7rem 1rem;min-width:200px;flex:1}
.card .v{font-size:1.7rem;font-weight:600}.card .l{color:#555;font-size:.9rem}
.good{color:#1a7f37}.fair{color:#9a6700}.bad{color:#cf222e}.muted{color:#777}
table{border-collapse:collapse;font-size:.9rem}
td,th{border-bottom:1px solid #eee;padding:.25rem .6rem;text-align:right}
td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:.5rem}.grid img{border:1px solid #eee}
.explain{color:#444;font-size:.92rem;max-width:900px}
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _grade(value: float | None, good: float, fair: float) -> str:
    if value is None:
        return "muted"
    return "good" if value >= good else "fair" if value >= fair else "bad"


def _card(label: str, value: str, css: str, note: str) -> str:
    return (
        f'<div class="card"><div class="l">{_e(label)}</div>'
        f'<div class="v {css}">{_e(value)}</div><div class="l">{_e(note)}</div></div>'
    )


def _explain(text: str) -> str:
    return f'<p class="explain">{_e(text)}</p>'


def _img(uri: str | None, alt: str) -> str:
    return "" if uri is None else f'<img src="{uri}" alt="{_e(alt)}">'


def _fidelity_section(report: EvaluationReport, real: pd.DataFrame, synth: pd.DataFrame) -> str:
    fid = report.fidelity
    cards = "".join([
        _card("Overall quality", _num(fid.quality_score), _grade(fid.quality_score, 0.85, 0.7),
              "mean of column shapes and pair trends"),
        _card("Column shapes", _num(fid.column_shapes_score),
              _grade(fid.column_shapes_score, 0.85, 0.7), "each column on its own"),
        _card("Pair trends", _num(fid.pair_trends_score),
              _grade(fid.pair_trends_score, 0.85, 0.7), "relations between two columns"),
        _card("Missingness", _num(fid.missingness_score),
              _grade(fid.missingness_score, 0.95, 0.85), "missing-value rates kept"),
        _card("SDMetrics quality", _num(fid.sdmetrics_quality),
              _grade(fid.sdmetrics_quality, 0.85, 0.7), fid.sdmetrics_note),
    ])
    rows = "".join(
        f"<tr><td>{_e(c.column)}</td><td>{_e(c.kind)}</td><td>{_e(c.metric)}</td>"
        f'<td class="{_grade(c.score, 0.9, 0.75)}">{_num(c.score)}</td>'
        f"<td>{c.missing_real:.1%}</td><td>{c.missing_synthetic:.1%}</td></tr>"
        for c in fid.column_shapes
    )
    scores = {c.column: c.score for c in fid.column_shapes}
    marginals = "".join(
        _img(plots.marginal_plot(s, real[s.name], synth[s.name], scores[s.name]), s.name)
        for s in report.columns
    )
    return "".join([
        "<h2>1. Fidelity: does the synthetic data look like the real data?</h2>",
        f'<div class="cards">{cards}</div>',
        _explain(
            "All scores run from 0 (nothing alike) to 1 (identical). Column shapes compares each "
            "column's distribution: for numbers 1 minus the Kolmogorov-Smirnov distance (the "
            "largest gap between the two cumulative distributions), for categories 1 minus the "
            "total variation distance (half the summed difference of category shares). Pair trends "
            "compares how columns move together: for two numeric columns the Pearson correlations, "
            "for other pairs the shares of each combination of values. Overall quality is the mean "
            "of the two, the same definition as the SDMetrics QualityReport. Above 0.85 is usually "
            "considered good. Missing values are left out of column shapes and compared "
            "separately. The SDMetrics score, where shown, comes from the SDMetrics library; its "
            "recent versions count only strongly related pairs, so it can differ from ours."
        ),
        "<h3>Per column</h3><table><tr><th>column</th><th>kind</th><th>metric</th><th>score</th>"
        f"<th>missing (real)</th><th>missing (synthetic)</th></tr>{rows}</table>",
        "<h3>Distributions, real (blue) against synthetic (orange)</h3>",
        f'<div class="grid">{marginals}</div>',
        "<h3>Relations between columns</h3>",
        _explain(
            "Left: real minus synthetic correlation for each pair of numeric columns; white means "
            "the relation is reproduced, red or blue that the synthetic data over- or understates "
            "it. Right: how much of each pair's relation is lost (1 minus the pair trend score)."
        ),
        '<div class="grid">',
        _img(plots.correlation_difference_plot(real, synth, report.columns), "correlation"),
        _img(plots.pair_trend_plot(fid), "pair trends"),
        "</div>",
    ])


def _utility_section(report: EvaluationReport) -> str:
    head = "<h2>2. Utility: can the synthetic data stand in for the real data?</h2>"
    util = report.utility
    if util is None:
        return head + _explain(report.utility_note)
    cards = "".join([
        _card("AUC, trained on real", _num(util.trtr.auc), "muted", "the yardstick (TRTR)"),
        _card("AUC, trained on synthetic", _num(util.tstr.auc), "muted", "TSTR"),
        _card("AUC ratio", _num(util.auc_ratio), _grade(util.auc_ratio, 0.9, 0.8),
              "synthetic / real; 1 = as useful"),
        _card("F1, real / synthetic", f"{util.trtr.f1:.3f} / {util.tstr.f1:.3f}", "muted",
              f"F1 ratio {_num(util.f1_ratio)}"),
    ])
    return head + f'<div class="cards">{cards}</div>' + _explain(
        f"The same classifier (gradient-boosted trees) is trained to predict '{util.target}' "
        f"once on the real training rows and once on the synthetic rows, and both are tested on "
        f"{util.n_test} real patients that neither the generator nor the classifiers saw "
        f"({util.positive_rate_test:.0%} positive). AUC is the chance that a random positive "
        "patient is ranked above a random negative one (0.5 = guessing, 1 = perfect); F1 balances "
        "precision and recall at a 50% threshold. A ratio near 1 means a study run on the "
        "synthetic data would reach a model about as good as one run on the real data."
    )


def _privacy_section(report: EvaluationReport) -> str:
    priv = report.privacy
    dcr_css = "good" if priv.dcr_passed else "bad"
    mia_css = "good" if priv.membership_passed else "bad"
    cards = "".join([
        _card("Closer to training rows", _num(priv.closer_to_train_share), dcr_css,
              f"{'pass' if priv.dcr_passed else 'FAIL'}: 0.5 expected, "
              f"fails above {MAX_CLOSER_TO_TRAIN_SHARE}"),
        _card("Membership inference AUC", _num(priv.membership_auc), mia_css,
              f"{'pass' if priv.membership_passed else 'FAIL'}: 0.5 = attacker guesses, "
              f"fails above {MAX_MEMBERSHIP_AUC}"),
        _card("Exact copies of training rows", f"{priv.exact_copy_share:.1%}",
              "good" if priv.exact_copy_share == 0 else "bad", "share of synthetic rows"),
        _card("DCR 5th percentile", _num(priv.dcr_train_p5),
              "muted", f"to training; to held-out {_num(priv.dcr_holdout_p5)}, "
              f"real to real {_num(priv.real_to_real_p5)}"),
    ])
    return "".join([
        "<h2>3. Privacy: does the synthetic data reveal real patients?</h2>",
        f'<div class="cards">{cards}</div>',
        _explain(
            "For every synthetic row we find the most similar real patient (distance to closest "
            "record, DCR: 0 = identical, 1 = different in every column), once among the patients "
            "the model was trained on and once among real patients it never saw. If the model "
            "memorised patients, synthetic rows sit closer to its training patients: the "
            "'closer to training rows' share, adjusted for the sizes of the two groups, is then "
            "well above 0.5 and the two histograms below separate. The membership inference AUC "
            "measures how well an attacker holding only the synthetic data can tell whether a "
            "given patient was in the training data, by how close a synthetic row comes to them. "
            "The 5th percentile DCR shows how close the nearest synthetic rows come, beside how "
            "close real patients are to each other."
        ),
        _img(plots.dcr_plot(priv.histogram), "distance to closest record"),
    ])


def _lines(items: Iterable[str]) -> str:
    return "".join(f"<li>{_e(item)}</li>" for item in items)


def render_html(report: EvaluationReport, real: pd.DataFrame, synthetic: pd.DataFrame) -> str:
    """Renders the full page.

    Args:
        report: The evaluation result.
        real: Real training rows, for the distribution and correlation plots.
        synthetic: Synthetic rows.

    Returns:
        The HTML document as a string.
    """
    facts = [
        f"{report.n_train} real training rows, {report.n_synthetic} synthetic rows, "
        f"{report.n_holdout} real held-out rows; {len(report.columns)} columns compared.",
        *report.notes,
    ]
    body = "".join([
        "<h1>Synthetic data evaluation</h1>",
        f"<ul>{_lines(facts)}</ul>",
        _fidelity_section(report, real, synthetic),
        _utility_section(report),
        _privacy_section(report),
    ])
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>Synthetic data evaluation</title>"
        f"<style>{_CSS}</style></head><body>{body}</body></html>\n"
    )

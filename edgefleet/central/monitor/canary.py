"""Judging a canary: is the canary cohort worse than the stable one, good, or not known yet?

Each model is measured against its own reference profile. :func:`judge_canary` runs one
named step per kind of evidence; each returns its reasons to call the canary worse:

- :func:`_error_reasons`: the canary's error rate is above ``rules.max_error_rate`` beyond
  noise (Wilson lower bound), or above the stable cohort's by more than ``error_margin``
  with the intervals apart;
- :func:`_score_reasons`: the canary's live scores drift from its own holdout scores (the
  score-drift rule) by ``drift_margin`` more, in JS distance, than the stable model's do;
- :func:`_input_reasons`: the canary's largest feature drift exceeds the stable model's by
  ``drift_margin`` and crosses the feature-drift rule (the candidate was trained on data
  unlike what the fleet sees);
- :func:`_auroc_reasons`, where labels came back (at least ``rules.min_labels`` per cohort):
  the canary's AUROC is lower by more than ``auroc_margin`` *and* by more than twice the
  standard error of the difference (Hanley and McNeil), so that a few hundred labels do not
  roll back a good model by chance;
- :func:`_task_reasons`, for a multi-class or regression model (which has no AUROC of one
  score): its judging metric (log loss, RMSE: :func:`.task_measures.judging_metric`) is
  worse on the canary by more than ``metric_margin`` of the stable value *and* by more than
  twice the standard error of the difference (from the sketches' sums of squares).

Any reason makes it "worse"; else :func:`_shortfalls` says what evidence is still missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edgefleet.central.monitor.alerts import AlertRules
from edgefleet.central.monitor.drift import FeatureDrift
from edgefleet.central.monitor.measures import Measures
from edgefleet.central.monitor.task_measures import judging_metric
from edgefleet.edge.profile import QUANTILE_BINS

Verdict = Literal["worse", "good", "insufficient"]


@dataclass(frozen=True)
class CanaryVerdict:
    """What :func:`judge_canary` concluded, why, and on which numbers."""

    verdict: Verdict
    reasons: tuple[str, ...]
    evidence: Mapping[str, Any]


@dataclass(frozen=True)
class CanaryMargins:
    """How much worse than stable the canary may look before it counts as worse."""

    min_reports: int = 5
    auroc_margin: float = 0.02
    error_margin: float = 0.005
    drift_margin: float = 0.05
    require_labels: bool = False
    metric_margin: float = 0.05
    """A multi-class or regression canary's judging metric may be this share worse."""


def auroc_standard_error(auroc: float, positives: int, negatives: int) -> float:
    """Hanley and McNeil's (1982) standard error of an AUROC from its class counts.

    >>> round(auroc_standard_error(0.85, 100, 300), 4)
    0.0254
    """
    if positives < 1 or negatives < 1:
        return math.inf
    a = auroc
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    variance = (a * (1 - a) + (positives - 1) * (q1 - a * a) + (negatives - 1) * (q2 - a * a)) / (
        positives * negatives
    )
    return math.sqrt(max(variance, 0.0))


def judge_canary(
    canary: Measures | None,
    stable: Measures | None,
    *,
    rules: AlertRules = AlertRules(),  # noqa: B008 - frozen, so one shared default is safe
    min_reports: int = 5,
    auroc_margin: float = 0.02,
    error_margin: float = 0.005,
    drift_margin: float = 0.05,
    require_labels: bool = False,
) -> CanaryVerdict:
    """Is the canary cohort worse than the stable one, good, or not known yet? (module
    docstring). ``stable`` may be None (every device in the canary): the canary is then
    judged against the absolute rules alone."""
    margins = CanaryMargins(min_reports, auroc_margin, error_margin, drift_margin, require_labels)
    evidence = _base_evidence(canary, stable, rules, margins)
    if canary is None:
        return CanaryVerdict("insufficient", ("no canary reports yet",), evidence)
    worse = [
        *_error_reasons(canary, stable, rules, margins),
        *_score_reasons(canary, stable, rules, margins, evidence),
        *_input_reasons(canary, stable, rules, margins, evidence),
    ]
    labels_compared, auroc_worse = _auroc_reasons(canary, stable, rules, margins, evidence)
    worse.extend(auroc_worse)
    task_compared, task_worse = _task_reasons(canary, stable, rules, margins, evidence)
    labels_compared = labels_compared or task_compared
    worse.extend(task_worse)
    if worse:
        return CanaryVerdict("worse", tuple(worse), evidence)
    short = _shortfalls(canary, rules, margins, labels_compared)
    if short:
        return CanaryVerdict("insufficient", tuple(short), evidence)
    reasons = ["no worse on errors, score drift and input drift"]
    if labels_compared:
        metric = judging_metric(canary.task_kind)[0]
        reasons.append(
            "AUROC not significantly lower"
            if metric == "auroc"
            else f"{metric} not significantly worse"
        )
    return CanaryVerdict("good", tuple(reasons), evidence)


def _base_evidence(
    canary: Measures | None, stable: Measures | None, rules: AlertRules, margins: CanaryMargins
) -> dict[str, Any]:
    return {
        "canary": None if canary is None else canary.summary(),
        "stable": None if stable is None else stable.summary(),
        "rules": {
            "min_reports": margins.min_reports,
            "min_scored": rules.feature_min_count,
            "min_labels": rules.min_labels,
            "auroc_margin": margins.auroc_margin,
            "error_margin": margins.error_margin,
            "drift_margin": margins.drift_margin,
            "require_labels": margins.require_labels,
        },
    }


def _error_reasons(
    canary: Measures, stable: Measures | None, rules: AlertRules, margins: CanaryMargins
) -> list[str]:
    errors = canary.errors
    if errors.denominator < rules.error_min_records:
        return []
    if errors.low > rules.max_error_rate:
        return [
            f"canary error rate {errors.value:.2%} is above {rules.max_error_rate:.2%} "
            f"(95 % lower bound {errors.low:.2%})"
        ]
    if (
        stable is not None
        and errors.low > stable.errors.high
        and errors.value - stable.errors.value > margins.error_margin
    ):
        return [f"canary error rate {errors.value:.2%} above stable {stable.errors.value:.2%}"]
    return []


def _score_reasons(
    canary: Measures,
    stable: Measures | None,
    rules: AlertRules,
    margins: CanaryMargins,
    evidence: dict[str, Any],
) -> list[str]:
    score = canary.score
    stable_js = 0.0 if stable is None or stable.score is None else js_beyond_noise(stable.score)
    if score is None or score.current_n < rules.score_min_count:
        return []
    js = js_beyond_noise(score)
    evidence["score_js"] = {"canary": score.js, "stable": stable_js, "canary_beyond_noise": js}
    drifted = js >= rules.score_js or score.psi >= rules.score_psi
    if drifted and js > stable_js + margins.drift_margin:
        return [
            f"canary scores drift from its holdout (JS {score.js:.3f}, {js:.3f} beyond sampling "
            f"noise) more than stable's ({stable_js:.3f}) by over {margins.drift_margin}"
        ]
    return []


def js_beyond_noise(drift: FeatureDrift) -> float:
    """The score drift's JS distance less what sampling alone gives two histograms of its
    counts. Without drift, two samples of n and m scores merged into k groups (``score_drift``
    merges into :data:`QUANTILE_BINS`) differ by a JS divergence of (k - 1)(1/n + 1/m) /
    (8 ln 2) on average (bits; the chi-square term of its expansion): 0.066 in distance at a
    canary's 600 scores against a 1,000-row holdout, 0.094 at the 95th percentile (simulated),
    a hair under the 0.1 threshold, so a young canary was rolled back for its noise now and
    then. That expected divergence is taken off before the threshold and the comparison
    with stable; a real drift is barely changed (JS 0.3 stays 0.29)."""
    if not drift.current_n or not drift.reference_n or not math.isfinite(drift.js):
        return 0.0
    noise = (QUANTILE_BINS - 1) / (8 * math.log(2)) * (1 / drift.current_n + 1 / drift.reference_n)
    return math.sqrt(max(0.0, drift.js**2 - noise))


def _input_reasons(
    canary: Measures,
    stable: Measures | None,
    rules: AlertRules,
    margins: CanaryMargins,
    evidence: dict[str, Any],
) -> list[str]:
    canary_js = canary.max_feature_js()
    stable_js = 0.0 if stable is None else stable.max_feature_js()
    evidence["max_feature_js"] = {"canary": canary_js, "stable": stable_js}
    over = [
        f.feature
        for f in canary.features
        if min(f.reference_n, f.current_n) >= rules.feature_min_count
        and (f.js >= rules.feature_js or f.psi >= rules.feature_psi)
    ]
    if over and canary_js > stable_js + margins.drift_margin:
        return [
            f"canary inputs drift from its training data more (max JS {canary_js:.3f}, "
            f"{', '.join(over)}) than stable's ({stable_js:.3f})"
        ]
    return []


def _auroc_reasons(
    canary: Measures,
    stable: Measures | None,
    rules: AlertRules,
    margins: CanaryMargins,
    evidence: dict[str, Any],
) -> tuple[bool, list[str]]:
    """(whether labels were compared, the reasons to call the canary worse)."""
    c_perf, s_perf = canary.performance, None if stable is None else stable.performance
    if c_perf is None or s_perf is None or min(c_perf.labelled, s_perf.labelled) < rules.min_labels:
        return False, []
    difference = s_perf.auroc - c_perf.auroc
    noise = math.hypot(
        auroc_standard_error(c_perf.auroc, c_perf.positives, c_perf.labelled - c_perf.positives),
        auroc_standard_error(s_perf.auroc, s_perf.positives, s_perf.labelled - s_perf.positives),
    )
    evidence["auroc"] = {
        "canary": c_perf.auroc,
        "stable": s_perf.auroc,
        "difference": difference,
        "standard_error": noise,
        "canary_labels": c_perf.labelled,
        "stable_labels": s_perf.labelled,
    }
    if difference > margins.auroc_margin and difference > 2 * noise:
        return True, [
            f"canary AUROC {c_perf.auroc:.3f} below stable {s_perf.auroc:.3f} by "
            f"{difference:.3f} (> {margins.auroc_margin} and > 2 x standard error {noise:.3f})"
        ]
    return True, []


def _task_reasons(
    canary: Measures,
    stable: Measures | None,
    rules: AlertRules,
    margins: CanaryMargins,
    evidence: dict[str, Any],
) -> tuple[bool, list[str]]:
    """(whether labels were compared, the reasons to call the canary worse) on the judging
    metric of a multi-class or regression model."""
    ours, theirs = canary.task, None if stable is None else stable.task
    if ours is None or theirs is None or ours.performance is None or theirs.performance is None:
        return False, []
    if min(ours.labelled, theirs.labelled) < rules.min_labels or ours.task != theirs.task:
        return False, []
    metric, lower_is_better = judging_metric(ours.task)
    c_value, s_value = ours.metrics()[metric], theirs.metrics()[metric]
    worse_by = c_value - s_value if lower_is_better else s_value - c_value
    noise = math.hypot(
        ours.performance.standard_error(metric), theirs.performance.standard_error(metric)
    )
    evidence[metric] = {
        "canary": c_value,
        "stable": s_value,
        "difference": worse_by,
        "standard_error": noise,
        "canary_labels": ours.labelled,
        "stable_labels": theirs.labelled,
    }
    if worse_by > margins.metric_margin * abs(s_value) and worse_by > 2 * noise:
        return True, [
            f"canary {metric} {c_value:.4g} worse than stable {s_value:.4g} by "
            f"{worse_by:.4g} (> {margins.metric_margin:.0%} and > 2 x standard error "
            f"{noise:.3g})"
        ]
    return True, []


def _shortfalls(
    canary: Measures, rules: AlertRules, margins: CanaryMargins, labels_compared: bool
) -> list[str]:
    short: list[str] = []
    if canary.reports < margins.min_reports:
        short.append(f"{canary.reports} canary reports of {margins.min_reports}")
    if canary.scored < rules.feature_min_count:
        short.append(f"{canary.scored} canary records scored of {rules.feature_min_count}")
    if margins.require_labels and not labels_compared:
        short.append(f"fewer than {rules.min_labels} labels in a cohort")
    return short

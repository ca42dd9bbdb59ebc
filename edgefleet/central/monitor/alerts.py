"""Alert rules: thresholds on :class:`~edgefleet.central.monitor.measures.Measures`, read from a
TOML file, and :func:`evaluate`, which turns one scope's measures into alert records that
carry the numbers that triggered them.

Every threshold is an effect size (how far, how much), never a p-value, with a minimum count
below which a rule stays silent: a fleet reports hundreds of thousands of records, and at
that size every irrelevant wobble is "significant" (see
:mod:`edgefleet.central.monitor.drift`).

The rules and their defaults (``alerts.example.toml`` beside this module spells them out):

=====================  ==========================================================  ===========
rule                   fires when                                                  default
=====================  ==========================================================  ===========
feature_drift          a feature's JS distance >= js or PSI >= psi                 0.1 / 0.2
                       (at least ``min_count`` values, reference and current)      500
score_drift            the same on the score histogram (10 quantile groups)        0.1 / 0.2
auroc_drop             manifest AUROC - AUROC of the labelled scores >= drop       0.05
                       (at least ``min_labels`` labels)                            1000
calibration_gap        labelled records: share of positives - mean predicted       0.05
                       probability, changed by >= gap from the same on the holdout
                       (at least ``min_labels`` labels)
expected_auroc_drop    label-free: expected AUROC on the holdout's scores minus    0.05
                       the expected AUROC now >= drop (at least score min_count)
error_rate             failed / (scored + failed) above max_rate, beyond noise:    0.02
                       the Wilson 95 % lower bound is above it (``min_records``)   200
latency                p95 scoring latency per call above p95_ms (``min_calls``)   100 ms, 100
demographic_parity     segments: largest minus smallest share predicted positive   0.1
                       (levels of at least ``min_count`` records)                  200
equalized_odds         segments: the larger spread of TPR and of FPR (labels)      0.1
=====================  ==========================================================  ===========

A multi-class or regression model has its own rules instead of the binary quality ones
(accuracy, macro OvR AUROC and log loss; RMSE, MAE and R² against the holdout's, and
prediction drift): :mod:`edgefleet.central.monitor.task_alerts`.

Why a lower bound for the error rate: the monitor checks every device every window, and a
device that scored 200 records with 5 failures (2.5 %) is well within the noise of a 1 %
error rate. The threshold is still the effect size; the interval only keeps small counts
from crossing it by chance. AUROC needs many labels for the same reason: with 1000 labels
(about 230 positives) its standard error is near 0.017, so a 0.05 drop is three of them.

Why a calibration rule beside the AUROC one: concept drift (the same inputs now mean another
outcome) leaves inputs and scores as they were, so only labels can show it, and it shows far
more in calibration than in ranking. In the ``competitor_offer`` scenario the AUROC of the
churn models falls by only 0.035 to 0.045, under its threshold, while the churn rate among
labelled records rises from the predicted 0.24 to 0.38: a gap of 0.14. Covariate shift moves
the gap little (0.01 to 0.035 in the other scenarios, random forests being the worst, since
trees do not extrapolate), and its noise with 1000 labels is about 0.013.

>>> rules = AlertRules.from_dict({"feature_drift": {"js": 0.15}, "latency": {"p95_ms": 50}})
>>> rules.feature_js, rules.feature_psi, rules.latency_p95_ms
(0.15, 0.2, 50.0)
"""

from __future__ import annotations

import math
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgefleet.central.monitor.drift import DriftDetector, FeatureDrift
from edgefleet.central.monitor.fairness import differences
from edgefleet.central.monitor.measures import SCOPE_LEVELS, Measures
from edgefleet.central.monitor.store import AlertRecord
from edgefleet.central.monitor.task_alerts import TASK_RULES, describe_task_alert, task_rules
from edgefleet.errors import InputError

RULES = (
    "feature_drift",
    "score_drift",
    "auroc_drop",
    "calibration_gap",
    "expected_auroc_drop",
    "error_rate",
    "latency",
    "demographic_parity",
    "equalized_odds",
    *TASK_RULES,
)
"""Rule names, as :attr:`AlertRecord.rule` holds them."""

RETRAIN_RULES = frozenset(
    {
        "feature_drift",
        "score_drift",
        "auroc_drop",
        "calibration_gap",
        "expected_auroc_drop",
        *TASK_RULES,
    }
)
"""Rules a new model can answer. Errors and latency are the runtime's or the device's
problem: retraining would not fix them."""

EXAMPLE_FILE = Path(__file__).with_name("alerts.example.toml")

# TOML section and key -> field of AlertRules.
_TOML_KEYS: dict[tuple[str, str], str] = {
    ("feature_drift", "psi"): "feature_psi",
    ("feature_drift", "js"): "feature_js",
    ("feature_drift", "min_count"): "feature_min_count",
    ("score_drift", "psi"): "score_psi",
    ("score_drift", "js"): "score_js",
    ("score_drift", "min_count"): "score_min_count",
    ("performance", "auroc_drop"): "auroc_drop",
    ("performance", "calibration_gap"): "calibration_gap",
    ("performance", "min_labels"): "min_labels",
    ("performance", "expected_auroc_drop"): "expected_auroc_drop",
    ("performance", "accuracy_drop"): "accuracy_drop",
    ("performance", "log_loss_rise"): "log_loss_rise",
    ("performance", "error_rise"): "error_rise",
    ("performance", "r2_drop"): "r2_drop",
    ("errors", "max_rate"): "max_error_rate",
    ("errors", "min_records"): "error_min_records",
    ("latency", "p95_ms"): "latency_p95_ms",
    ("latency", "min_calls"): "latency_min_calls",
    ("fairness", "dp_difference"): "fairness_dp_difference",
    ("fairness", "eo_difference"): "fairness_eo_difference",
    ("fairness", "min_count"): "fairness_min_count",
    ("scopes", "levels"): "levels",
}
_COUNTS = frozenset(
    {
        "feature_min_count",
        "score_min_count",
        "min_labels",
        "error_min_records",
        "latency_min_calls",
        "fairness_min_count",
    }
)


@dataclass(frozen=True)
class AlertRules:
    """Thresholds of every rule (see the module docstring); validated on creation."""

    feature_psi: float = 0.2
    feature_js: float = 0.1
    feature_min_count: int = 500
    score_psi: float = 0.2
    score_js: float = 0.1
    score_min_count: int = 500
    auroc_drop: float = 0.05
    calibration_gap: float = 0.05
    min_labels: int = 1000
    expected_auroc_drop: float = 0.05
    accuracy_drop: float = 0.05
    log_loss_rise: float = 0.2
    error_rise: float = 0.2
    r2_drop: float = 0.1
    max_error_rate: float = 0.02
    error_min_records: int = 200
    latency_p95_ms: float = 100.0
    latency_min_calls: int = 100
    fairness_dp_difference: float = 0.1
    fairness_eo_difference: float = 0.1
    fairness_min_count: int = 200
    levels: tuple[str, ...] = SCOPE_LEVELS

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "levels":
                continue
            if item.name in _COUNTS:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise InputError(f"alert rule {item.name} must be a whole number >= 1")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"alert rule {item.name} must be a number, not {value!r}")
            elif not (math.isfinite(value) and value > 0):
                raise InputError(f"alert rule {item.name} must be a finite number > 0")
            else:
                object.__setattr__(self, item.name, float(value))
        for name in (
            "feature_js",
            "score_js",
            "auroc_drop",
            "calibration_gap",
            "expected_auroc_drop",
            "accuracy_drop",
            "fairness_dp_difference",
            "fairness_eo_difference",
        ):
            if getattr(self, name) > 1:
                raise InputError(f"alert rule {name} is at most 1")
        if self.max_error_rate >= 1:
            raise InputError("alert rule max_error_rate must be below 1")
        levels = self.levels
        if isinstance(levels, str) or not all(isinstance(level, str) for level in levels):
            raise InputError(f"scopes.levels must be a list of {', '.join(SCOPE_LEVELS)}")
        unknown = sorted(set(levels) - set(SCOPE_LEVELS))
        if unknown or not levels:
            raise InputError(
                f"scopes.levels {list(levels)!r}: choose among {', '.join(SCOPE_LEVELS)}"
            )
        object.__setattr__(self, "levels", tuple(levels))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "alert rules") -> AlertRules:
        """Rules from the TOML layout (sections of keys); what is absent keeps its default,
        anything unknown is an error (a misspelt key would otherwise silently do nothing)."""
        values: dict[str, Any] = {}
        for section, table in data.items():
            if not isinstance(table, Mapping):
                raise InputError(f"{source}: [{section}] must be a table of keys")
            for key, value in table.items():
                name = _TOML_KEYS.get((section, key))
                if name is None:
                    known = ", ".join(f"{s}.{k}" for s, k in _TOML_KEYS)
                    raise InputError(f"{source}: unknown setting {section}.{key}; known: {known}")
                values[name] = tuple(value) if isinstance(value, list) else value
        try:
            return cls(**values)
        except InputError as error:
            raise InputError(f"{source}: {error}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> AlertRules:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path}: no such alert rules file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: not a valid TOML file: {error}") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The TOML layout of these rules."""
        out: dict[str, dict[str, Any]] = {}
        for (section, key), name in _TOML_KEYS.items():
            value = getattr(self, name)
            out.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
        return out

    def feature_detector(self) -> DriftDetector:
        return DriftDetector(self.feature_psi, self.feature_js, self.feature_min_count)

    def score_detector(self) -> DriftDetector:
        return DriftDetector(self.score_psi, self.score_js, self.score_min_count)


def evaluate(
    measures: Measures, scope: str, rules: AlertRules, *, now: float | None = None
) -> list[AlertRecord]:
    """The alerts ``measures`` of ``scope`` raise under ``rules`` (unsaved: ``id`` None).

    The thresholds are applied to the numbers themselves, not to the verdicts stored in
    ``measures``, so measures taken with any detector are judged by these rules.
    ``evidence`` holds the numbers behind each alert: the statistic, its threshold, the
    counts, the window and the model version. One named step per rule.
    """
    add = _Collector(measures, scope, time.time() if now is None else now)
    for drift in measures.features:
        _drift_rule(drift, "feature_drift", rules.feature_detector(), add)
    if measures.score is not None:
        _drift_rule(measures.score, "score_drift", rules.score_detector(), add)
    if measures.task is not None and measures.task.prediction_drift is not None:
        drift = measures.task.prediction_drift
        _drift_rule(drift, "prediction_drift", rules.score_detector(), add)
    for step in _RULE_STEPS:
        step(measures, rules, add)
    return add.alerts


class _Collector:
    """Turns a rule's finding into an :class:`AlertRecord` with the scope's context."""

    def __init__(self, measures: Measures, scope: str, created: float) -> None:
        self.measures, self.scope, self.created = measures, scope, created
        self.alerts: list[AlertRecord] = []
        self.context = {
            "model_name": measures.model_name,
            "model_version": measures.model_version,
            "window": [measures.window_start, measures.window_end],
            "reports": measures.reports,
            "devices": measures.devices,
        }

    def __call__(
        self, rule: str, subject: str, value: float, threshold: float, **numbers: Any
    ) -> None:
        self.alerts.append(
            AlertRecord(
                id=None,
                fleet=self.measures.fleet,
                created=self.created,
                rule=rule,
                scope=self.scope,
                subject=subject,
                value=float(value),
                threshold=float(threshold),
                evidence=_finite({**self.context, **numbers}),
                status="open",
            )
        )


def _auroc_rule(measures: Measures, rules: AlertRules, add: Callable[..., None]) -> None:
    performance = measures.performance
    if (
        performance is None
        or performance.labelled < rules.min_labels
        or not math.isfinite(measures.reference_auroc)
    ):
        return
    drop = measures.reference_auroc - performance.auroc
    if drop >= rules.auroc_drop:
        add(
            "auroc_drop",
            "auroc",
            drop,
            rules.auroc_drop,
            auroc=performance.auroc,
            auroc_bound=performance.auroc_bound,
            reference_auroc=measures.reference_auroc,
            average_precision=performance.average_precision,
            reference_average_precision=measures.reference_average_precision,
            labelled=performance.labelled,
            positives=performance.positives,
            min_labels=rules.min_labels,
        )


def _calibration_rule(measures: Measures, rules: AlertRules, add: Callable[..., None]) -> None:
    performance = measures.performance
    if performance is None or performance.labelled < rules.min_labels:
        return
    # Against the holdout's own gap: a model miscalibrated from the start is judged on
    # how its calibration changed, not on what it always was.
    reference = measures.reference_performance
    baseline_gap = 0.0 if reference is None else reference.calibration_gap
    change = performance.calibration_gap - baseline_gap
    if abs(change) >= rules.calibration_gap:
        add(
            "calibration_gap",
            "positive_rate",
            abs(change),
            rules.calibration_gap,
            positive_rate=performance.positive_rate,
            mean_score=performance.mean_score,
            gap=performance.calibration_gap,
            reference_gap=baseline_gap,
            labelled=performance.labelled,
            positives=performance.positives,
            min_labels=rules.min_labels,
        )


def _expected_auroc_rule(measures: Measures, rules: AlertRules, add: Callable[..., None]) -> None:
    expected, baseline = measures.expected, measures.reference_expected
    if expected is None or baseline is None or expected.n < rules.score_min_count:
        return
    drop = baseline.auroc - expected.auroc
    if drop >= rules.expected_auroc_drop:
        add(
            "expected_auroc_drop",
            "expected_auroc",
            drop,
            rules.expected_auroc_drop,
            expected_auroc=expected.auroc,
            reference_expected_auroc=baseline.auroc,
            expected_positive_rate=expected.positive_rate,
            reference_positive_rate=baseline.positive_rate,
            scored=expected.n,
            min_count=rules.score_min_count,
        )


def _error_rule(measures: Measures, rules: AlertRules, add: Callable[..., None]) -> None:
    errors = measures.errors
    if errors.denominator >= rules.error_min_records and errors.low > rules.max_error_rate:
        add(
            "error_rate",
            "errors",
            errors.value,
            rules.max_error_rate,
            failed=errors.numerator,
            records=errors.denominator,
            low=errors.low,
            high=errors.high,
            confidence=errors.confidence,
            min_records=rules.error_min_records,
        )


def _latency_rule(measures: Measures, rules: AlertRules, add: Callable[..., None]) -> None:
    latency = measures.latency
    if latency.calls >= rules.latency_min_calls and latency.p95_ms > rules.latency_p95_ms:
        add(
            "latency",
            "p95_ms",
            latency.p95_ms,
            rules.latency_p95_ms,
            p50_ms=latency.p50_ms,
            calls=latency.calls,
            min_calls=rules.latency_min_calls,
        )


def _fairness_rules(measures: Measures, rules: AlertRules, add: Callable[..., None]) -> None:
    for feature in measures.fairness:
        dp, eo = differences(feature.levels, rules.fairness_min_count)
        evidence = {
            "decision_threshold": feature.threshold,
            "min_count": rules.fairness_min_count,
            "levels": [level.to_dict() for level in feature.levels],
        }
        if math.isfinite(dp) and dp >= rules.fairness_dp_difference:
            add("demographic_parity", feature.feature, dp, rules.fairness_dp_difference, **evidence)
        if math.isfinite(eo) and eo >= rules.fairness_eo_difference:
            add("equalized_odds", feature.feature, eo, rules.fairness_eo_difference, **evidence)


_RULE_STEPS: tuple[Callable[[Measures, AlertRules, Callable[..., None]], None], ...] = (
    _auroc_rule,
    _calibration_rule,
    _expected_auroc_rule,
    _error_rule,
    _latency_rule,
    _fairness_rules,
    task_rules,
)


def evaluate_all(
    measured: Sequence[tuple[str, Measures]], rules: AlertRules, *, now: float | None = None
) -> list[AlertRecord]:
    """:func:`evaluate` over several scopes; scopes of levels outside ``rules.levels`` are
    left out."""
    alerts: list[AlertRecord] = []
    for scope, measures in measured:
        if scope.split(":", 1)[0] in rules.levels:
            alerts.extend(evaluate(measures, scope, rules, now=now))
    return alerts


def describe(alert: AlertRecord) -> str:
    """One line for humans: what, where, the number and its threshold."""
    evidence = alert.evidence
    version = evidence.get("model_version", "?")
    if alert.rule in ("feature_drift", "score_drift", "prediction_drift"):
        detail = (
            f"JS {_num(evidence.get('js'))} (>= {_num(evidence.get('js_threshold'))}?), "
            f"PSI {_num(evidence.get('psi'))} (>= {_num(evidence.get('psi_threshold'))}?), "
            f"n {evidence.get('current_n')}"
        )
    elif alert.rule in TASK_RULES or evidence.get("task") is not None:
        detail = describe_task_alert(alert.rule, alert.value, alert.threshold, evidence)
    elif alert.rule == "auroc_drop":
        detail = (
            f"AUROC {_num(evidence.get('auroc'))} vs {_num(evidence.get('reference_auroc'))} "
            f"(drop {_num(alert.value)} >= {_num(alert.threshold)}), "
            f"{evidence.get('labelled')} labels"
        )
    elif alert.rule == "calibration_gap":
        detail = (
            f"{_pct(evidence.get('positive_rate'))} positive vs "
            f"{_pct(evidence.get('mean_score'))} predicted (gap {_num(evidence.get('gap'))}, "
            f"holdout {_num(evidence.get('reference_gap'))}: change {_num(alert.value)} >= "
            f"{_num(alert.threshold)}), {evidence.get('labelled')} labels"
        )
    elif alert.rule == "expected_auroc_drop":
        detail = (
            f"expected AUROC {_num(evidence.get('expected_auroc'))} vs "
            f"{_num(evidence.get('reference_expected_auroc'))} (drop {_num(alert.value)} "
            f">= {_num(alert.threshold)})"
        )
    elif alert.rule == "error_rate":
        detail = (
            f"{evidence.get('failed')}/{evidence.get('records')} failed = {alert.value:.2%} "
            f"(95 % from {_pct(evidence.get('low'))}) > {alert.threshold:.2%}"
        )
    elif alert.rule == "latency":
        detail = f"p95 {alert.value:.1f} ms > {alert.threshold:.1f} ms over {evidence.get('calls')}"
    elif alert.rule in ("demographic_parity", "equalized_odds"):
        what = "positive rate" if alert.rule == "demographic_parity" else "TPR/FPR"
        detail = (
            f"{what} differs by {_num(alert.value)} (>= {_num(alert.threshold)}) across the "
            f"levels of {alert.subject}"
        )
    elif alert.rule == "retraining_no_benefit":
        detail = f"escalated to a person: {evidence.get('reason', '?')}"
    else:
        detail = f"{_num(alert.value)} vs {_num(alert.threshold)}"
    return f"{alert.rule} {alert.subject} at {alert.scope} ({version}): {detail}"


def _drift_rule(
    drift: FeatureDrift, rule: str, detector: DriftDetector, add: Callable[..., None]
) -> None:
    psi_threshold, js_threshold = detector.psi_threshold, detector.js_threshold
    min_count = detector.min_count
    if min(drift.reference_n, drift.current_n) < min_count:
        return
    js_hit = drift.js >= js_threshold
    if not (js_hit or drift.psi >= psi_threshold):
        return
    value, threshold = (drift.js, js_threshold) if js_hit else (drift.psi, psi_threshold)
    add(
        rule,
        drift.feature,
        value,
        threshold,
        statistic="js" if js_hit else "psi",
        js=drift.js,
        psi=drift.psi,
        js_threshold=js_threshold,
        psi_threshold=psi_threshold,
        reference_n=drift.reference_n,
        current_n=drift.current_n,
        min_count=min_count,
        extra_reference=drift.extra.reference,
        extra_current=drift.extra.current,
        out_of_range=drift.extra.out_of_range,
    )


def _finite(evidence: Mapping[str, Any]) -> dict[str, Any]:
    # Evidence is stored as JSON, which has no NaN.
    return {
        key: (None if isinstance(value, float) and not math.isfinite(value) else value)
        for key, value in evidence.items()
    }


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "?"


def _pct(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) else "?"

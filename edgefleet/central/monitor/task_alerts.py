"""Alert rules of multi-class and regression models (docs/architecture.md §7c): the task's
metrics against the manifest's holdout metrics, and prediction drift, the label-free proxy.

==================  ===============================================================  =======
rule                fires when (at least ``min_labels`` labels, as the AUROC rule)   default
==================  ===============================================================  =======
accuracy_drop       multi-class: holdout accuracy - accuracy now >= accuracy_drop    0.05
auroc_drop          multi-class: holdout macro OvR AUROC - macro OvR AUROC now       0.05
log_loss_rise       multi-class: (log loss now - holdout's) / holdout's >= rise      0.2
error_rise          regression: (RMSE now - holdout's) / holdout's >= error_rise,    0.2
                    and the same for MAE
r2_drop             regression: holdout R² - R² now >= r2_drop                       0.1
prediction_drift    the class mix or the prediction histogram against the holdout's  0.1/0.2
                    (the score-drift thresholds and minimum count)
==================  ===============================================================  =======

Log loss and the errors are judged relative to the holdout's: their scale is the data's
(a log loss of 0.3 is good with 3 classes and 1.0 may be with 40; an RMSE is in the target's
units), while accuracy, AUROC and R² are on a fixed scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from edgefleet.central.monitor.measures import Measures

if TYPE_CHECKING:  # alerts.py imports this module
    from edgefleet.central.monitor.alerts import AlertRules

TASK_RULES = ("accuracy_drop", "log_loss_rise", "error_rise", "r2_drop", "prediction_drift")
"""Rules of this module beside the binary ones (``auroc_drop`` is shared)."""

# (rule, metric, whether a rise is the bad direction, whether relative to the holdout's)
_CHECKS = (
    ("accuracy_drop", "accuracy", False, False),
    ("auroc_drop", "auroc_macro", False, False),
    ("log_loss_rise", "log_loss", True, True),
    ("error_rise", "rmse", True, True),
    ("error_rise", "mae", True, True),
    ("r2_drop", "r2", False, False),
)


def threshold_of(rule: str, rules: AlertRules) -> float:
    return {
        "accuracy_drop": rules.accuracy_drop,
        "auroc_drop": rules.auroc_drop,
        "log_loss_rise": rules.log_loss_rise,
        "error_rise": rules.error_rise,
        "r2_drop": rules.r2_drop,
    }[rule]


def task_rules(measures: Measures, rules: AlertRules, add: Callable[..., None]) -> None:
    """The task's metrics against the holdout's (module docstring)."""
    task = measures.task
    if task is None or task.performance is None or task.labelled < rules.min_labels:
        return
    now, holdout = task.metrics(), task.reference_metrics()
    for rule, metric, rise_is_bad, relative in _CHECKS:
        if metric not in now or not math.isfinite(holdout.get(metric, math.nan)):
            continue
        change = now[metric] - holdout[metric] if rise_is_bad else holdout[metric] - now[metric]
        if relative:
            if holdout[metric] <= 0:
                continue
            change /= holdout[metric]
        threshold = threshold_of(rule, rules)
        if math.isfinite(change) and change >= threshold:
            add(
                rule,
                metric,
                change,
                threshold,
                metric=metric,
                current=now[metric],
                reference=holdout[metric],
                relative=relative,
                standard_error=task.performance.standard_error(metric),
                labelled=task.labelled,
                min_labels=rules.min_labels,
                task=task.task,
            )


def describe_task_alert(
    rule: str, value: float, threshold: float, evidence: Mapping[str, Any]
) -> str:
    """The detail of :func:`edgefleet.central.monitor.alerts.describe` for these rules."""
    metric, current, reference = (evidence.get(k) for k in ("metric", "current", "reference"))
    change = f"{value:.1%}" if evidence.get("relative") else f"{value:.3f}"
    limit = f"{threshold:.1%}" if evidence.get("relative") else f"{threshold:.3f}"
    return (
        f"{metric} {_num(current)} vs holdout {_num(reference)} ({change} worse >= {limit}), "
        f"{evidence.get('labelled')} labels"
    )


def _num(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "?"

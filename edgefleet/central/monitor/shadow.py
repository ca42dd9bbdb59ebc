"""Judging a challenger from the shadow devices' paired histograms (docs/architecture.md §17).

Shadow devices score every record with the champion (the stable model, whose answer they
act on) and the challenger; for the records whose label came back they report both models'
scores by label (:class:`edgefleet.edge.shadow.ShadowSketch`). Merged over the shadow
cohort, these are the two models' labelled histograms *on the same records*, so their
AUROC and average precision compare like for like: no cohort difference, no drift between
two periods.

The verdict (:func:`compare_shadow`):

- ``wait`` until ``min_labelled`` paired outcomes of both classes came back;
- ``better`` when the AUROC gain's lower bound is above ``min_gain``;
- ``not_better`` otherwise.

The bound is ``gain - z * sqrt(se_champion**2 + se_challenger**2)`` with each standard
error by Hanley and McNeil (1982) from the histogram's counts. It ignores the positive
correlation of two models scoring the same records, so it is wider than the paired
interval would be: a challenger called better is better with at least the stated
confidence. (The record-level paired bootstrap of :mod:`benefit` needs the rows, which
never leave a device.)

A multi-class or regression champion's shadow devices send paired losses instead
(:class:`edgefleet.edge.shadow.PairedLoss`): per labelled record both models scored, ``d =
loss(challenger) - loss(champion)`` (log loss of the true class; squared error), summed with
``d**2`` over the cohort. That is a paired z-test, exact in its sums: the gain is ``-mean(d)``
(the champion's mean loss minus the challenger's), its standard error ``sd(d) / sqrt(n)``,
and the challenger is ``better`` when ``gain - z * se`` is above ``min_gain`` (in the loss's
units: log loss, or squared error). Pairing is kept here: the variation both models share
cancels in ``d``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from statistics import NormalDist
from typing import Any, Literal

from edgefleet.central.monitor.quality import (
    auroc_error_bound,
    binned_auroc,
    binned_average_precision,
)
from edgefleet.central.monitor.store import AlertRecord, DecisionRecord
from edgefleet.edge.rollout import RolloutState
from edgefleet.edge.shadow import ShadowSketch

ShadowVerdict = Literal["wait", "better", "not_better"]


@dataclass(frozen=True)
class ShadowComparison:
    """Champion against challenger on the shadow cohort's paired labelled records."""

    champion_version: str
    challenger_version: str
    verdict: ShadowVerdict
    reason: str
    labelled: int = 0
    positives: int = 0
    scored: int = 0
    champion_auroc: float | None = None
    challenger_auroc: float | None = None
    auroc_gain: float | None = None
    auroc_gain_low: float | None = None
    champion_ap: float | None = None
    challenger_ap: float | None = None
    ap_gain: float | None = None
    binning_bound: float | None = None
    """The most binning can move either AUROC from its raw-score value."""
    task: str = "binary"
    metric: str = "auroc"
    """``auroc``, or the loss the paired test is on: ``log_loss`` or ``squared_error``."""
    champion_loss: float | None = None
    """Mean loss of each model on the paired records (log loss, or the mean squared error)."""
    challenger_loss: float | None = None
    loss_gain: float | None = None
    """The champion's mean loss minus the challenger's: positive when the challenger is
    better."""
    loss_gain_se: float | None = None
    loss_gain_low: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shadow_started(decisions: Sequence[DecisionRecord], state: RolloutState) -> float:
    """When the challenger of ``state`` went out: its ``shadow`` decision, else the state's
    issue time (a challenger published by hand, ``edgefleet rollout shadow``)."""
    assert state.challenger is not None
    for decision in reversed(decisions):
        if decision.action == "shadow" and decision.model_version == state.challenger.version:
            return decision.created
    return datetime.fromisoformat(state.issued).timestamp()


def hanley_mcneil_se(auroc: float, negatives: int, positives: int) -> float:
    """The standard error of an AUROC from the counts of each class (Hanley & McNeil).

    >>> round(hanley_mcneil_se(0.8, 100, 100), 4)
    0.0314
    """
    q1 = auroc / (2 - auroc)
    q2 = 2 * auroc * auroc / (1 + auroc)
    variance = (
        auroc * (1 - auroc)
        + (positives - 1) * (q1 - auroc * auroc)
        + (negatives - 1) * (q2 - auroc * auroc)
    ) / (positives * negatives)
    return math.sqrt(max(variance, 0.0))


def compare_shadow(
    sketch: ShadowSketch | None,
    champion_version: str,
    challenger_version: str,
    *,
    min_labelled: int = 200,
    min_gain: float = 0.0,
    confidence: float = 0.95,
) -> ShadowComparison:
    """The verdict on the challenger from the merged shadow ``sketch`` (module docstring)."""
    names = (champion_version, challenger_version)
    if sketch is None:
        return ShadowComparison(*names, "wait", "no shadow device reported yet")
    if sketch.paired is not None:
        return compare_losses(
            sketch, *names, min_labelled=min_labelled, min_gain=min_gain, confidence=confidence
        )
    negatives, positives = sketch.challenger[0].total, sketch.challenger[1].total
    labelled, scored = sketch.labelled, sketch.scores.total
    if labelled < min_labelled or not negatives or not positives:
        why = (
            f"{labelled} paired labelled records ({positives} positive) of the "
            f"{min_labelled} needed, of both classes"
        )
        return ShadowComparison(*names, "wait", why, labelled, positives, scored)
    champion = [list(h.counts) for h in sketch.champion]
    challenger = [list(h.counts) for h in sketch.challenger]
    a_old, a_new = binned_auroc(*champion), binned_auroc(*challenger)
    spread = math.hypot(
        hanley_mcneil_se(a_old, negatives, positives),
        hanley_mcneil_se(a_new, negatives, positives),
    )
    low = (a_new - a_old) - NormalDist().inv_cdf(confidence) * spread
    better = low > min_gain
    reason = (
        f"on {sketch.labelled} paired records AUROC {a_new:.4f} vs {a_old:.4f} (gain "
        f"{a_new - a_old:+.4f}, {confidence:.0%} lower bound {low:+.4f} "
        f"{'above' if better else 'not above'} {min_gain:+.4f})"
    )
    ap_old, ap_new = binned_average_precision(*champion), binned_average_precision(*challenger)
    return ShadowComparison(
        *names,
        "better" if better else "not_better",
        reason,
        labelled,
        positives,
        scored,
        champion_auroc=a_old,
        challenger_auroc=a_new,
        auroc_gain=a_new - a_old,
        auroc_gain_low=low,
        champion_ap=ap_old,
        challenger_ap=ap_new,
        ap_gain=ap_new - ap_old,
        binning_bound=max(auroc_error_bound(*champion), auroc_error_bound(*challenger)),
    )


def compare_losses(
    sketch: ShadowSketch,
    champion_version: str,
    challenger_version: str,
    *,
    min_labelled: int = 200,
    min_gain: float = 0.0,
    confidence: float = 0.95,
) -> ShadowComparison:
    """The paired z-test of a multi-class or regression challenger (module docstring)."""
    paired = sketch.paired
    assert paired is not None
    names = (champion_version, challenger_version)
    n, scored = paired.labelled, sketch.scores.total
    metric = "log_loss" if paired.task == "multiclass" else "squared_error"
    if n < max(min_labelled, 2):
        why = f"{n} paired labelled records of the {min_labelled} needed"
        return ShadowComparison(*names, "wait", why, n, 0, scored, task=paired.task, metric=metric)
    mean = paired.difference / n
    variance = max(paired.difference_squares / n - mean * mean, 0.0) * n / (n - 1)
    se = math.sqrt(variance / n)
    gain = -mean
    low = gain - NormalDist().inv_cdf(confidence) * se
    better = low > min_gain
    old, new = paired.champion / n, paired.challenger / n
    shown = "log loss" if paired.task == "multiclass" else "MSE"
    rmse = (
        f" (RMSE {math.sqrt(new):.4g} vs {math.sqrt(old):.4g})"
        if paired.task == "regression"
        else ""
    )
    reason = (
        f"on {n} paired records {shown} {new:.4g} vs {old:.4g}{rmse} (gain {gain:+.4g}, "
        f"standard error {se:.3g}, {confidence:.0%} lower bound {low:+.4g} "
        f"{'above' if better else 'not above'} {min_gain:+.4g})"
    )
    return ShadowComparison(
        *names,
        "better" if better else "not_better",
        reason,
        n,
        0,
        scored,
        task=paired.task,
        metric=metric,
        champion_loss=old,
        challenger_loss=new,
        loss_gain=gain,
        loss_gain_se=se,
        loss_gain_low=low,
    )


SHADOW_ESCALATION_RULE = "retraining_no_benefit"
"""The same rule as the held-out comparison's escalation: either way, retraining did not
produce a better model, and a person is needed."""


def shadow_escalation_alert(
    fleet: str, now: float, comparison: ShadowComparison, data_fingerprint: str
) -> AlertRecord:
    """The alert a person answers when the shadow cohort says the challenger is not better."""
    return AlertRecord(
        id=None,
        fleet=fleet,
        created=now,
        rule=SHADOW_ESCALATION_RULE,
        scope="fleet",
        subject="shadow",
        value=next(
            (g for g in (comparison.auroc_gain, comparison.loss_gain) if g is not None), 0.0
        ),
        threshold=0.0,
        evidence={
            "model_version": comparison.champion_version,
            "candidate_version": comparison.challenger_version,
            "shadow": comparison.to_dict(),
            "data_fingerprint": data_fingerprint,
            "reason": comparison.reason,
            "what_to_do": (
                "on the devices, scoring the same records, the retrained model is not better "
                "than the running one: look at the drift (features, labels, model family) or "
                "accept it; the loop retrains again when the labelled data changes"
            ),
        },
        status="open",
    )

"""When retraining cannot fix a drift: tell a person, and do not retrain again for it until
the data changes.

A candidate that is not better with confidence (:mod:`edgefleet.central.monitor.benefit`)
is churn, not improvement: shipping it would only move the fleet. The loop then records
``rejected`` ("retraining does not help", with the paired interval), opens one alert of rule
:data:`ESCALATION_RULE` (``edgefleet alerts``, the dashboard's alerts and overview) carrying
the evidence, and records ``escalated``. The drift is still there; what it needs is a person:
new features, new labels, a new model family, or accepting the shift.

The loop does not retrain again while the newest labelled data is the same rows
(:func:`edgefleet.central.monitor.sources.fingerprint`) and the same model runs: the same
data would give the same answer. New data (a new export in the folder) starts a new attempt.
A promotion closes the escalation with the other alerts about the replaced model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgefleet.central.monitor.benefit import BenefitJudgement
from edgefleet.central.monitor.store import AlertRecord, DecisionRecord

ESCALATION_RULE = "retraining_no_benefit"
"""The rule name of an escalation alert (not a threshold rule: the loop raises it)."""


def escalation_alert(
    fleet: str,
    now: float,
    *,
    running_version: str,
    candidate_version: str,
    judgement: BenefitJudgement,
    data_fingerprint: str,
    triggers: Sequence[Mapping[str, Any]],
) -> AlertRecord:
    """The alert a person answers: the drift, the attempt and why it did not help."""
    return AlertRecord(
        id=None,
        fleet=fleet,
        created=now,
        rule=ESCALATION_RULE,
        scope="fleet",
        subject="retraining",
        value=judgement.gain.value,
        threshold=judgement.min_gain,
        evidence={
            "model_version": running_version,
            "candidate_version": candidate_version,
            "metric": judgement.metric,
            "gain": judgement.gain.to_dict(),
            "running": judgement.running,
            "candidate": judgement.candidate,
            "rows": judgement.rows,
            "confidence": judgement.confidence,
            "reason": judgement.reason,
            "data_fingerprint": data_fingerprint,
            "triggers": list(triggers),
            "what_to_do": (
                "retraining on the newest labelled data does not beat the running model: "
                "look at the drift (new features, labels, a model family), or accept it; "
                "the loop retrains again when the labelled data changes"
            ),
        },
        status="open",
    )


def unanswered_escalation(
    decisions: Sequence[DecisionRecord], running_version: str, data_fingerprint: str
) -> DecisionRecord | None:
    """The ``escalated`` decision made about this model on these very rows, if any: then
    retraining again would repeat it."""
    for decision in reversed(decisions):
        if decision.action == "promoted":
            return None
        if (
            decision.action == "escalated"
            and decision.evidence.get("running_version") == running_version
            and decision.evidence.get("data_fingerprint") == data_fingerprint
        ):
            return decision
    return None

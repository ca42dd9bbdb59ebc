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
from typing import TYPE_CHECKING, Any

from edgefleet.central.monitor.benefit import BenefitJudgement
from edgefleet.central.monitor.sources import fingerprint, read_labelled
from edgefleet.central.monitor.steps import CheckResult, StepResult, alert_evidence
from edgefleet.central.monitor.store import AlertRecord, DecisionRecord

if TYPE_CHECKING:
    from edgefleet.central.monitor.loop import RetrainLoop
    from edgefleet.central.monitor.retraining import Candidate

FAILURES = ("rolled_back", "export_failed", "shadow_dropped")
"""After these, alerts do not start another retrain within the cooldown. A rejection is held
by its data instead: new data may well help at once."""

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


def escalate(
    loop: RetrainLoop,
    candidate: Candidate,
    triggers: Sequence[AlertRecord],
    alerts: tuple[AlertRecord, ...],
) -> StepResult:
    """Open an alert for a person and record ``escalated`` (module docstring of
    :mod:`~edgefleet.central.monitor.escalation`)."""
    running = candidate.running.version
    judgement = candidate.comparison.benefit
    alert = escalation_alert(
        loop.fleet,
        loop.clock(),
        running_version=running,
        candidate_version=candidate.version.version,
        judgement=judgement,
        data_fingerprint=candidate.data_fingerprint,
        triggers=[alert_evidence(a) for a in triggers[:50]],
    )
    alert_id = loop.store.add_alert(alert)
    message = (
        f"retraining does not help {running} (alert #{alert_id} for a person; no retrain "
        f"until the labelled data changes): {judgement.reason}"
    )
    loop.decide(
        "escalated",
        running,
        message,
        {
            "alert_id": alert_id,
            "running_version": running,
            "candidate_version": candidate.version.version,
            "data_fingerprint": candidate.data_fingerprint,
            "window": candidate.window,
            "benefit": judgement.to_dict(),
        },
    )
    return StepResult("escalated", running, message, alerts)


def held_back(
    loop: RetrainLoop, result: CheckResult, triggers: Sequence[AlertRecord], now: float
) -> StepResult | None:
    """Why alerts do not start a retrain now, if they do not: the same data already
    showed that retraining does not help, or a recent rollback or failed export."""
    decisions = loop.store.decisions(loop.fleet)
    cooldown = loop.cooldown_windows * loop.window_seconds
    recent = [d for d in decisions if d.action in FAILURES and now - d.created < cooldown]
    if recent:
        last = recent[-1]
        return StepResult(
            "cooldown",
            result.model_version,
            f"{len(triggers)} alert(s), but {last.action} {now - last.created:.0f} s ago: "
            f"no retrain within {cooldown:.0f} s of it",
            result.alerts,
        )
    if not any(d.action == "escalated" for d in decisions):
        return None
    data = fingerprint(read_labelled(loop.data_source, max_rows=loop.max_rows))
    escalated = unanswered_escalation(decisions, result.model_version, data)
    if escalated is None:
        return None
    return StepResult(
        "held",
        result.model_version,
        f"{len(triggers)} alert(s); retraining on this data did not help (alert "
        f"#{escalated.evidence.get('alert_id')}, escalated): waiting for new labelled data",
        result.alerts,
    )

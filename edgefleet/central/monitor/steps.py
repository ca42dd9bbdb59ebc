"""What the loop's steps return and record: the check's result, a step's result, and the
helpers that turn alerts and evidence into decision records (used by :mod:`loop` and its
stages, :mod:`canary_stage` and :mod:`shadow_stage`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.central.monitor.alerts import RETRAIN_RULES
from edgefleet.central.monitor.measures import Measures
from edgefleet.central.monitor.store import AlertRecord


@dataclass(frozen=True)
class CheckResult:
    """The measures of the running model per scope and the alerts they raise.
    ``stored`` are the alerts that were new (not already open) and were saved."""

    model_version: str
    since: float | None
    until: float | None
    measures: tuple[tuple[str, Measures], ...]
    alerts: tuple[AlertRecord, ...]
    stored: tuple[AlertRecord, ...]

    @property
    def fleet_measures(self) -> Measures | None:
        return next((m for scope, m in self.measures if scope == "fleet"), None)

    def triggers(self, levels: Sequence[str]) -> tuple[AlertRecord, ...]:
        """The alerts a new model could answer, at the given scope levels."""
        return tuple(
            a for a in self.alerts if a.rule in RETRAIN_RULES and a.scope.split(":")[0] in levels
        )


@dataclass(frozen=True)
class StepResult:
    """What one :meth:`RetrainLoop.step` (or :meth:`RetrainLoop.run`) did: ``action`` is the
    last decision taken (``"none"``, ``"wait"``, ``"cooldown"`` or ``"held"`` when none
    was)."""

    action: str
    model_version: str | None
    message: str
    alerts: tuple[AlertRecord, ...] = ()


def alert_key(alert: AlertRecord) -> tuple[str, str, str, Any]:
    return (alert.rule, alert.scope, alert.subject, alert.evidence.get("model_version"))


def with_id(alert: AlertRecord, identifier: int) -> AlertRecord:
    return AlertRecord(
        id=identifier,
        fleet=alert.fleet,
        created=alert.created,
        rule=alert.rule,
        scope=alert.scope,
        subject=alert.subject,
        value=alert.value,
        threshold=alert.threshold,
        evidence=alert.evidence,
        status=alert.status,
    )


def alert_evidence(alert: AlertRecord) -> dict[str, Any]:
    return {
        "id": alert.id,
        "rule": alert.rule,
        "scope": alert.scope,
        "subject": alert.subject,
        "value": alert.value,
        "threshold": alert.threshold,
    }


def no_alert(result: CheckResult) -> str:
    fleet = result.fleet_measures
    if fleet is None:
        return f"no reports of {result.model_version} in the window"
    extra = f", {len(result.alerts)} other alert(s)" if result.alerts else ""
    return (
        f"{result.model_version}: {fleet.reports} reports, {fleet.scored:,} scored, "
        f"max feature JS {fleet.max_feature_js():.3f}: nothing a new model can answer{extra}"
    )


def json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value

"""What the monitor did: the alerts it raised and the decisions it took."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.central.monitor.storage.base import StoreBase
from edgefleet.central.monitor.storage.records import AlertRecord, DecisionRecord
from edgefleet.central.monitor.storage.schema import alerts, decisions
from edgefleet.errors import InputError, StoreError


class JournalStore(StoreBase):
    """Alerts and decisions."""

    # -- alerts and decisions ------------------------------------------------------------

    def add_alert(self, alert: AlertRecord) -> int:
        if alert.status not in ("open", "closed"):
            raise InputError(f"alert status must be 'open' or 'closed', not {alert.status!r}")
        values = {
            "fleet": alert.fleet,
            "created": alert.created,
            "rule": alert.rule,
            "scope": alert.scope,
            "subject": alert.subject,
            "value": alert.value,
            "threshold": alert.threshold,
            "evidence": _dump_evidence(alert.evidence),
            "status": alert.status,
        }
        return self._insert_returning_id(alerts, values)

    def alerts(self, fleet: str, *, open_only: bool = False) -> list[AlertRecord]:
        """A fleet's alerts, oldest first."""
        query = select(alerts).where(alerts.c.fleet == fleet).order_by(alerts.c.id)
        if open_only:
            query = query.where(alerts.c.status == "open")
        return [
            AlertRecord(
                id=int(r.id),
                fleet=r.fleet,
                created=float(r.created),
                rule=r.rule,
                scope=r.scope,
                subject=r.subject,
                value=float(r.value),
                threshold=float(r.threshold),
                evidence=json.loads(r.evidence),
                status=r.status,
            )
            for r in self._rows(query)
        ]

    def close_alerts_for(self, fleet: str, model_version: str | None) -> list[int]:
        """Close the open alerts raised about ``model_version`` (it was replaced: they are
        answered); the ids closed."""
        closed = []
        for alert in self.alerts(fleet, open_only=True):
            if alert.id is not None and alert.evidence.get("model_version") == model_version:
                self.close_alert(alert.id)
                closed.append(alert.id)
        return closed

    def close_alert(self, alert_id: int) -> None:
        """Close an alert; :class:`InputError` if there is no alert of that id."""
        try:
            with self.engine.begin() as connection:
                result = connection.execute(
                    update(alerts).where(alerts.c.id == alert_id).values(status="closed")
                )
                changed = result.rowcount
        except SQLAlchemyError as error:
            raise StoreError(f"cannot close alert {alert_id}: {error}") from None
        if not changed:
            raise InputError(f"there is no alert {alert_id}")

    def add_decision(self, decision: DecisionRecord) -> int:
        values = {
            "fleet": decision.fleet,
            "created": decision.created,
            "action": decision.action,
            "model_version": decision.model_version,
            "reason": decision.reason,
            "evidence": _dump_evidence(decision.evidence),
        }
        return self._insert_returning_id(decisions, values)

    def decisions(self, fleet: str) -> list[DecisionRecord]:
        """A fleet's decisions, oldest first."""
        query = select(decisions).where(decisions.c.fleet == fleet).order_by(decisions.c.id)
        return [
            DecisionRecord(
                id=int(r.id),
                fleet=r.fleet,
                created=float(r.created),
                action=r.action,
                model_version=r.model_version,
                reason=r.reason,
                evidence=json.loads(r.evidence),
            )
            for r in self._rows(query)
        ]


def _dump_evidence(evidence: Mapping[str, Any]) -> str:
    # NaN and infinities survive the round trip (a metric can be undefined); anything JSON
    # cannot hold is refused here rather than stored as something else.
    try:
        return json.dumps(dict(evidence), sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as error:
        raise InputError(f"evidence must be JSON (numbers, text, lists, dicts): {error}") from None

"""The alerts and decisions area."""

from __future__ import annotations

from typing import Any

from edgefleet.errors import InputError
from edgefleet.web.documents.catalog import Catalog
from edgefleet.web.documents.common import cleaned
from edgefleet.web.documents.shapes import alert_document, decision_document


class AlertsArea(Catalog):
    """Alerts and decisions documents."""

    # -- alerts and decisions ----------------------------------------------------------------

    def alerts(self, fleet: str, status: str = "all") -> dict[str, Any]:
        if status not in ("all", "open", "closed"):
            raise InputError(f"status must be all, open or closed, not {status!r}")
        records = self.store.alerts(fleet, open_only=status == "open")
        if status == "closed":
            records = [a for a in records if a.status == "closed"]
        return cleaned({"fleet": fleet, "alerts": [alert_document(a) for a in reversed(records)]})

    def decisions(self, fleet: str) -> dict[str, Any]:
        records = self.store.decisions(fleet)
        return cleaned(
            {"fleet": fleet, "decisions": [decision_document(d) for d in reversed(records)]}
        )

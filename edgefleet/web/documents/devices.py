"""The devices area: every device of a fleet, and one device's measures."""

from __future__ import annotations

from typing import Any

from edgefleet.web.documents.catalog import Catalog
from edgefleet.web.documents.common import NotFoundError, Skipped, cleaned, measure_or_none
from edgefleet.web.documents.shapes import (
    alert_document,
    feature_rows,
    measures_summary,
    score_histogram,
    thresholds_document,
)


class DevicesArea(Catalog):
    """Devices documents."""

    def devices(self, fleet: str) -> dict[str, Any]:
        now = self.clock()
        statuses = self.store.statuses(fleet)
        counts = self.store.refusal_counts(fleet)
        refused = {c.device_id: c.refused for c in counts}
        devices = [
            {
                **self._device(s, now, statuses.get(s.device_id)),
                "refused": refused.get(s.device_id, 0),
            }
            for s in self.store.devices(fleet)
        ]
        return cleaned(
            {
                "fleet": fleet,
                "now": now,
                "online_seconds": self.online_seconds,
                "devices": devices,
                # Per device the topic named (a claim: anyone who can publish there could
                # have sent it), ever; "" stands for topics that named no valid device.
                "refused_by_device": [
                    {
                        "device_id": c.device_id or None,
                        "refused": c.refused,
                        "last_refused": c.last_refused,
                        "last_reason": c.last_reason,
                    }
                    for c in counts
                ],
                "quarantined": self.store.quarantine_count(fleet),
                "refused": [
                    {
                        "id": q.id,
                        "received": q.received,
                        "topic": q.topic,
                        "device_id": q.device_id,
                        "reason": q.reason,
                        "bytes": q.payload_bytes,
                        "sha256": q.payload_sha256,
                        "excerpt": q.excerpt,
                    }
                    for q in self.store.quarantined(fleet, limit=20)
                ],
            }
        )

    def device(self, fleet: str, device_id: str) -> dict[str, Any]:
        summary = next((s for s in self.store.devices(fleet) if s.device_id == device_id), None)
        if summary is None:
            raise NotFoundError(f"device {device_id!r} never reported to fleet {fleet!r}")
        refused = sum(
            c.refused for c in self.store.refusal_counts(fleet) if c.device_id == device_id
        )
        now = self.clock()
        manifest = self.manifest(summary.model_name, summary.model_version)
        skipped = Skipped()
        aggregate = self._merge(
            fleet,
            (summary.model_name, summary.model_version),
            manifest,
            skipped,
            device_id=device_id,
        )
        measures = measure_or_none(aggregate, manifest)
        scope = f"device:{device_id}"
        return cleaned(
            {
                "fleet": fleet,
                "device": {
                    **self._device(summary, now, self.store.statuses(fleet).get(device_id)),
                    "refused": refused,
                },
                "measures": None if measures is None else measures_summary(measures),
                "features": [] if measures is None else feature_rows(measures),
                "score": None
                if manifest is None or aggregate is None
                else score_histogram(manifest, aggregate, measures),
                "alerts": [alert_document(a) for a in self.store.alerts(fleet) if a.scope == scope],
                "thresholds": thresholds_document(),
                "manifest_missing": manifest is None,
                "skipped": skipped.document(),
            }
        )

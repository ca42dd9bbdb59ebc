"""The overview area: a fleet at a glance, and its drift timeline."""

from __future__ import annotations

import math
from typing import Any

from edgefleet.edge.distinct import DistinctIds
from edgefleet.edge.manifest import parse_version
from edgefleet.web.documents.catalog import Catalog
from edgefleet.web.documents.common import Skipped, cleaned, measure_or_none
from edgefleet.web.documents.shapes import (
    alert_document,
    decision_document,
    thresholds_document,
    time_slices,
)
from edgefleet.web.escalations import escalations


class OverviewArea(Catalog):
    """Overview documents."""

    # -- overview --------------------------------------------------------------------------

    def overview(self, fleet: str) -> dict[str, Any]:
        now = self.clock()
        # Counted by the database, never listed: the overview costs the same at any
        # fleet size (the devices page lists them).
        counted = self.store.device_totals(fleet, now - self.online_seconds)
        rollout = self.rollout(fleet)
        state = rollout["state"] or {}
        roles = {
            (ref["name"], ref["version"]): role
            for role, ref in (("stable", state.get("stable")), ("canary", state.get("canary")))
            if ref
        }
        running = counted.running
        versions = []
        seen = set()
        for name, version, reports in self.store.model_versions(fleet):
            seen.add((name, version))
            versions.append(
                {
                    "model_name": name,
                    "model_version": version,
                    "role": roles.get((name, version)),
                    "devices": running.get((name, version), 0),
                    "reports": reports,
                }
            )
        for (name, version), role in roles.items():
            if (name, version) not in seen:
                versions.append(
                    {
                        "model_name": name,
                        "model_version": version,
                        "role": role,
                        "devices": 0,
                        "reports": 0,
                    }
                )
        open_alerts = self.store.alerts(fleet, open_only=True)
        decisions = self.store.decisions(fleet)
        return cleaned(
            {
                "fleet": fleet,
                "now": now,
                "devices": {
                    "total": counted.total,
                    "online": counted.online,
                    "offline": counted.total - counted.online,
                    "online_seconds": self.online_seconds,
                },
                "reports": self.store.report_count(fleet),
                "scored": counted.scored,
                "failed": counted.failed,
                "quarantined": self.store.quarantine_count(fleet),
                "last_report": counted.last_seen,
                "alerts": {
                    "open": len(open_alerts),
                    "newest": [alert_document(a) for a in reversed(open_alerts[-5:])],
                },
                "escalations": escalations(open_alerts, alert_document),
                "rollout": rollout,
                "versions": sorted(
                    versions, key=lambda v: (v["model_name"], parse_version(v["model_version"]))
                ),
                "decisions": [decision_document(d) for d in reversed(decisions[-5:])],
                "timeline": self.timeline(fleet),
            }
        )

    def timeline(self, fleet: str, buckets: int = 12) -> dict[str, Any]:
        """The largest feature drift and the score drift of every model version, per time
        slice of the fleet's whole history: how a version drifted, and how its successor
        compares, on one time axis (each against its own training data)."""
        key = ("timeline", fleet, buckets)
        cached = self._cached(key)
        if cached is not None:
            return cached
        wholes = []
        skipped = Skipped()
        for name, version, _ in self.store.model_versions(fleet):
            manifest = self.manifest(name, version)
            if manifest is None:
                continue
            whole = self._merge(fleet, (name, version), manifest, skipped)
            if whole is not None:
                wholes.append((manifest, whole))
        document: dict[str, Any] = {
            "thresholds": thresholds_document(),
            "buckets": [],
            "versions": [],
        }
        if wholes:
            start = min(whole.window_start for _, whole in wholes)
            end = math.nextafter(max(whole.window_end for _, whole in wholes), math.inf)
            devices = DistinctIds()
            for _, whole in wholes:
                devices.merge(whole.distinct_devices())
            reports = sum(whole.reports for _, whole in wholes)
            slices = time_slices(
                start, end, buckets, reports, devices.count(), open_start=True, open_end=True
            )
            document["buckets"] = [{"start": low, "end": high} for low, high in slices]
            for manifest, whole in wholes:
                features: list[float | None] = []
                scores: list[float | None] = []
                for low, high in slices:
                    part = self._merge(
                        fleet,
                        (whole.model_name, whole.model_version),
                        manifest,
                        skipped,
                        whole=False,
                        since=low,
                        until=high,
                    )
                    measures = measure_or_none(part, manifest)
                    features.append(
                        None
                        if measures is None
                        else max((f.js for f in measures.features), default=None)
                    )
                    scores.append(
                        None if measures is None or measures.score is None else measures.score.js
                    )
                document["versions"].append(
                    {
                        "model_name": whole.model_name,
                        "model_version": whole.model_version,
                        "max_feature_js": features,
                        "score_js": scores,
                    }
                )
        document["skipped"] = skipped.document()
        return self._remember(key, cleaned(document))

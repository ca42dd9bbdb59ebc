"""The drift area: one model version's reports against its reference, over time."""

from __future__ import annotations

import math
from typing import Any

from edgefleet.errors import InputError
from edgefleet.web.documents.catalog import Catalog
from edgefleet.web.documents.common import (
    MAX_BUCKETS,
    NotFoundError,
    Skipped,
    cleaned,
    measure_or_none,
)
from edgefleet.web.documents.shapes import (
    feature_histograms,
    feature_rows,
    measures_summary,
    prediction_histogram,
    score_histogram,
    thresholds_document,
    time_slices,
)


class DriftArea(Catalog):
    """Drift documents."""

    # -- drift -------------------------------------------------------------------------------

    def drift(
        self,
        fleet: str,
        *,
        model_version: str | None = None,
        since: float | None = None,
        until: float | None = None,
        buckets: int = 12,
    ) -> dict[str, Any]:
        """Per-feature PSI and JS distance of one model version's reports against its
        reference profile: over the whole window ``[since, until)`` (by report window end)
        with reference and current histograms, and over ``buckets`` equal slices of it."""
        if not 1 <= buckets <= MAX_BUCKETS:
            raise InputError(f"buckets must be 1 to {MAX_BUCKETS}, not {buckets}")
        if since is not None and until is not None and since >= until:
            raise InputError("since must be before until")
        reported = self.store.model_versions(fleet)
        versions = [{"model_name": n, "model_version": v, "reports": c} for n, v, c in reported]
        base: dict[str, Any] = {
            "fleet": fleet,
            "versions": versions,
            "since": since,
            "until": until,
            "model_name": None,
            "model_version": None,
            "error": None,
            "skipped": Skipped().document(),
        }
        if not reported:
            return cleaned({**base, "error": f"fleet {fleet} has no reports yet"})
        chosen = self._choose_version(fleet, reported, model_version)
        name, version = chosen
        base.update(model_name=name, model_version=version)
        key = (fleet, name, version, since, until, buckets)
        cached = self._cached(key)
        if cached is not None:
            return cached
        manifest = self.manifest(name, version)
        if manifest is None:
            return cleaned(
                {
                    **base,
                    "error": f"no bundle or registry entry for {name} {version} in "
                    f"{self.home}: cannot compare its reports with a reference",
                }
            )
        skipped = Skipped()
        whole = self._merge(fleet, chosen, manifest, skipped, since=since, until=until)
        base["skipped"] = skipped.document()
        measures = measure_or_none(whole, manifest)
        if whole is None or measures is None:
            problem = "no reports" if whole is None else "no reports that fit its reference"
            return cleaned({**base, "error": f"{problem} of {name} {version} in this window"})
        start = whole.window_start if since is None else since
        # Slices by window end, as the store filters: the last one ends just past the newest.
        end = math.nextafter(whole.window_end, math.inf) if until is None else until
        slices = time_slices(
            start,
            end,
            buckets,
            whole.reports,
            whole.n_devices,
            open_start=since is None,
            open_end=until is None,
        )
        timeline: list[dict[str, Any]] = []
        series: list[tuple[list[float | None], list[float | None]]] = [
            ([], []) for _ in measures.features
        ]
        score_series: tuple[list[float | None], list[float | None]] = ([], [])
        for low, high in slices:
            part = self._merge(fleet, chosen, manifest, skipped, whole=False, since=low, until=high)
            part_measures = measure_or_none(part, manifest)
            timeline.append(
                {
                    "start": low,
                    "end": high,
                    "reports": 0 if part is None else part.reports,
                    "scored": 0 if part is None else part.scored,
                }
            )
            for position, (psi_values, js_values) in enumerate(series):
                drift = None if part_measures is None else part_measures.features[position]
                psi_values.append(None if drift is None else drift.psi)
                js_values.append(None if drift is None else drift.js)
            score = None if part_measures is None else part_measures.score
            score_series[0].append(None if score is None else score.psi)
            score_series[1].append(None if score is None else score.js)
        features = feature_rows(measures)
        histograms = feature_histograms(manifest, whole)
        for row, histogram, (psi_values, js_values) in zip(
            features, histograms, series, strict=True
        ):
            row["histogram"] = histogram
            row["timeline"] = {"psi": psi_values, "js": js_values}
        score_document = score_histogram(manifest, whole, measures)
        if score_document is not None:
            score_document["timeline"] = {"psi": score_series[0], "js": score_series[1]}
        document = cleaned(
            {
                **base,
                "thresholds": thresholds_document(),
                "window": [whole.window_start, whole.window_end],
                "reports": whole.reports,
                "devices": whole.n_devices,
                "scored": whole.scored,
                "measures": measures_summary(measures),
                "features": features,
                "score": score_document,
                "prediction": prediction_histogram(manifest, whole),
                "fairness": [f.to_dict() for f in measures.fairness],
                "buckets": timeline,
                "skipped": skipped.document(),
            }
        )
        return self._remember(key, document)

    def _choose_version(
        self, fleet: str, reported: list[tuple[str, str, int]], wanted: str | None
    ) -> tuple[str, str]:
        if wanted is not None:
            for name, version, _ in reported:
                if version == wanted:
                    return name, version
            raise NotFoundError(f"fleet {fleet} has no reports of model version {wanted!r}")
        state = self.read_rollout(fleet).state
        if state is not None and state.stable is not None:
            for name, version, _ in reported:
                if (name, version) == (state.stable.name, state.stable.version):
                    return name, version
        name, version, _ = reported[-1]
        return name, version

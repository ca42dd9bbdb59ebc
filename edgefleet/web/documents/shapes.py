"""How records and measures look in a document (plain JSON-able dicts and lists)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from edgefleet.central.monitor.alerts import describe
from edgefleet.central.monitor.measures import Measures
from edgefleet.central.monitor.store import (
    AlertRecord,
    DecisionRecord,
)
from edgefleet.edge.aggregate import Aggregate
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.profile import SCORE_BINS, CategoricalProfile, NumericProfile
from edgefleet.edge.rollout import ModelRef
from edgefleet.edge.schema import CategoricalFeature
from edgefleet.edge.tasksketch import MulticlassSketch, RegressionSketch
from edgefleet.web.documents.common import DISPLAY_SCORE_BINS, number_text

MINUTE = 60
HOUR = 3600
SNAP_WIDTH = 600.0
"""Slices at least this wide (seconds) are cut on whole minutes (see :func:`time_slices`)."""


def time_slices(
    start: float,
    end: float,
    wanted: int,
    reports: int,
    devices: int,
    *,
    open_start: bool = False,
    open_end: bool = False,
) -> list[tuple[float, float]]:
    """``[start, end)`` cut in equal slices: ``wanted`` of them, fewer when there are not
    as many reports per device (a slice shorter than the time between two reports would be
    an empty gap), and none shorter than a second.

    Slices of :data:`SNAP_WIDTH` or more are cut on whole minutes, of two hours or more on
    whole hours, so that each is read from rollups alone (docs/architecture.md §7b); the
    outer bounds move out to the same grid where they are the first and last report's
    (``open_``), which leaves the reports in the range as they are."""
    count = max(1, min(wanted, reports // max(1, devices), math.ceil(end - start)))
    width = (end - start) / count
    grid = HOUR if width >= 2 * HOUR else MINUTE if width >= SNAP_WIDTH else None
    if grid is None:
        cuts = [start + i * width for i in range(1, count)]
        return list(itertools.pairwise([start, *cuts, end]))
    start = math.floor(start / grid) * grid if open_start else start
    end = (math.floor(end / grid) + 1) * grid if open_end else end
    width = (end - start) / count
    cuts = [round((start + i * width) / grid) * grid for i in range(1, count)]
    return list(itertools.pairwise([start, *cuts, end]))


def publisher_warnings(lines: list[str]) -> list[str]:
    """The publisher's warnings among its progress lines (e.g. what it replaced on the
    broker's rollout topic), for the page and the decision's evidence."""
    return [line.removeprefix("warning: ") for line in lines if line.startswith("warning: ")]


def ref_document(ref: ModelRef | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {
        "name": ref.name,
        "version": ref.version,
        "label": ref.label,
        "manifest_sha256": ref.manifest_sha256,
        "formats": sorted(ref.artifacts),
    }


def alert_document(alert: AlertRecord) -> dict[str, Any]:
    return {
        "id": alert.id,
        "created": alert.created,
        "rule": alert.rule,
        "scope": alert.scope,
        "subject": alert.subject,
        "value": alert.value,
        "threshold": alert.threshold,
        "status": alert.status,
        "model_version": alert.evidence.get("model_version"),
        "description": describe(alert),
        "evidence": dict(alert.evidence),
    }


def decision_document(decision: DecisionRecord) -> dict[str, Any]:
    return {
        "id": decision.id,
        "created": decision.created,
        "action": decision.action,
        "model_version": decision.model_version,
        "reason": decision.reason,
        "evidence": dict(decision.evidence),
    }


def thresholds_document() -> dict[str, Any]:
    from edgefleet.central.monitor.drift import DriftDetector

    detector = DriftDetector()
    return {
        "psi": detector.psi_threshold,
        "js": detector.js_threshold,
        "min_count": detector.min_count,
    }


def measures_summary(measures: Measures) -> dict[str, Any]:
    performance = measures.performance
    return {
        "model_version": measures.model_version,
        "window": [measures.window_start, measures.window_end],
        "reports": measures.reports,
        "devices": measures.devices,
        "scored": measures.scored,
        "failed": measures.failed,
        "labelled": measures.labelled,
        "error_rate": measures.errors.value,
        "auroc": None if performance is None else performance.auroc,
        "reference_auroc": measures.reference_auroc,
        "average_precision": None if performance is None else performance.average_precision,
        "expected_auroc": None if measures.expected is None else measures.expected.auroc,
        "latency_p50_ms": measures.latency.p50_ms,
        "latency_p95_ms": measures.latency.p95_ms,
        "drifted_features": [f.feature for f in measures.drifted_features],
        "score_js": None if measures.score is None else measures.score.js,
        "score_psi": None if measures.score is None else measures.score.psi,
        **task_summary(measures),
    }


METRIC_LABELS = {
    "auroc": "AUROC",
    "average_precision": "average precision",
    "accuracy": "accuracy",
    "log_loss": "log loss",
    "auroc_macro": "macro OvR AUROC",
    "auroc_weighted": "weighted OvR AUROC",
    "mae": "MAE",
    "rmse": "RMSE",
    "r2": "R²",
}


def task_summary(measures: Measures) -> dict[str, Any]:
    """The task and its metrics (docs/architecture.md §7c): what the pages show of a
    multi-class or regression model in place of AUROC."""
    task = measures.task
    document: dict[str, Any] = {"task": measures.task_kind}
    if task is None:
        return document
    whole = task.to_dict()
    bounds, reference = whole["bounds"], whole["reference_metrics"]
    document["metrics"] = [
        {
            "name": name,
            "label": METRIC_LABELS[name],
            "value": value,
            "reference": reference.get(name),
            "bound": bounds.get(name),
        }
        for name, value in task.metrics().items()
    ]
    document["prediction_drift"] = whole["prediction_drift"]
    return document


def prediction_histogram(manifest: Manifest, aggregate: Aggregate) -> dict[str, Any] | None:
    """A multi-class model's class mix or a regressor's predictions, reference and current
    counts per bin (the reference profile's ``prediction`` bins); None for a binary model or
    when the reports do not fit the reference."""
    task, reference = aggregate.task, manifest.reference.prediction
    if task is None or reference is None:
        return None
    if isinstance(task, MulticlassSketch) and isinstance(reference, CategoricalProfile):
        classes = list(manifest.schema.classes)
        current = list(task.predicted.counts)
        labels = classes if len(classes) == len(current) else [str(i) for i in range(len(current))]
    elif isinstance(task, RegressionSketch) and isinstance(reference, NumericProfile):
        current = list(task.predictions.counts)
        labels = numeric_labels(reference.edges)
    else:
        return None
    if len(current) != len(reference.counts):
        return None
    return {
        "kind": task.kind,
        "labels": labels,
        "reference": list(reference.counts),
        "current": current,
    }


def feature_rows(measures: Measures) -> list[dict[str, Any]]:
    return [f.to_dict(name_key="name") for f in measures.features]


def numeric_labels(edges: Sequence[float]) -> list[str]:
    if not edges:
        return ["all values"]
    labels = [f"< {number_text(edges[0])}"]
    labels += [f"{number_text(a)} to {number_text(b)}" for a, b in itertools.pairwise(edges)]
    labels.append(f">= {number_text(edges[-1])}")
    return labels


def feature_histograms(manifest: Manifest, aggregate: Aggregate) -> list[dict[str, Any]]:
    """Reference and current counts per bin of each feature, in the reference's order; the
    values without a bin (missing, unknown category) as a last bin when either side has
    any."""
    sketches = {s.name: s for s in aggregate.features}
    histograms = []
    for profile in manifest.reference.features:
        sketch = sketches[profile.name]
        current = list(sketch.bins.counts)
        current_extra = sketch.missing + sketch.unknown
        if isinstance(profile, NumericProfile):
            labels = numeric_labels(profile.edges)
            extra_label = "missing"
            reference_extra = profile.missing
            kind = "numeric"
        else:
            assert isinstance(profile, CategoricalProfile)
            feature = manifest.schema.feature(profile.name)
            vocabulary = list(feature.vocabulary) if isinstance(feature, CategoricalFeature) else []
            labels = (
                vocabulary
                if len(vocabulary) == len(profile.counts)
                else [f"code {i}" for i in range(len(profile.counts))]
            )
            extra_label = "unknown or missing"
            reference_extra = profile.unknown
            kind = "categorical"
        reference = list(profile.counts)
        if reference_extra or current_extra:
            labels = [*labels, extra_label]
            reference.append(reference_extra)
            current.append(current_extra)
        histograms.append(
            {"kind": kind, "labels": labels, "reference": reference, "current": current}
        )
    return histograms


def score_histogram(
    manifest: Manifest, aggregate: Aggregate, measures: Measures | None
) -> dict[str, Any] | None:
    reference = list(manifest.reference.scores.counts)
    current = list(aggregate.scores.counts.counts)
    if len(reference) != SCORE_BINS or len(current) != SCORE_BINS:
        return None
    if aggregate.task is not None and aggregate.task.kind == "regression":
        return None  # a regressor has no probability: its predictions are charted instead
    step = SCORE_BINS // DISPLAY_SCORE_BINS
    merged_reference = [sum(reference[i : i + step]) for i in range(0, SCORE_BINS, step)]
    merged_current = [sum(current[i : i + step]) for i in range(0, SCORE_BINS, step)]
    labels = [
        f"{i / DISPLAY_SCORE_BINS:.2f} to {(i + 1) / DISPLAY_SCORE_BINS:.2f}"
        for i in range(DISPLAY_SCORE_BINS)
    ]
    score = None if measures is None else measures.score
    return {
        "labels": labels,
        "reference": merged_reference,
        "current": merged_current,
        "psi": None if score is None else score.psi,
        "js": None if score is None else score.js,
        "verdict": None if score is None else score.verdict,
    }

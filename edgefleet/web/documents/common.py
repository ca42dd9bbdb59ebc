"""Shared pieces of the dashboard's documents: errors, JSON cleaning, caches."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.central.monitor.measures import Measures, measure
from edgefleet.central.monitor.merging import Merged, SkippedReport
from edgefleet.central.monitor.validation import VersionProfile
from edgefleet.edge.aggregate import Aggregate
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.rollout import ModelRef, RolloutState
from edgefleet.errors import EdgefleetError, InputError

DISPLAY_SCORE_BINS = 20
"""The 100 score bins of the reports, shown as this many (5 merged into each)."""
MAX_BUCKETS = 48
DRIFT_CACHE_SECONDS = 10.0
"""A drift document is reused this long: a page and its charts ask for the same one."""
DRIFT_CACHE_SIZE = 32


class NotFoundError(EdgefleetError):
    """No such fleet, device, model version or bundle (HTTP 404)."""


class ConflictError(EdgefleetError):
    """The action does not fit the fleet's current state (HTTP 409)."""


def clean(value: Any) -> Any:
    """``value`` as JSON allows it: non-finite floats become None, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        items = sorted(value) if isinstance(value, frozenset | set) else value
        return [clean(v) for v in items]
    return value


def cleaned(document: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`clean` of a JSON object."""
    return {str(k): clean(v) for k, v in document.items()}


def number_text(value: float) -> str:
    return f"{value:.4g}"


def measure_or_none(aggregate: Aggregate | None, manifest: Manifest | None) -> Measures | None:
    """The measures of an aggregate against its manifest, or None where there is nothing
    to measure, or the reports do not fit the manifest (a manifest no device could report
    on: its reports were merged by their own majority)."""
    if aggregate is None or manifest is None:
        return None
    try:
        return measure(aggregate, manifest)
    except InputError:
        return None


@dataclass(frozen=True)
class RolloutView:
    """A fleet's rollout state as the state file holds it (verified), or why not."""

    state: RolloutState | None
    models: Mapping[str, ModelRef]
    path: Path
    error: str | None = None


@dataclass
class Cached:
    created: float
    value: dict[str, Any]


class Skipped:
    """The stored reports a document's merges had to skip (docs/architecture.md §10):
    counted once per whole-range merge, named once each, so that a page says which
    reports it left out and why instead of failing."""

    def __init__(self) -> None:
        self.total = 0
        self.named: dict[int, SkippedReport] = {}

    def add(self, merged: Merged, *, whole: bool) -> None:
        # Slices of a range skip the same rows as the whole: only the whole is counted.
        if whole:
            self.total += merged.skipped_total
        for report in merged.skipped:
            self.named.setdefault(report.id, report)

    def document(self) -> dict[str, Any]:
        return {
            "total": max(self.total, len(self.named)),
            "reports": [r.to_dict() for r in sorted(self.named.values(), key=lambda r: r.id)],
        }


@dataclass
class Caches:
    manifests: dict[tuple[str, str], tuple[float, Manifest]] = field(default_factory=dict)
    profiles: dict[tuple[str, str], tuple[Manifest, VersionProfile | None]] = field(
        default_factory=dict
    )
    drift: dict[tuple[Any, ...], Cached] = field(default_factory=dict)
    bundles: dict[Path, tuple[tuple[float, ...], dict[str, Any]]] = field(default_factory=dict)

"""The aggregate the central side merges reports into (docs/architecture.md §§5, 7b).

Merging: :func:`merge` and :func:`merge_all` turn reports of one fleet and model version
into an :class:`Aggregate`: sketches and counts summed, the window widened to cover all of
them, the device identity reduced to the set of devices, cohorts and groups. Summing is
associative and commutative. Counting each report once is the caller's job: deduplicate on
``(device_id, sequence)`` before merging, since QoS 1 delivers at least once.
:class:`SketchSums` holds the running sums in exact Python ints; the monitor's merge of
stored report JSON and its rollups sum into it too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edgefleet.edge.distinct import DistinctIds
from edgefleet.edge.report import Report
from edgefleet.edge.segments import SegmentSketch
from edgefleet.edge.shadow import PairedLoss, ShadowSketch, merge_paired
from edgefleet.edge.sketch import FeatureSketch, Histogram, LatencySketch, ScoreSketch
from edgefleet.edge.tasksketch import TaskSketch, task_from_flat
from edgefleet.errors import InputError

__all__ = ["Aggregate", "SketchSums", "merge", "merge_all"]


@dataclass(frozen=True, kw_only=True)
class Aggregate:
    """Reports of one fleet and model version, merged. ``reports`` counts the reports in it,
    ``devices`` are the distinct devices that sent them (a set, so that merging aggregates
    that share devices still counts each device once) while there are at most
    :data:`~edgefleet.edge.distinct.EXACT_LIMIT`; past that ``devices`` is empty and
    ``device_sketch`` counts them (an estimate, :mod:`edgefleet.edge.distinct`): use
    :attr:`n_devices`."""

    fleet: str
    model_name: str
    model_version: str
    window_start: float
    window_end: float
    reports: int
    devices: frozenset[str]
    cohorts: frozenset[str]
    device_groups: frozenset[str]
    scored: int
    failed: int
    dropped_reports: int
    features: tuple[FeatureSketch, ...]
    scores: ScoreSketch
    outcomes: ScoreSketch
    latency: LatencySketch
    segments: tuple[SegmentSketch, ...] = ()
    shadow: tuple[ShadowSketch, ...] = ()
    """Challengers' histograms summed, one per challenger version."""
    task: TaskSketch | None = None
    """A multi-class or regression model's sketches summed."""
    device_sketch: str | None = None
    """The HyperLogLog registers of the devices (base64) when too many to list, else None."""

    @classmethod
    def of(cls, report: Report) -> Aggregate:
        return cls(
            fleet=report.fleet,
            model_name=report.model_name,
            model_version=report.model_version,
            window_start=report.window_start,
            window_end=report.window_end,
            reports=1,
            devices=frozenset((report.device_id,)),
            cohorts=frozenset((report.cohort,)),
            device_groups=frozenset((report.device_group,)),
            scored=report.scored,
            failed=report.failed,
            dropped_reports=report.dropped_reports,
            features=report.features,
            scores=report.scores,
            outcomes=report.outcomes,
            latency=report.latency,
            segments=report.segments,
            shadow=() if report.shadow is None else (report.shadow,),
            task=report.task,
        )

    @property
    def n_devices(self) -> int:
        """The distinct devices: exact up to EXACT_LIMIT, an estimate past it."""
        return self.distinct_devices().count()

    def distinct_devices(self) -> DistinctIds:
        """The devices as a count that merges (a fresh object)."""
        if self.device_sketch is None:
            return DistinctIds(self.devices)
        return DistinctIds.from_json({"hll12": self.device_sketch})

    def merge(self, other: Report | Aggregate) -> Aggregate:
        return merge(self, other)

    def feature(self, name: str) -> FeatureSketch:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise InputError(f"the aggregate has no feature {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "reports": self.reports,
            "devices": self.distinct_devices().to_json(),
            "cohorts": sorted(self.cohorts),
            "device_groups": sorted(self.device_groups),
            "scored": self.scored,
            "failed": self.failed,
            "dropped_reports": self.dropped_reports,
            "features": [f.to_dict() for f in self.features],
            "scores": self.scores.to_dict(),
            "outcomes": self.outcomes.to_dict(),
            "latency": self.latency.to_dict(),
            "segments": [s.to_dict() for s in self.segments],
            "shadow": [s.to_dict() for s in self.shadow],
            **_task_field(self.task),
        }

    def shadow_of(self, challenger_version: str) -> ShadowSketch | None:
        """The summed shadow histograms of one challenger version, if any device sent them."""
        return next((s for s in self.shadow if s.model_version == challenger_version), None)


def merge(a: Report | Aggregate, b: Report | Aggregate) -> Aggregate:
    """Two reports (or aggregates) of the same fleet and model version, summed."""
    total = _Sum(a)
    total.add(b)
    return total.freeze()


def merge_all(items: Iterable[Report | Aggregate]) -> Aggregate:
    """Many reports (or aggregates) summed in one pass: the way to fold a window of a fleet,
    several times faster than merging pairwise (no intermediate frozen values)."""
    iterator = iter(items)
    first = next(iterator, None)
    if first is None:
        raise InputError("merge_all needs at least one report")
    total = _Sum(first)
    for item in iterator:
        total.add(item)
    return total.freeze()


def _as_aggregate(item: Report | Aggregate) -> Aggregate:
    if isinstance(item, Report):
        return Aggregate.of(item)
    if isinstance(item, Aggregate):
        return item
    raise InputError(f"can only merge reports and aggregates, not {type(item).__name__}")


def _sketch_of(devices: DistinctIds) -> str | None:
    text = devices.to_json()
    return text["hll12"] if isinstance(text, dict) else None


class SketchSums:
    """Running sums of reports' counts in exact Python ints, frozen into an
    :class:`Aggregate`: the state behind :func:`merge_all`, shared with the monitor
    store's merge of stored report JSON. One flat list per feature: its bins, then missing,
    out_of_range, unknown; histograms in the order of :func:`_histograms`."""

    def __init__(self) -> None:
        self.key: tuple[str, str, str] | None = None
        self.layout: list[tuple[str, str, int]] = []
        self.window = [math.inf, -math.inf]
        self.reports = 0
        self.devices = DistinctIds()
        self.cohorts: set[str] = set()
        self.groups: set[str] = set()
        self.totals = [0, 0, 0]
        self.features: list[list[int]] = []
        self.histograms: list[list[int]] = []
        self.segment_layout: list[tuple[str, int]] = []
        """``(feature, levels)`` of each segment sketch; its counts in :attr:`segments`,
        flat as :meth:`SegmentSketch.flat` lays them out."""
        self.segments: list[list[int]] = []
        self.shadow: dict[str, list[int]] = {}
        """Challenger version -> its counts, flat as :meth:`ShadowSketch.flat` lays them out."""
        self.shadow_paired: dict[str, PairedLoss] = {}
        """Challenger version -> its paired losses (a multi-class or regression champion's)."""
        self.task: tuple[str, int] | None = None
        """``(kind, size)`` of the task sketch (multi-class or regression), or None; its
        counts and float sums in :attr:`task_counts` and :attr:`task_sums`, flat as
        ``TaskSketch.flat`` lays them out."""
        self.task_counts: list[int] = []
        self.task_sums: list[float] = []

    def add_task(self, kind: str, size: int, counts: list[int], sums: list[float]) -> None:
        """Add a task sketch's flat counts and sums (the first one sets the layout)."""
        if self.task is None:
            self.task, self.task_counts, self.task_sums = (kind, size), counts, sums
            return
        if self.task != (kind, size):
            raise InputError("cannot merge the task sketches of two different tasks")
        self.task_counts = list(map(int.__add__, self.task_counts, counts))
        self.task_sums = [a + b for a, b in zip(self.task_sums, sums, strict=True)]

    def _task_sketch(self) -> TaskSketch | None:
        if self.task is None:
            return None
        return task_from_flat(*self.task, self.task_counts, self.task_sums)

    def add_shadow(self, version: str, counts: list[int], paired: PairedLoss | None = None) -> None:
        mine = self.shadow.get(version)
        if mine is not None:
            paired = merge_paired(self.shadow_paired.get(version), paired)
        if paired is not None:
            self.shadow_paired[version] = paired
        self.shadow[version] = counts if mine is None else list(map(int.__add__, mine, counts))

    def freeze(self) -> Aggregate:
        if self.key is None:
            raise InputError("nothing to merge: no report was added")
        features = tuple(
            FeatureSketch(
                name=name,
                kind="numeric" if kind == "numeric" else "categorical",
                bins=Histogram(tuple(counts[:bins])),
                missing=counts[bins],
                out_of_range=counts[bins + 1],
                unknown=counts[bins + 2],
            )
            for (name, kind, bins), counts in zip(self.layout, self.features, strict=True)
        )
        h = [Histogram(tuple(counts)) for counts in self.histograms]
        return Aggregate(
            fleet=self.key[0],
            model_name=self.key[1],
            model_version=self.key[2],
            window_start=float(self.window[0]),
            window_end=float(self.window[1]),
            reports=self.reports,
            devices=frozenset(self.devices.ids or ()),
            device_sketch=_sketch_of(self.devices),
            cohorts=frozenset(self.cohorts),
            device_groups=frozenset(self.groups),
            scored=self.totals[0],
            failed=self.totals[1],
            dropped_reports=self.totals[2],
            features=features,
            scores=ScoreSketch(counts=h[0], by_label=(h[1], h[2])),
            outcomes=ScoreSketch(counts=h[3], by_label=(h[4], h[5])),
            latency=LatencySketch(h[6]),
            segments=tuple(
                SegmentSketch.from_flat(name, levels, counts)
                for (name, levels), counts in zip(self.segment_layout, self.segments, strict=True)
            ),
            shadow=tuple(
                ShadowSketch.from_flat(version, counts, self.shadow_paired.get(version))
                for version, counts in sorted(self.shadow.items())
            ),
            task=self._task_sketch(),
        )

    def to_dict(self) -> dict[str, Any]:
        """``self.freeze().to_dict()``, without building (and checking) the sketches: the
        monitor's rollups are made of it at every batch. A field added to
        :meth:`Aggregate.to_dict` is added here too (a test holds the two equal)."""
        if self.key is None:
            raise InputError("nothing to merge: no report was added")
        features = []
        for (name, kind, bins), counts in zip(self.layout, self.features, strict=True):
            numeric = kind == "numeric"
            feature = {
                "name": name,
                "kind": "numeric" if numeric else "categorical",
                "bins": counts[:bins],
                "missing": counts[bins],
            }
            feature.update(
                {"out_of_range": counts[bins + 1]} if numeric else {"unknown": counts[bins + 2]}
            )
            features.append(feature)
        h = [list(counts) for counts in self.histograms]
        return {
            "fleet": self.key[0],
            "model_name": self.key[1],
            "model_version": self.key[2],
            "window_start": float(self.window[0]),
            "window_end": float(self.window[1]),
            "reports": self.reports,
            "devices": self.devices.to_json(),
            "cohorts": sorted(self.cohorts),
            "device_groups": sorted(self.groups),
            "scored": self.totals[0],
            "failed": self.totals[1],
            "dropped_reports": self.totals[2],
            "features": features,
            "scores": {"counts": h[0], "by_label": [h[1], h[2]]},
            "outcomes": {"counts": h[3], "by_label": [h[4], h[5]]},
            "latency": {"counts": h[6]},
            "segments": [
                SegmentSketch.from_flat(name, levels, counts).to_dict()
                for (name, levels), counts in zip(self.segment_layout, self.segments, strict=True)
            ],
            "shadow": [
                ShadowSketch.from_flat(version, counts, self.shadow_paired.get(version)).to_dict()
                for version, counts in sorted(self.shadow.items())
            ],
            **_task_field(self._task_sketch()),
        }


class _Sum(SketchSums):
    """The running sum of :func:`merge_all`, over reports and aggregates."""

    def __init__(self, first: Report | Aggregate):
        super().__init__()
        start = _as_aggregate(first)
        self.key = (start.fleet, start.model_name, start.model_version)
        self.layout = [(f.name, f.kind, f.bins.bins) for f in start.features]
        self.window = [start.window_start, start.window_end]
        self.reports = start.reports
        self.devices = start.distinct_devices()
        self.cohorts = set(start.cohorts)
        self.groups = set(start.device_groups)
        self.totals = [start.scored, start.failed, start.dropped_reports]
        self.features = [
            [*f.bins.counts, f.missing, f.out_of_range, f.unknown] for f in start.features
        ]
        self.histograms = [list(h.counts) for h in _histograms(start)]
        self.segment_layout = [(g.feature, g.levels) for g in start.segments]
        self.segments = [g.flat() for g in start.segments]
        for sketch in start.shadow:
            self.add_shadow(sketch.model_version, sketch.flat(), sketch.paired)
        if start.task is not None:
            self.add_task(start.task.kind, start.task.size, *start.task.flat())

    def add(self, item: Report | Aggregate) -> None:
        other = _as_aggregate(item)
        key = (other.fleet, other.model_name, other.model_version)
        if key != self.key:
            raise InputError(
                "cannot merge reports of fleet {!r} model {} {} with fleet {!r} model {} {}: "
                "merge only one fleet and model version at a time".format(
                    *(self.key or ("?", "?", "?")), *key
                )
            )
        layout = [(f.name, f.kind, f.bins.bins) for f in other.features]
        segment_layout = [(g.feature, g.levels) for g in other.segments]
        task = None if other.task is None else (other.task.kind, other.task.size)
        if layout != self.layout or segment_layout != self.segment_layout or task != self.task:
            raise InputError(
                f"cannot merge reports of model {self.key[1]} {self.key[2]} whose features "
                "differ (names, kinds, bins, task or classes): the reports disagree about the "
                "schema"
            )
        self.window[0] = min(self.window[0], other.window_start)
        self.window[1] = max(self.window[1], other.window_end)
        self.reports += other.reports
        self.devices.merge(other.distinct_devices())
        self.cohorts |= other.cohorts
        self.groups |= other.device_groups
        for i, value in enumerate((other.scored, other.failed, other.dropped_reports)):
            self.totals[i] += value
        for counts, feature in zip(self.features, other.features, strict=True):
            extra = (*feature.bins.counts, feature.missing, feature.out_of_range, feature.unknown)
            for i, value in enumerate(extra):
                counts[i] += value
        for counts, histogram in zip(self.histograms, _histograms(other), strict=True):
            for i, value in enumerate(histogram.counts):
                counts[i] += value
        self.segments = [
            [a + b for a, b in zip(mine, theirs.flat(), strict=True)]
            for mine, theirs in zip(self.segments, other.segments, strict=True)
        ]
        for sketch in other.shadow:
            self.add_shadow(sketch.model_version, sketch.flat(), sketch.paired)
        if other.task is not None:
            self.add_task(other.task.kind, other.task.size, *other.task.flat())


def _histograms(aggregate: Aggregate) -> tuple[Histogram, ...]:
    return (
        aggregate.scores.counts,
        *aggregate.scores.by_label,
        aggregate.outcomes.counts,
        *aggregate.outcomes.by_label,
        aggregate.latency.counts,
    )


def _task_field(task: TaskSketch | None) -> dict[str, Any]:
    """The ``task`` field of an aggregate's dict: absent for a binary model, so that binary
    rollup bodies stay as they were."""
    return {} if task is None else {"task": task.to_dict()}

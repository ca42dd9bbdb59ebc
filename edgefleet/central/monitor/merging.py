"""Merging stored reports into an :class:`Aggregate`, surviving bad rows
(docs/architecture.md §§7, 9).

Reports are validated before they are stored, but the store may hold rows that were not:
written by an older edgefleet (before reports were checked against their version), restored
from a backup, or typed in by hand. One such row must never take a fleet's pages down, so
every stored report is checked again as it is merged (the ingest fast path, then
:meth:`Report.decode` for the exact reason): its text, its counts, its columns against its
body, and its features against the version's :class:`VersionProfile` when the caller knows
it. A row that fails is skipped and named (:class:`SkippedReport`); the rest is merged.

Without a profile, the rows' own majority decides: rows are summed per feature layout, and
the layout of the most reports wins; the others are skipped and named. The first rows read
have no more say than the last.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field
from typing import Any

from edgefleet.central.monitor.column_sums import ColumnSums, flat_counts
from edgefleet.central.monitor.fastpath import fast_decode
from edgefleet.central.monitor.validation import Layout, VersionProfile, layout_of
from edgefleet.edge.aggregate import Aggregate, SketchSums
from edgefleet.edge.distinct import DistinctIds
from edgefleet.edge.report import Report
from edgefleet.edge.shadow import flat_of_json as shadow_flat_of_json
from edgefleet.edge.tasksketch import flat_of_json
from edgefleet.errors import InputError

__all__ = [
    "MAX_LAYOUTS",
    "MAX_NAMED",
    "MAX_REPORT_COUNT",
    "Merged",
    "SkippedReport",
    "StoredMerge",
    "StoredRow",
    "add_counts",
    "check_mergeable_counts",
]

MAX_REPORT_COUNT = 2**40
"""Most rows (scored, failed, labelled outcomes, timed calls) one report may count, and most
reports it may say were dropped: a trillion per window is beyond any device, and 2**23
reports at this bound still sum below the 2**63 - 1 a merged count may reach."""

MAX_NAMED = 50
"""Skipped reports named in a :class:`Merged` (all are counted)."""

MAX_LAYOUTS = 8
"""Distinct feature layouts summed side by side before further ones are skipped outright
(bounds the memory a table of forged rows can make a merge take)."""


def check_mergeable_counts(raw: dict[str, Any]) -> None:
    """:class:`InputError` if a valid report's totals exceed :data:`MAX_REPORT_COUNT`:
    counts a device cannot have made, whose sum would overflow the merged counts."""
    totals = (
        ("scored", raw["scored"]),
        ("failed", raw["failed"]),
        ("dropped_reports", raw["dropped_reports"]),
        ("outcomes", sum(raw["outcomes"]["counts"])),
        ("latency", sum(raw["latency"]["counts"])),
    )
    for name, total in totals:
        if total > MAX_REPORT_COUNT:
            raise InputError(
                f"report field {name!r} counts {total:,}, over the {MAX_REPORT_COUNT:,} one "
                "report may hold: no device scores that much in a window"
            )


@dataclass(frozen=True)
class StoredRow:
    """One row of the reports table, as the store reads it for a merge."""

    id: int
    fleet: str
    device_id: str
    sequence: int
    model_name: str
    model_version: str
    cohort: str
    device_group: str
    body: Any
    """The report JSON (text, unless the row was written by something else)."""


@dataclass(frozen=True)
class SkippedReport:
    """A stored report left out of a merge, and why."""

    id: int
    device_id: str
    sequence: int
    model_version: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device_id": self.device_id,
            "sequence": self.sequence,
            "model_version": self.model_version,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Merged:
    """The merge of the rows that could be merged (None if none), and those skipped: the
    first :data:`MAX_NAMED` named, all counted."""

    aggregate: Aggregate | None
    skipped: tuple[SkippedReport, ...] = ()
    skipped_total: int = 0


# The identity columns of a row, and the report fields that must say the same.
_IDENTITY = (
    ("fleet", "fleet"),
    ("device_id", "device_id"),
    ("sequence", "sequence"),
    ("model_name", "model_name"),
    ("model_version", "model_version"),
    ("cohort", "cohort"),
    ("device_group", "device_group"),
)


def checked_body(row: StoredRow) -> dict[str, Any]:
    """The stored report of ``row`` parsed and checked as at ingest, or
    :class:`InputError` saying why it cannot be merged."""
    if not isinstance(row.body, str):
        raise InputError(f"the stored body is {type(row.body).__name__}, not report JSON")
    payload = row.body.encode("utf-8", errors="surrogatepass")
    raw = fast_decode(payload)
    if raw is None:
        raw = Report.decode(payload).to_dict()  # raises the exact reason, or accepts
    check_mergeable_counts(raw)
    for column, key in _IDENTITY:
        if getattr(row, column) != raw[key]:
            raise InputError(
                f"the row's {column} is {getattr(row, column)!r} but its report says "
                f"{raw[key]!r}: the row was altered"
            )
    return raw


@dataclass
class _Group:
    """The running sum of the rows of one feature layout."""

    sums: SketchSums = field(default_factory=ColumnSums)
    rows: list[tuple[int, str, int, str]] = field(default_factory=list)
    """``(id, device, sequence, version)`` of the first MAX_NAMED rows (to name them)."""
    count: int = 0


class StoredMerge:
    """Merges stored rows of one fleet and model version, skipping (and naming) the rows
    that cannot be merged; see the module docstring."""

    def __init__(self, expected: VersionProfile | None = None) -> None:
        self.expected = expected
        self.key: tuple[str, str, str] | None = None
        self._groups: dict[Layout, _Group] = {}
        self._skipped: list[SkippedReport] = []
        self._skipped_total = 0

    def add(self, row: StoredRow) -> bool:
        """Merge one row (or skip it, with its reason); False if it is of another model
        version than the rows before it (the caller filtered too little)."""
        key = (row.fleet, row.model_name, row.model_version)
        if self.key is not None and key != self.key:
            return False
        try:
            raw = checked_body(row)
            layout = layout_of(raw)
            self._check_layout(layout)
        except InputError as error:
            self._skip(row.id, row.device_id, row.sequence, row.model_version, str(error))
            return True
        except Exception as error:  # a checker bug must not take the pages down either
            reason = f"{type(error).__name__} while checking it: {error}"
            self._skip(row.id, row.device_id, row.sequence, row.model_version, reason)
            return True
        self.key = key
        group = self._groups.get(layout)
        if group is None:
            group = self._groups[layout] = _Group()
        add_counts(group.sums, raw, layout)
        group.count += 1
        if len(group.rows) < MAX_NAMED:
            group.rows.append((row.id, row.device_id, row.sequence, row.model_version))
        return True

    def add_rollup(self, raw: dict[str, Any]) -> bool:
        """Merge one rollup body (an :meth:`Aggregate.to_dict` the store wrote itself from
        reports it had validated); False if it is of another model version than the rows
        before it. A rollup whose layout does not fit is skipped whole, counted but not
        named (its reports are summed, no longer listed)."""
        key = (raw["fleet"], raw["model_name"], raw["model_version"])
        if self.key is not None and key != self.key:
            return False
        layout = layout_of(raw)
        try:
            self._check_layout(layout)
        except InputError:
            self._skipped_total += int(raw["reports"])
            return True
        self.key = key
        group = self._groups.get(layout)
        if group is None:
            group = self._groups[layout] = _Group()
        add_counts(group.sums, raw, layout)
        group.count += int(raw["reports"])
        return True

    def _check_layout(self, layout: Layout) -> None:
        if self.expected is not None and layout != self.expected.layout:
            raise InputError(self.expected.difference(layout))
        if layout not in self._groups and len(self._groups) >= MAX_LAYOUTS:
            raise InputError(
                f"its features differ from {MAX_LAYOUTS} other layouts already seen: "
                "cannot be merged with them"
            )

    def _skip(self, row_id: int, device: str, sequence: int, version: str, reason: str) -> None:
        self._skipped_total += 1
        if len(self._skipped) < MAX_NAMED:
            self._skipped.append(SkippedReport(row_id, device, sequence, version, reason))

    def result(self) -> Merged:
        """The merge of the largest layout's rows; the other layouts' rows named as
        skipped."""
        if not self._groups:
            return Merged(None, tuple(self._skipped), self._skipped_total)
        # max() keeps the first of equals: the layout seen first wins a tie.
        chosen = max(self._groups.values(), key=operator.attrgetter("count"))
        for group in self._groups.values():
            if group is chosen:
                continue
            reason = (
                f"its features (names, kinds or bins) differ from those of the {chosen.count} "
                "other reports of this version: cannot be merged with them"
            )
            self._skipped_total += group.count
            for row_id, device, sequence, version in group.rows:
                if len(self._skipped) < MAX_NAMED:
                    self._skipped.append(SkippedReport(row_id, device, sequence, version, reason))
        return Merged(chosen.sums.freeze(), tuple(self._skipped), self._skipped_total)


def add_counts(total: SketchSums, raw: dict[str, Any], layout: Layout) -> None:
    """Add one checked report, or one rollup (docs/architecture.md §7b), to the sums of its
    layout: exact Python ints, summed in C by ``map(operator.add)``.

    This is the one place that says how the counts of report JSON are summed, for raw
    reports and rollups alike: a rollup's body is an :meth:`Aggregate.to_dict`, whose
    sketches have the very shape of a report's (the same ``to_dict``), plus ``reports``,
    ``devices``, ``cohorts`` and ``device_groups`` in place of one report's identity. A
    sketch field added to reports is added here (and to :class:`SketchSums` and
    :class:`Aggregate`) once, and rollups carry it with no rollup code changed."""
    if isinstance(total, ColumnSums) and total.key is not None and "devices" not in raw:
        total.hold(flat_counts(raw))
    else:
        _add_lists(total, raw, layout)
    _add_extras(total, raw)


def _add_lists(total: SketchSums, raw: dict[str, Any], layout: Layout) -> None:
    """Add the counts of ``raw`` list by list (the first one sets the layout)."""
    features = [
        [*f["bins"], f["missing"], f.get("out_of_range", 0), f.get("unknown", 0)]
        for f in raw["features"]
    ]
    histograms = [
        raw["scores"]["counts"],
        *raw["scores"]["by_label"],
        raw["outcomes"]["counts"],
        *raw["outcomes"]["by_label"],
        raw["latency"]["counts"],
    ]
    totals = (raw["scored"], raw["failed"], raw["dropped_reports"])
    segments = [_flat_segment(g) for g in raw.get("segments", ())]
    if total.key is None:
        total.key = (raw["fleet"], raw["model_name"], raw["model_version"])
        total.layout = [entry for entry in layout if entry[1] not in ("segment", "task")]
        total.segment_layout = [(g["feature"], len(g["scores"])) for g in raw.get("segments", ())]
        total.features, total.histograms = features, histograms
        total.segments = segments
        total.totals = list(totals)
    else:
        total.features = [
            list(map(operator.add, a, b)) for a, b in zip(total.features, features, strict=True)
        ]
        total.histograms = [
            list(map(operator.add, a, b)) for a, b in zip(total.histograms, histograms, strict=True)
        ]
        total.totals = [a + b for a, b in zip(total.totals, totals, strict=True)]
        total.segments = [
            list(map(operator.add, a, b)) for a, b in zip(total.segments, segments, strict=True)
        ]


def _add_extras(total: SketchSums, raw: dict[str, Any]) -> None:
    """Add what is not a plain count list: shadow and task sketches, window, identities."""
    shadow = raw.get("shadow")
    # A report holds one challenger's sketch; a rollup (an Aggregate) a list of them.
    for sketch in () if shadow is None else shadow if isinstance(shadow, list) else (shadow,):
        total.add_shadow(sketch["model_version"], *shadow_flat_of_json(sketch))
    task = raw.get("task")
    if task is not None:  # the same shape in a report and a rollup body
        total.add_task(*flat_of_json(task))
    total.window[0] = min(total.window[0], raw["window_start"])
    total.window[1] = max(total.window[1], raw["window_end"])
    if "devices" in raw:  # a rollup: many reports, sets of identities
        total.reports += raw["reports"]
        devices = raw["devices"]
        if isinstance(devices, list):  # a list of ids, as small rollups keep them
            total.devices.update(devices)
        else:
            total.devices.merge(DistinctIds.from_json(devices))
        total.cohorts.update(raw["cohorts"])
        total.groups.update(raw["device_groups"])
    else:
        total.reports += 1
        total.devices.add(raw["device_id"])
        total.cohorts.add(raw["cohort"])
        total.groups.add(raw["device_group"])


def _flat_segment(raw: dict[str, Any]) -> list[int]:
    """A report's segment sketch as :meth:`SegmentSketch.flat` lays it out (scores,
    negatives, positives, level by level): the form the sums add."""
    return [c for key in ("scores", "negatives", "positives") for level in raw[key] for c in level]


def dumps_skipped(skipped: tuple[SkippedReport, ...]) -> str:
    """The skipped reports as one log line's worth of JSON."""
    return json.dumps([s.to_dict() for s in skipped[:5]])

"""Time-bucketed rollups of reports (docs/architecture.md §7b): what a bucket is, how the
reports of one batch are summed into partial rollups, and which buckets and raw edges a
window ``[since, until)`` is read from. No database here: the store
(``storage/rollups.py``) writes and reads what this module plans.

A rollup sums the reports of one (fleet, model name, model version, cohort, device group,
feature layout) whose window *ended* in one bucket: a minute (:data:`MINUTE`) and an hour
(:data:`HOUR`). Its body is the :meth:`~edgefleet.edge.aggregate.Aggregate.to_dict` of the sum,
made and merged by :func:`edgefleet.central.monitor.merging.add_counts`, the very code that
merges raw reports: a sketch field added to reports flows into rollups with nothing changed
here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edgefleet.central.monitor.column_sums import ColumnSums
from edgefleet.central.monitor.merging import add_counts
from edgefleet.central.monitor.validation import Layout
from edgefleet.edge.aggregate import SketchSums

__all__ = [
    "HOUR",
    "MINUTE",
    "WIDTHS",
    "BatchRollups",
    "Partial",
    "ReadPlan",
    "RollupKey",
    "bucket_of",
    "layout_id",
    "plan_window",
    "sum_bodies",
]

MINUTE = 60
HOUR = 3600
WIDTHS = (MINUTE, HOUR)
"""The bucket widths, in seconds: every report is in one bucket of each."""

RollupKey = tuple[str, str, str, str, str, str, int, int]
"""``(fleet, model_name, model_version, cohort, device_group, layout_id, width, bucket)``."""


def bucket_of(window_end: float, width: int) -> int:
    """The start of the bucket of ``width`` seconds a window ending at ``window_end`` is in."""
    return math.floor(window_end / width) * width


@functools.lru_cache(maxsize=256)
def layout_id(layout: Layout) -> str:
    """A short, stable name of a feature layout: reports of different layouts cannot be
    summed, so they are rolled up apart and the majority chosen at read time, as raw merges
    do."""
    text = json.dumps(layout, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class Partial:
    """The running sum of the reports of one batch in one minute rollup, and the keys
    ``(fleet, device, sequence)`` of the reports in it (so that the store can leave out the
    ones it did not store after all)."""

    layout: Layout
    sums: SketchSums = field(default_factory=ColumnSums)
    rows: list[tuple[str, str, int]] = field(default_factory=list)

    def add(self, raw: dict[str, Any], key: tuple[str, str, int]) -> None:
        add_counts(self.sums, raw, self.layout)
        self.rows.append(key)

    def body(self) -> dict[str, Any]:
        return self.sums.to_dict()


def minute_key(raw: dict[str, Any], layout: Layout) -> RollupKey:
    """The minute rollup a parsed report belongs to."""
    return (
        raw["fleet"],
        raw["model_name"],
        raw["model_version"],
        raw["cohort"],
        raw["device_group"],
        layout_id(layout),
        MINUTE,
        bucket_of(float(raw["window_end"]), MINUTE),
    )


def hour_key(key: RollupKey) -> RollupKey:
    """The hour rollup a minute rollup belongs to."""
    return (*key[:6], HOUR, bucket_of(key[7], HOUR))


PartialRollup = tuple[int, str, tuple[tuple[str, str, int], ...]]
"""A rollup of one batch: how many reports, its body (JSON text) and the
``(fleet, device, sequence)`` of its reports."""


class BatchRollups:
    """The rollups of one batch of parsed reports, summed as they come (a parsed report is
    dropped at once: holding hundreds of them makes the garbage collector crawl), as the
    rows to append. The CPU-bound part: the monitor's worker process does it."""

    def __init__(self) -> None:
        self.minutes: dict[RollupKey, Partial] = {}

    def add(self, raw: dict[str, Any], layout: Layout, member: tuple[str, str, int]) -> None:
        key = minute_key(raw, layout)
        partial = self.minutes.get(key) or self.minutes.setdefault(key, Partial(layout))
        partial.add(raw, member)

    def result(self) -> dict[RollupKey, PartialRollup]:
        """Every minute rollup, and every hour rollup as the sum of its minutes."""
        result: dict[RollupKey, PartialRollup] = {}
        bodies: dict[RollupKey, dict[str, Any]] = {}
        hours: dict[RollupKey, list[RollupKey]] = {}
        for key, partial in self.minutes.items():
            bodies[key] = partial.body()
            result[key] = (partial.sums.reports, _text(bodies[key]), tuple(partial.rows))
            hours.setdefault(hour_key(key), []).append(key)
        for key, parts in hours.items():
            if len(parts) == 1:  # one minute of the hour in this batch: the same sum
                result[key] = result[parts[0]]
                continue
            body = sum_bodies((bodies[k] for k in parts), self.minutes[parts[0]].layout)
            members = tuple(m for k in parts for m in result[k][2])
            result[key] = (body["reports"], _text(body), members)
        return result


def _text(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


def sum_bodies(bodies: Iterable[dict[str, Any]], layout: Layout) -> dict[str, Any]:
    """Rollup or report bodies of one layout summed, as a rollup body."""
    total = SketchSums()
    for body in bodies:
        add_counts(total, body, layout)
    return total.to_dict()


@dataclass(frozen=True)
class ReadPlan:
    """Where the reports of a window ``[since, until)`` are read from: whole hours and
    whole minutes from rollups, the partial minutes at either edge from raw reports."""

    hours: tuple[int, int] | None
    """``[first, end)`` bucket starts of the hour rollups, or None."""
    minutes: tuple[tuple[int, int], ...]
    """``[first, end)`` ranges of minute bucket starts."""
    raw: tuple[tuple[float, float], ...]
    """``[since, until)`` ranges of window ends read from raw reports."""
    covered: tuple[float, float] | None = None
    """``[since, until)`` of the window ends the rollups cover (where raw reports that were
    not rolled up are read too), or None."""


def plan_window(since: float | None, until: float | None) -> ReadPlan:
    """The buckets that exactly cover ``[since, until)`` (None: unbounded), and the raw
    edges left: a window aligned to minutes reads rollups only."""
    if since is None and until is None:
        return ReadPlan(hours=(-(2**62), 2**62), minutes=(), raw=(), covered=(-math.inf, math.inf))
    low = -math.inf if since is None else since
    high = math.inf if until is None else until
    if low >= high:
        return ReadPlan(hours=None, minutes=(), raw=())
    first_minute = -(2**62) if since is None else math.ceil(low / MINUTE) * MINUTE
    end_minute = 2**62 if until is None else math.floor(high / MINUTE) * MINUTE
    if first_minute >= end_minute:
        return ReadPlan(hours=None, minutes=(), raw=((low, high),))
    covered = (
        low if since is None else float(first_minute),
        high if until is None else float(end_minute),
    )
    raw = []
    if since is not None and low < first_minute:
        raw.append((low, float(first_minute)))
    if until is not None and end_minute < high:
        raw.append((float(end_minute), high))
    first_hour = -(2**62) if since is None else math.ceil(first_minute / HOUR) * HOUR
    end_hour = 2**62 if until is None else math.floor(end_minute / HOUR) * HOUR
    if first_hour >= end_hour:
        return ReadPlan(None, ((first_minute, end_minute),), tuple(raw), covered)
    minutes = []
    if first_minute < first_hour:
        minutes.append((first_minute, first_hour))
    if end_hour < end_minute:
        minutes.append((end_hour, end_minute))
    return ReadPlan((first_hour, end_hour), tuple(minutes), tuple(raw), covered)

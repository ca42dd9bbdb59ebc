"""Fleet, cohort and group measures (docs/architecture.md §7b): merges and counts read
from rollups, bucket by bucket, plus the raw reports of the partial minutes at a window's
edges and those not rolled up; a device's from its raw reports.

A window ``[since, until)`` (by report window end) is cut by
:func:`~edgefleet.central.monitor.rollups.plan_window` into whole hours, whole minutes and
partial edge minutes, so the merge is exactly the merge of the raw reports of the window
(while they are kept), and its cost grows with the buckets asked for, not the reports.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from edgefleet.central.monitor.merging import Merged, StoredMerge, StoredRow, dumps_skipped
from edgefleet.central.monitor.rollups import HOUR, ReadPlan, plan_window
from edgefleet.central.monitor.storage.rollups import RollupStore
from edgefleet.central.monitor.storage.schema import (
    MERGE_COLUMNS,
    NOT_ROLLED_UP,
    reports,
    rollups,
    unindexed,
)
from edgefleet.central.monitor.validation import VersionProfile
from edgefleet.edge.aggregate import Aggregate
from edgefleet.edge.manifest import parse_version
from edgefleet.errors import InputError, StoreError

logger = logging.getLogger("edgefleet.monitor")

_NAMES = ("model_name", "model_version", "cohort", "device_group")
"""The filters a rollup can answer (a device's cannot: they read raw reports)."""


def _named(
    table: Table,
    names: Mapping[str, str | None],
    wrap: Callable[[ColumnElement[Any]], ColumnElement[Any]] = lambda column: column,
) -> list[ColumnElement[bool]]:
    return [wrap(table.c[name]) == value for name, value in names.items() if value is not None]


class FleetReads(RollupStore):
    """Merges and counts of a fleet's reports, from rollups where they can be."""

    def _filters(
        self,
        fleet: str,
        *,
        model_name: str | None = None,
        model_version: str | None = None,
        cohort: str | None = None,
        device_group: str | None = None,
        device_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[ColumnElement[bool]]:
        where = [reports.c.fleet == fleet]
        for column, value in (
            (reports.c.model_name, model_name),
            (reports.c.model_version, model_version),
            (reports.c.cohort, cohort),
            (reports.c.device_group, device_group),
            (reports.c.device_id, device_id),
        ):
            if value is not None:
                where.append(column == value)
        if since is not None:
            where.append(reports.c.window_end >= since)
        if until is not None:
            where.append(reports.c.window_end < until)
        return where

    @staticmethod
    def _unrolled(
        fleet: str, names: Mapping[str, str | None], since: float, until: float
    ) -> list[ColumnElement[bool]]:
        """The conditions on the raw reports not rolled up, written so that only their
        partial index serves them (``unindexed``, and the window as ``window_end + 0``:
        else SQLite reads a version's rows, or a window's, through another index and checks
        every report there). Those rows are few (SQL, an older edgefleet), and none after
        the next compaction."""
        where = [reports.c.fleet == fleet, NOT_ROLLED_UP, *_named(reports, names, unindexed)]
        end = reports.c.window_end + 0
        if math.isfinite(since):
            where.append(end >= since)
        if math.isfinite(until):
            where.append(end < until)
        return where

    @staticmethod
    def _rollup_filters(fleet: str, names: Mapping[str, str | None]) -> list[ColumnElement[bool]]:
        return [rollups.c.fleet == fleet, *_named(rollups, names)]

    def aggregate(
        self,
        fleet: str,
        *,
        model_version: str | None = None,
        cohort: str | None = None,
        device_group: str | None = None,
        device_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        model_name: str | None = None,
        expected: VersionProfile | None = None,
    ) -> Aggregate | None:
        """The merge of the stored reports matching every filter given (window_end in
        ``[since, until)``), or None if none match; :meth:`merged`'s aggregate, the reports
        it had to skip only logged. :class:`InputError` lists the versions if several match
        (pass ``model_version``)."""
        merged = self.merged(
            fleet,
            model_version=model_version,
            cohort=cohort,
            device_group=device_group,
            device_id=device_id,
            since=since,
            until=until,
            model_name=model_name,
            expected=expected,
        )
        return merged.aggregate

    def merged(
        self,
        fleet: str,
        *,
        model_version: str | None = None,
        cohort: str | None = None,
        device_group: str | None = None,
        device_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        model_name: str | None = None,
        expected: VersionProfile | None = None,
    ) -> Merged:
        """Like :meth:`aggregate`, with the stored reports that could not be merged named
        (:class:`~edgefleet.central.monitor.merging.Merged`): each raw row is checked again
        before it is merged, against ``expected`` (the version's profile) when given, else
        against the layout of most of the reports (rollups hold only reports checked when
        they arrived; one that does not fit is skipped whole, counted)."""
        names = {
            "model_name": model_name,
            "model_version": model_version,
            "cohort": cohort,
            "device_group": device_group,
        }
        total = StoredMerge(expected)
        if device_id is not None:
            where = self._filters(fleet, device_id=device_id, since=since, until=until, **names)
            self._merge_raw(total, where)
        else:
            self._merge_planned(total, fleet, names, plan_window(since, until))
        merged = total.result()
        if merged.skipped_total:
            logger.warning(
                "fleet %s: %d stored report(s) skipped, they cannot be merged: %s",
                fleet,
                merged.skipped_total,
                dumps_skipped(merged.skipped),
            )
        return merged

    def _merge_planned(
        self, total: StoredMerge, fleet: str, names: Mapping[str, str | None], plan: ReadPlan
    ) -> None:
        for body in self._rollup_bodies(self._rollup_filters(fleet, names), plan):
            if not total.add_rollup(body):
                raise InputError(self._mixed_versions(fleet, names))
        for low, high in plan.raw:
            self._merge_raw(total, self._filters(fleet, since=low, until=high, **names))
        if plan.covered is not None:
            low, high = plan.covered
            self._merge_raw(total, self._unrolled(fleet, names, low, high))

    def _merge_raw(self, total: StoredMerge, where: list[ColumnElement[bool]]) -> None:
        query = select(*MERGE_COLUMNS).where(*where).order_by(reports.c.id)
        try:
            with self.engine.connect() as connection:
                result = connection.execution_options(yield_per=2000).execute(query)
                for values in result:
                    if not total.add(StoredRow(*values)):
                        raise InputError(self._mixed_versions(str(values[1]), {}, where))
        except SQLAlchemyError as error:
            raise StoreError(f"cannot read reports from {self.display}: {error}") from None

    def device_ids(
        self,
        fleet: str,
        *,
        model_version: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[str]:
        """The devices with raw reports (of ``model_version``) whose window ended in
        ``[since, until)``, sorted: the ones a device-level view can read (a merge from
        rollups counts devices, past a few hundred without naming them)."""
        where = self._filters(fleet, model_version=model_version, since=since, until=until)
        query = select(reports.c.device_id).where(*where).distinct()
        return sorted(str(device) for (device,) in self._rows(query))

    def _mixed_versions(
        self,
        fleet: str,
        names: Mapping[str, str | None],
        where: list[ColumnElement[bool]] | None = None,
    ) -> str:
        if where is None:
            found = self._version_counts(fleet, names)
        else:
            query = (
                select(reports.c.model_name, reports.c.model_version, func.count())
                .where(*where)
                .group_by(reports.c.model_name, reports.c.model_version)
            )
            found = [(str(n), str(v), int(c)) for n, v, c in self._rows(query)]
        listed = ", ".join(f"{name} {version} ({count} reports)" for name, version, count in found)
        return (
            f"reports of several model versions match ({listed}): pass model_version (and "
            "model_name) to aggregate one, since their histograms are binned differently"
        )

    def report_count(
        self,
        fleet: str,
        *,
        model_version: str | None = None,
        cohort: str | None = None,
        device_group: str | None = None,
        device_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        model_name: str | None = None,
    ) -> int:
        """How many stored reports :meth:`aggregate` with the same filters would merge."""
        names = {
            "model_name": model_name,
            "model_version": model_version,
            "cohort": cohort,
            "device_group": device_group,
        }
        if device_id is not None:
            where = self._filters(fleet, device_id=device_id, since=since, until=until, **names)
            return self._raw_count(where)
        plan = plan_window(since, until)
        count = self._rollup_count(self._rollup_filters(fleet, names), plan)
        for low, high in plan.raw:
            count += self._raw_count(self._filters(fleet, since=low, until=high, **names))
        if plan.covered is not None:
            low, high = plan.covered
            count += self._raw_count(self._unrolled(fleet, names, low, high))
        return count

    def _raw_count(self, where: list[ColumnElement[bool]]) -> int:
        return int(self._scalar(select(func.count()).select_from(reports).where(*where)))

    def _rollup_count(self, where: list[ColumnElement[bool]], plan: ReadPlan) -> int:
        ranges = [(HOUR, plan.hours)] if plan.hours is not None else []
        ranges += [(60, r) for r in plan.minutes]
        count = 0
        for width, (first, end) in ranges:
            query = select(func.coalesce(func.sum(rollups.c.reports), 0)).where(
                *where, rollups.c.width == width, rollups.c.bucket >= first, rollups.c.bucket < end
            )
            count += int(self._scalar(query))
        return count

    def model_versions(self, fleet: str) -> list[tuple[str, str, int]]:
        """``(model_name, model_version, reports)`` of every version a fleet reported on."""
        return self._version_counts(fleet, {})

    def _version_counts(
        self, fleet: str, names: Mapping[str, str | None]
    ) -> list[tuple[str, str, int]]:
        counts: dict[tuple[str, str], int] = {}
        rolled = (
            select(rollups.c.model_name, rollups.c.model_version, func.sum(rollups.c.reports))
            .where(*self._rollup_filters(fleet, names), rollups.c.width == HOUR)
            .group_by(rollups.c.model_name, rollups.c.model_version)
        )
        unrolled = (
            select(reports.c.model_name, reports.c.model_version, func.count())
            .where(*self._unrolled(fleet, names, -math.inf, math.inf))
            .group_by(reports.c.model_name, reports.c.model_version)
        )
        for query in (rolled, unrolled):
            for name, version, count in self._rows(query):
                key = (str(name), str(version))
                counts[key] = counts.get(key, 0) + int(count)
        rows = [(name, version, count) for (name, version), count in counts.items()]
        return sorted(rows, key=lambda r: (r[0], _version_key(r[1])))

    def fleets(self) -> list[str]:
        """Every fleet with reports (rolled up or not)."""
        rolled = select(rollups.c.fleet).where(rollups.c.width == HOUR).distinct()
        unrolled = select(reports.c.fleet).where(NOT_ROLLED_UP).distinct()
        return sorted({str(f) for query in (rolled, unrolled) for (f,) in self._rows(query)})


def _version_key(version: str) -> tuple[int, int, int]:
    try:
        return parse_version(version)
    except InputError:
        return (0, 0, 0)


__all__ = ["FleetReads"]

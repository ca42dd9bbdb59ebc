"""Rollups in the database (docs/architecture.md §7b): appended with the reports they sum,
folded per writer as the monitor goes, read bucket by bucket.

Each store (one per monitor process) writes under its own ``writer`` name, and only ever
*inserts* rollup rows while ingesting: two monitors never touch the same row, so there is
no hot row on PostgreSQL however many share a subscription. Every :data:`FOLD_SECONDS` a
store folds its own rows of the buckets it wrote into one per key, so a bucket holds about
one row per key and monitor. Reads merge whatever rows a bucket holds.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from edgefleet.central.monitor.rollups import (
    HOUR,
    MINUTE,
    PartialRollup,
    ReadPlan,
    RollupKey,
    sum_bodies,
)
from edgefleet.central.monitor.storage.base import StoreBase
from edgefleet.central.monitor.storage.schema import rollups
from edgefleet.central.monitor.validation import layout_of
from edgefleet.errors import StoreError

_CHUNK = 200
"""Buckets per statement of a fold (bounds the statement's size)."""
FOLD_SECONDS = 5.0
"""How often a store folds the rollup rows it appended (bounds the rows a bucket holds)."""

_KEY_COLUMNS = (
    rollups.c.fleet,
    rollups.c.model_name,
    rollups.c.model_version,
    rollups.c.cohort,
    rollups.c.device_group,
    rollups.c.layout,
    rollups.c.width,
    rollups.c.bucket,
)


def rollup_row(key: RollupKey, writer: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The rollups table row of one rollup."""
    return _text_row(key, writer, int(body["reports"]), json.dumps(body, separators=(",", ":")))


def _text_row(key: RollupKey, writer: str, reports: int, text: str) -> dict[str, Any]:
    fleet, name, version, cohort, group, layout, width, bucket = key
    return {
        "fleet": fleet,
        "model_name": name,
        "model_version": version,
        "cohort": cohort,
        "device_group": group,
        "layout": layout,
        "width": width,
        "bucket": bucket,
        "writer": writer,
        "reports": reports,
        "body": text,
    }


class RollupStore(StoreBase):
    """Writing, folding and reading rollups."""

    def _append_rollups(
        self, connection: Connection, partials: Mapping[RollupKey, PartialRollup]
    ) -> None:
        """Append the rollups of one transaction's reports (minutes and hours)."""
        rows = [
            _text_row(key, self.writer, count, text)
            for key, (count, text, _) in sorted(partials.items())
        ]
        if rows:
            connection.execute(insert(rollups), rows)
        appended = [tuple(r[c.name] for c in _KEY_COLUMNS) for r in rows]
        with self._fold_lock:
            for key in appended:
                self._pending[key] = self._pending.get(key, 0) + 1

    def fold_rollups(self, *, force: bool = False) -> int:
        """Fold the rollup rows this store appended since its last fold into one per key
        (every :data:`FOLD_SECONDS`, or now with ``force``), in one transaction; how many
        rows it removed."""
        with self._fold_lock:
            if not force and time.monotonic() - self._last_fold < FOLD_SECONDS:
                return 0
            self._last_fold = time.monotonic()
            # Every key appended to since the last fold: a key with one new row may have
            # an older one (a late report, a backfill), and reads merge rows one by one.
            due, self._pending = sorted(self._pending), {}
        if not due:
            return 0
        buckets: dict[tuple[str, int], set[int]] = defaultdict(set)
        for key in due:
            buckets[(key[0], key[6])].add(key[7])
        try:
            removed = sum(
                self.fold_buckets(fleet, width, sorted(found), writer=self.writer)
                for (fleet, width), found in sorted(buckets.items())
            )
        except SQLAlchemyError as error:
            with self._fold_lock:
                for key in due:  # folded next time
                    self._pending[key] = self._pending.get(key, 0) + 1
            raise StoreError(f"cannot fold rollups in {self.display}: {error}") from None
        return removed

    def fold_buckets(
        self, fleet: str, width: int, buckets: list[int], *, writer: str | None
    ) -> int:
        """Fold the rows of some buckets (of one writer, or of all into this store's) into
        one per key, in one transaction; the number of rows removed."""
        removed = 0
        with self.engine.begin() as connection:
            for start in range(0, len(buckets), _CHUNK):
                chunk = buckets[start : start + _CHUNK]
                where = [
                    rollups.c.fleet == fleet,
                    rollups.c.width == width,
                    rollups.c.bucket.in_(chunk),
                ]
                if writer is not None:
                    where.append(rollups.c.writer == writer)
                removed += self._fold_where(connection, where)
        return removed

    def _fold_where(self, connection: Connection, where: list[ColumnElement[bool]]) -> int:
        # A write first: it takes SQLite's write lock before the read (a read first could
        # not write after another monitor's commit) and PostgreSQL's row locks.
        connection.execute(update(rollups).where(*where).values(writer=rollups.c.writer))
        query = select(rollups.c.id, *_KEY_COLUMNS, rollups.c.body).where(*where)
        groups: dict[RollupKey, list[tuple[int, str]]] = defaultdict(list)
        for row in connection.execute(query):
            key: RollupKey = tuple(row[1:9])
            groups[key].append((int(row[0]), row[9]))
        return sum(
            self._fold_group(connection, key, members)
            for key, members in sorted(groups.items())
            if len(members) > 1
        )

    def _fold_group(
        self, connection: Connection, key: RollupKey, members: list[tuple[int, str]]
    ) -> int:
        """Replace the rows of one key by their sum; how many rows fewer."""
        bodies = [json.loads(body) for _, body in members]
        total = sum_bodies(bodies, layout_of(bodies[0]))
        ids = [row_id for row_id, _ in members]
        connection.execute(delete(rollups).where(rollups.c.id.in_(ids)))
        connection.execute(insert(rollups), [rollup_row(key, self.writer, total)])
        return len(ids) - 1

    # -- reads -----------------------------------------------------------------------------

    def _rollup_bodies(
        self, filters: list[ColumnElement[bool]], plan: ReadPlan
    ) -> Iterator[dict[str, Any]]:
        """The bodies of the rollups ``plan`` reads, matching ``filters`` (on the rollups
        table's columns)."""
        ranges = [(HOUR, plan.hours)] if plan.hours is not None else []
        ranges += [(MINUTE, r) for r in plan.minutes]
        if not ranges:
            return
        try:
            with self.engine.connect() as connection:
                for width, (first, end) in ranges:
                    query = select(rollups.c.body).where(
                        *filters,
                        rollups.c.width == width,
                        rollups.c.bucket >= first,
                        rollups.c.bucket < end,
                    )
                    for (body,) in connection.execute(query):
                        yield json.loads(body)
        except SQLAlchemyError as error:
            raise StoreError(f"cannot read rollups from {self.display}: {error}") from None

    def rollup_rows(self, fleet: str | None = None) -> int:
        """How many rollup rows the database holds (of one fleet, or all)."""
        query = select(func.count()).select_from(rollups)
        if fleet is not None:
            query = query.where(rollups.c.fleet == fleet)
        return int(self._scalar(query))

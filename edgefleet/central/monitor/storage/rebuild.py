"""Summing rollups again from raw reports (docs/architecture.md §7b): after a device's
reports are deleted (``purge.py``), and when compaction rolls up reports stored without
rollups (by SQL, an older edgefleet, a restored backup)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from edgefleet.central.monitor.merging import StoredRow, checked_body
from edgefleet.central.monitor.rollups import WIDTHS, Partial, RollupKey, bucket_of, minute_key
from edgefleet.central.monitor.storage.rollups import rollup_row
from edgefleet.central.monitor.storage.schema import MERGE_COLUMNS, NOT_ROLLED_UP, reports, rollups
from edgefleet.central.monitor.validation import layout_of
from edgefleet.errors import InputError

BucketOf = tuple[str, str, str, str, int, int]
"""``(model_name, model_version, cohort, device_group, width, bucket)`` of one fleet."""


def rebuild_rollups(connection: Connection, fleet: str, gone: Sequence[Any], writer: str) -> None:
    """Sum again, from the rolled-up reports that remain, every rollup the ``gone`` rows
    (with model_name, model_version, cohort, device_group and window_end) were in."""
    if not gone:
        return
    if connection.dialect.name == "postgresql":
        # Monitors append rollups meanwhile: they wait, so that a report is neither summed
        # here (committed before) and appended too, nor lost.
        connection.exec_driver_sql("LOCK TABLE monitor_rollups IN SHARE ROW EXCLUSIVE MODE")
    buckets: set[BucketOf] = set()
    for row in gone:
        for width in WIDTHS:
            bucket = bucket_of(float(row.window_end), width)
            buckets.add(
                (row.model_name, row.model_version, row.cohort, row.device_group, width, bucket)
            )
    for name, version, cohort, group, width, bucket in sorted(buckets):
        where = (
            rollups.c.fleet == fleet,
            rollups.c.model_name == name,
            rollups.c.model_version == version,
            rollups.c.cohort == cohort,
            rollups.c.device_group == group,
            rollups.c.width == width,
            rollups.c.bucket == bucket,
        )
        connection.execute(delete(rollups).where(*where))
        kept = select(*MERGE_COLUMNS).where(
            reports.c.fleet == fleet,
            reports.c.model_name == name,
            reports.c.model_version == version,
            reports.c.cohort == cohort,
            reports.c.device_group == group,
            reports.c.window_end >= bucket,
            reports.c.window_end < bucket + width,
            reports.c.rolled_up == 1,
        )
        summed = _sum_rows(connection.execute(kept), width)
        if summed:
            connection.execute(insert(rollups), [rollup_row(k, writer, b) for k, b in summed])


def _sum_rows(rows: Iterable[Any], width: int) -> list[tuple[RollupKey, dict[str, Any]]]:
    """Stored rows summed per rollup key of ``width`` (rows that no longer check are left
    out, as reads leave them out)."""
    partials: dict[RollupKey, Partial] = {}
    for values in rows:
        row = StoredRow(*values)
        try:
            raw = checked_body(row)
        except InputError:
            continue
        layout = layout_of(raw)
        key = minute_key(raw, layout)
        if width != key[6]:
            key = (*key[:6], width, bucket_of(float(raw["window_end"]), width))
        partial = partials.get(key) or partials.setdefault(key, Partial(layout))
        partial.add(raw, (row.fleet, row.device_id, row.sequence))
    return [(key, partial.body()) for key, partial in sorted(partials.items())]


def roll_up_pending(connection: Connection, fleet: str, writer: str, limit: int) -> int:
    """Roll up (both widths) at most ``limit`` of the fleet's reports stored without
    rollups that still check, and mark them rolled up; how many rows were looked at (the
    ones that do not check stay as they are, merged and named raw)."""
    # An UPDATE first: it takes SQLite's write lock before the read.
    connection.execute(update(reports).where(reports.c.id < 0).values(rolled_up=0))
    query = (
        select(*MERGE_COLUMNS)
        .where(reports.c.fleet == fleet, NOT_ROLLED_UP)
        .order_by(reports.c.id)
        .limit(limit)
    )
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()  # a second compaction waits, then skips them
    pending = connection.execute(query).all()
    if not pending:
        return 0
    good: list[Any] = []
    for values in pending:
        try:
            checked_body(StoredRow(*values))
        except InputError:
            continue
        good.append(values)
    rows = []
    for width in WIDTHS:
        rows += [rollup_row(k, writer, b) for k, b in _sum_rows(good, width)]
    if rows:
        connection.execute(insert(rollups), rows)
    ids = [int(values[0]) for values in good]
    for start in range(0, len(ids), 500):
        connection.execute(
            update(reports).where(reports.c.id.in_(ids[start : start + 500])).values(rolled_up=1)
        )
    return len(pending)

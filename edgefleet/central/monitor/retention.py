"""Retention and compaction of the monitor database (docs/architecture.md §7b).

Raw reports are kept :attr:`Retention.raw_days` (default 7), minute rollups
:attr:`Retention.minute_days` (30), hour rollups :attr:`Retention.hour_days` (365), all
by the end of the report windows. :func:`compact`, in order, per fleet:

1. rolls up the reports stored without rollups (by SQL, an older edgefleet, a restored
   backup, a store with rollups off) that still check, so nothing is lost in step 3;
2. folds the rollup rows of every bucket older than :data:`FOLD_AFTER` into one per key
   (across monitors: each monitor folds only its own as it goes);
3. deletes what expired, a chunk of rows per transaction.

Every step is a short transaction of its own, so it runs safely while monitors ingest: they
only append rollup rows of recent buckets and insert new reports; a fold locks the rows it
replaces (PostgreSQL) or holds the write lock (SQLite) from its first statement.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Table, delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from edgefleet.central.monitor.rollups import HOUR, MINUTE
from edgefleet.central.monitor.storage.rebuild import roll_up_pending
from edgefleet.central.monitor.store import MonitorStore, devices, reports, rollups
from edgefleet.errors import InputError, StoreError

__all__ = ["FOLD_AFTER", "Compaction", "Retention", "compact"]

DAY = 86_400.0
FOLD_AFTER = 2 * HOUR
"""Buckets older than this are folded across monitors (newer ones still receive reports)."""
CHUNK = 5_000
"""Rows per transaction when rolling up or deleting: short transactions, ingest goes on."""


@dataclass(frozen=True)
class Retention:
    """How long each kind of row is kept, in days (by the end of the report windows)."""

    raw_days: float = 7.0
    minute_days: float = 30.0
    hour_days: float = 365.0

    def __post_init__(self) -> None:
        for name in ("raw_days", "minute_days", "hour_days"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"{name} must be a positive number of days, not {value!r}")


@dataclass(frozen=True)
class Compaction:
    """What one :func:`compact` did."""

    rolled_up: int = 0
    folded: int = 0
    raw_deleted: int = 0
    minute_deleted: int = 0
    hour_deleted: int = 0
    seconds: float = 0.0


def compact(
    store: MonitorStore,
    retention: Retention | None = None,
    *,
    now: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> Compaction:
    """Roll up, fold and expire, fleet by fleet (see the module docstring)."""
    keep = retention or Retention()
    moment = time.time() if now is None else now
    say = progress or (lambda _: None)
    started = time.monotonic()
    totals = [0, 0, 0, 0, 0]
    try:
        for fleet in _fleets(store):
            done = _compact_fleet(store, fleet, keep, moment)
            totals = [a + b for a, b in zip(totals, done, strict=True)]
            say(
                f"fleet {fleet}: {done[0]:,} report(s) rolled up, {done[1]:,} rollup row(s) "
                f"folded, deleted {done[2]:,} raw report(s), {done[3]:,} minute and "
                f"{done[4]:,} hour rollup row(s)"
            )
    except SQLAlchemyError as error:
        raise StoreError(f"cannot compact {store.display}: {error}") from None
    rolled, folded, raw, minute, hour = totals
    return Compaction(rolled, folded, raw, minute, hour, time.monotonic() - started)


def _fleets(store: MonitorStore) -> list[str]:
    # The device rows name every fleet ingested with rollups; store.fleets() the others.
    found = {str(f) for (f,) in store._rows(select(devices.c.fleet).distinct())}
    return sorted(found | set(store.fleets()))


def _compact_fleet(
    store: MonitorStore, fleet: str, keep: Retention, now: float
) -> tuple[int, int, int, int, int]:
    rolled = 0
    while True:
        with store.engine.begin() as connection:
            seen = roll_up_pending(connection, fleet, store.writer, CHUNK)
        rolled += seen
        if seen < CHUNK:
            break
    folded = _fold_old(store, fleet, now - FOLD_AFTER)
    raw = _delete_chunks(store, reports, [reports.c.window_end < now - keep.raw_days * DAY], fleet)
    minute = _delete_chunks(
        store,
        rollups,
        [rollups.c.width == MINUTE, rollups.c.bucket < now - keep.minute_days * DAY],
        fleet,
    )
    hour = _delete_chunks(
        store,
        rollups,
        [rollups.c.width == HOUR, rollups.c.bucket < now - keep.hour_days * DAY],
        fleet,
    )
    return rolled, folded, raw, minute, hour


def _fold_old(store: MonitorStore, fleet: str, before: float) -> int:
    """Fold the buckets older than ``before`` that hold more than one row of a key."""
    key = (
        rollups.c.width,
        rollups.c.bucket,
        rollups.c.model_name,
        rollups.c.model_version,
        rollups.c.cohort,
        rollups.c.device_group,
        rollups.c.layout,
    )
    query = (
        select(rollups.c.width, rollups.c.bucket)
        .where(rollups.c.fleet == fleet, rollups.c.bucket < before - rollups.c.width)
        .group_by(*key)
        .having(func.count() > 1)
        .distinct()
    )
    buckets: dict[int, set[int]] = {}
    for width, bucket in store._rows(query):
        buckets.setdefault(int(width), set()).add(int(bucket))
    return sum(
        store.fold_buckets(fleet, width, sorted(found), writer=None)
        for width, found in sorted(buckets.items())
    )


def _delete_chunks(
    store: MonitorStore, table: Table, where: list[ColumnElement[bool]], fleet: str
) -> int:
    """Delete the rows of ``fleet`` matching ``where``, :data:`CHUNK` per transaction."""
    condition = [table.c.fleet == fleet, *where]
    deleted = 0
    while True:
        chosen = select(table.c.id).where(*condition).limit(CHUNK).scalar_subquery()
        with store.engine.begin() as connection:
            count = connection.execute(delete(table).where(table.c.id.in_(chosen))).rowcount
        deleted += int(count)
        if count < CHUNK:
            return deleted

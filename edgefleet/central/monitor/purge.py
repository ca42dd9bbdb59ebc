"""Removing a device's reports (docs/architecture.md §10): what ``edgefleet reports delete``
does for a compromised device.

Everything derived from the reports goes with them, in the same transaction: the rollups
of every bucket the deleted reports were in are summed again from the reports that stay
(docs/architecture.md §7b), and the device's row of totals loses them, so every page,
measure and alert rule forgets them. Reports past the raw retention exist only inside
rollups, which no longer say which device sent what: those are not removed. When the whole
history of the device goes (no time bounds), its device row and its last retained status
row go too: the device's outbox counts and update state came from the same identity. What
stays: its quarantined messages and refusal count (the evidence), and the alerts and
decisions already taken (the audit trail; they carry their own evidence).

Time bounds select reports by the end of their window, as every query of the store does:
``since <= window_end < until``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from edgefleet.central.monitor.storage.rebuild import rebuild_rollups
from edgefleet.central.monitor.store import MonitorStore, device_status, devices, reports
from edgefleet.errors import InputError, StoreError

__all__ = ["DeviceRecords", "count_device_records", "delete_device_records"]


@dataclass(frozen=True)
class DeviceRecords:
    """The records of one device, within optional time bounds, that a deletion covers."""

    fleet: str
    device_id: str
    since: float | None
    until: float | None
    reports: int
    statuses: int
    """1 if the device's status row goes too (only without time bounds), else 0."""

    @property
    def total(self) -> int:
        return self.reports + self.statuses


def _check(since: float | None, until: float | None) -> None:
    if since is not None and until is not None and since >= until:
        raise InputError(f"--since ({since}) must be before --until ({until})")


def _where(
    fleet: str, device_id: str, since: float | None, until: float | None
) -> list[ColumnElement[bool]]:
    where = [reports.c.fleet == fleet, reports.c.device_id == device_id]
    if since is not None:
        where.append(reports.c.window_end >= since)
    if until is not None:
        where.append(reports.c.window_end < until)
    return where


_GONE_COLUMNS = (
    reports.c.model_name,
    reports.c.model_version,
    reports.c.cohort,
    reports.c.device_group,
    reports.c.window_end,
    reports.c.scored,
    reports.c.failed,
)


def _forget_totals(
    connection: Connection, fleet: str, device_id: str, gone: Sequence[Any], *, whole: bool
) -> None:
    """The device's row of totals without the deleted reports (gone with them all)."""
    where = (devices.c.fleet == fleet, devices.c.device_id == device_id)
    if whole:
        connection.execute(delete(devices).where(*where))
        return
    if gone:
        connection.execute(
            update(devices)
            .where(*where)
            .values(
                reports=devices.c.reports - len(gone),
                scored=devices.c.scored - min(sum(int(r.scored) for r in gone), 2**62),
                failed=devices.c.failed - min(sum(int(r.failed) for r in gone), 2**62),
            )
        )


def _status_where(fleet: str, device_id: str) -> list[ColumnElement[bool]]:
    return [device_status.c.fleet == fleet, device_status.c.device_id == device_id]


def _count(
    connection: Connection, fleet: str, device_id: str, since: float | None, until: float | None
) -> DeviceRecords:
    count = select(func.count()).select_from(reports)
    found = int(
        connection.execute(count.where(*_where(fleet, device_id, since, until))).scalar_one()
    )
    statuses = 0
    if since is None and until is None:
        status = select(func.count()).select_from(device_status)
        statuses = int(
            connection.execute(status.where(*_status_where(fleet, device_id))).scalar_one()
        )
    return DeviceRecords(fleet, device_id, since, until, found, statuses)


def count_device_records(
    store: MonitorStore,
    fleet: str,
    device_id: str,
    *,
    since: float | None = None,
    until: float | None = None,
) -> DeviceRecords:
    """What :func:`delete_device_records` would delete now (to confirm it first)."""
    _check(since, until)
    try:
        with store.engine.connect() as connection:
            return _count(connection, fleet, device_id, since, until)
    except SQLAlchemyError as error:
        raise StoreError(f"cannot count reports in {store.display}: {error}") from None


def delete_device_records(
    store: MonitorStore,
    fleet: str,
    device_id: str,
    *,
    since: float | None = None,
    until: float | None = None,
) -> DeviceRecords:
    """Delete the device's reports (and, without bounds, its status row) in one
    transaction; what was deleted. All or nothing: :class:`StoreError` leaves every row."""
    _check(since, until)
    try:
        with store.engine.begin() as connection:
            # DELETE first: it takes SQLite's write lock before any read.
            gone = connection.execute(
                delete(reports)
                .where(*_where(fleet, device_id, since, until))
                .returning(*_GONE_COLUMNS)
            ).all()
            deleted = len(gone)
            rebuild_rollups(connection, fleet, gone, store.writer)
            _forget_totals(
                connection, fleet, device_id, gone, whole=since is None and until is None
            )
            statuses = 0
            if since is None and until is None:
                statuses = connection.execute(
                    delete(device_status).where(*_status_where(fleet, device_id))
                ).rowcount
    except SQLAlchemyError as error:
        raise StoreError(f"cannot delete reports in {store.display}: {error}") from None
    return DeviceRecords(fleet, device_id, since, until, int(deleted), int(statuses))

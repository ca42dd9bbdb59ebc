"""Each device of a fleet in one row (docs/architecture.md §7b): its latest report (by
arrival) and its totals, kept by an upsert that adds in the transaction that stores the
reports, so that the device list costs one row per device, not a scan of every report.

Rows written by SQL (not rolled up) are summarised from the reports table and combined.
Totals saturate at :data:`MAX_TOTAL` rather than overflow a 64-bit column: only a device
forging its counts gets near.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from edgefleet.central.monitor.storage.base import StoreBase
from edgefleet.central.monitor.storage.records import DeviceSummary, FleetDevices
from edgefleet.central.monitor.storage.schema import NOT_ROLLED_UP, devices, reports, unindexed
from edgefleet.errors import StoreError

MAX_TOTAL = 2**62
"""Where a device's totals stop growing (a sum past 2**63 - 1 would fail the insert)."""

_LATEST = (
    "device_group",
    "model_name",
    "model_version",
    "cohort",
    "last_seen",
    "last_window_end",
    "last_sequence",
)


def _device_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per device of a batch: its last report (in arrival order) and its sums."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["fleet"], row["device_id"])
        entry = found.get(key)
        totals = (1, row["scored"], row["failed"])
        if entry is not None:
            totals = (
                entry["reports"] + 1,
                entry["scored"] + totals[1],
                entry["failed"] + totals[2],
            )
        found[key] = {
            "fleet": row["fleet"],
            "device_id": row["device_id"],
            "device_group": row["device_group"],
            "model_name": row["model_name"],
            "model_version": row["model_version"],
            "cohort": row["cohort"],
            "last_seen": row["received"],
            "last_window_end": row["window_end"],
            "last_sequence": row["sequence"],
            "reports": totals[0],
            "scored": min(totals[1], MAX_TOTAL),
            "failed": min(totals[2], MAX_TOTAL),
        }
    return [found[key] for key in sorted(found)]


class DeviceStore(StoreBase):
    """The device list: one row per device, plus the reports not rolled up."""

    def _count_devices(self, connection: Connection, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        statement = self._insert(devices)
        new = statement.excluded
        newer = new.last_seen >= devices.c.last_seen
        values: dict[str, Any] = {
            name: case((newer, new[name]), else_=devices.c[name]) for name in _LATEST
        }
        for name in ("reports", "scored", "failed"):
            values[name] = case(
                (devices.c[name] > MAX_TOTAL - new[name], MAX_TOTAL),
                else_=devices.c[name] + new[name],
            )
        # Sorted by (fleet, device): two monitors lock the rows in one order (no deadlock).
        connection.execute(
            statement.on_conflict_do_update(index_elements=["fleet", "device_id"], set_=values),
            _device_rows(rows),
        )

    def devices(self, fleet: str) -> list[DeviceSummary]:
        """Every device that reported to ``fleet``, by device id."""
        found = {s.device_id: s for s in self._kept_devices(fleet)}
        for summary in self._unrolled_devices(fleet):
            before = found.get(summary.device_id)
            found[summary.device_id] = summary if before is None else _combined(before, summary)
        return [found[device] for device in sorted(found)]

    def device_totals(self, fleet: str, online_since: float) -> FleetDevices:
        """The fleet's devices counted, ``online`` those whose latest report arrived at or
        after ``online_since``: summed by the database over the device rows, unless some
        reports are not rolled up (then from :meth:`devices`, which combines them)."""
        has_unrolled = select(reports.c.id).where(reports.c.fleet == fleet, NOT_ROLLED_UP)
        if self._rows(has_unrolled.limit(1)):
            return _totals_of(self.devices(fleet), online_since)
        on = case((devices.c.last_seen >= online_since, 1), else_=0)
        query = (
            select(
                devices.c.model_name,
                devices.c.model_version,
                func.count(),
                func.sum(on),
                func.sum(devices.c.scored),
                func.sum(devices.c.failed),
                func.max(devices.c.last_seen),
            )
            .where(devices.c.fleet == fleet)
            .group_by(devices.c.model_name, devices.c.model_version)
        )
        try:
            with self.engine.connect() as connection:
                rows = connection.execute(query).all()
        except DBAPIError as error:
            if "overflow" not in str(error).lower():  # as in _unrolled_totals
                raise StoreError(f"cannot read devices from {self.display}: {error}") from None
            return _totals_of(self.devices(fleet), online_since)
        return FleetDevices(
            total=sum(int(r[2]) for r in rows),
            online=sum(int(r[3]) for r in rows),
            scored=sum(int(r[4]) for r in rows),
            failed=sum(int(r[5]) for r in rows),
            last_seen=max((float(r[6]) for r in rows), default=None),
            running={(str(r[0]), str(r[1])): int(r[2]) for r in rows},
        )

    def _kept_devices(self, fleet: str) -> list[DeviceSummary]:
        query = select(devices).where(devices.c.fleet == fleet)
        return [
            DeviceSummary(
                device_id=r.device_id,
                device_group=r.device_group,
                model_name=r.model_name,
                model_version=r.model_version,
                cohort=r.cohort,
                last_seen=float(r.last_seen),
                last_window_end=float(r.last_window_end),
                last_sequence=int(r.last_sequence),
                reports=int(r.reports),
                scored=int(r.scored),
                failed=int(r.failed),
            )
            for r in self._rows(query)
        ]

    def _unrolled_devices(self, fleet: str) -> list[DeviceSummary]:
        """The devices of the reports not rolled up (written by SQL, or stored without
        rollups), summarised from the reports table."""
        unrolled = (reports.c.fleet == fleet, NOT_ROLLED_UP)
        latest = (
            select(func.max(reports.c.id).label("id"))
            .where(*unrolled)
            .group_by(unindexed(reports.c.device_id))
            .subquery()
        )
        last_rows = self._rows(
            select(
                reports.c.device_id,
                reports.c.device_group,
                reports.c.model_name,
                reports.c.model_version,
                reports.c.cohort,
                reports.c.received,
                reports.c.window_end,
                reports.c.sequence,
            ).join(latest, reports.c.id == latest.c.id)
        )
        totals = self._unrolled_totals(fleet)
        summaries = []
        for device, group, name, version, cohort, seen, end, sequence in last_rows:
            count, scored, failed = totals.get(device, (0, 0, 0))
            summaries.append(
                DeviceSummary(
                    device_id=device,
                    device_group=group,
                    model_name=name,
                    model_version=version,
                    cohort=cohort,
                    last_seen=float(seen),
                    last_window_end=float(end),
                    last_sequence=int(sequence),
                    reports=count,
                    scored=scored,
                    failed=failed,
                )
            )
        return summaries

    def _unrolled_totals(self, fleet: str) -> dict[str, tuple[int, int, int]]:
        unrolled = (reports.c.fleet == fleet, NOT_ROLLED_UP)
        device = unindexed(reports.c.device_id)
        query = (
            select(device, func.count(), func.sum(reports.c.scored), func.sum(reports.c.failed))
            .where(*unrolled)
            .group_by(device)
        )
        try:
            with self.engine.connect() as connection:
                rows = connection.execute(query).all()
            return {d: (int(n), int(s), int(f)) for d, n, s, f in rows}
        except DBAPIError as error:
            # SQLite's sum() refuses to overflow 64 bits, which valid reports near the
            # count limit can make it do: sum in Python, exactly.
            if "overflow" not in str(error).lower():
                raise StoreError(f"cannot read devices from {self.display}: {error}") from None
        sums: dict[str, list[int]] = {}
        query_rows = select(reports.c.device_id, reports.c.scored, reports.c.failed).where(
            *unrolled
        )
        for device, scored, failed in self._rows(query_rows):
            entry = sums.setdefault(device, [0, 0, 0])
            entry[0] += 1
            entry[1] += int(scored)
            entry[2] += int(failed)
        return {d: (n, s, f) for d, (n, s, f) in sums.items()}


def _totals_of(summaries: list[DeviceSummary], online_since: float) -> FleetDevices:
    running: dict[tuple[str, str], int] = {}
    for summary in summaries:
        key = (summary.model_name, summary.model_version)
        running[key] = running.get(key, 0) + 1
    return FleetDevices(
        total=len(summaries),
        online=sum(1 for s in summaries if s.last_seen >= online_since),
        scored=sum(s.scored for s in summaries),
        failed=sum(s.failed for s in summaries),
        last_seen=max((s.last_seen for s in summaries), default=None),
        running=running,
    )


def _combined(kept: DeviceSummary, unrolled: DeviceSummary) -> DeviceSummary:
    """A device's row and its reports not rolled up, as one summary: the latest of the two
    by arrival, the totals summed."""
    latest = unrolled if unrolled.last_seen >= kept.last_seen else kept
    return DeviceSummary(
        device_id=kept.device_id,
        device_group=latest.device_group,
        model_name=latest.model_name,
        model_version=latest.model_version,
        cohort=latest.cohort,
        last_seen=latest.last_seen,
        last_window_end=latest.last_window_end,
        last_sequence=latest.last_sequence,
        reports=kept.reports + unrolled.reports,
        scored=kept.scored + unrolled.scored,
        failed=kept.failed + unrolled.failed,
    )

"""Refused messages: the bounded quarantine table and the exact per-device refusal counts."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import (
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.central.monitor.storage.admission import quarantine_row
from edgefleet.central.monitor.storage.base import StoreBase
from edgefleet.central.monitor.storage.records import QuarantinedReport, RefusalCount
from edgefleet.central.monitor.storage.schema import quarantine, refusals
from edgefleet.errors import StoreError


class QuarantineStore(StoreBase):
    """Refused messages and refusal counts."""

    def quarantine_message(
        self, topic: str, payload: bytes, reason: str, *, fleet: str | None = None
    ) -> None:
        """Quarantine one message outright (e.g. one the database refused to store)."""
        row = quarantine_row(topic, payload, reason, time.time(), fleet)
        try:
            with self.engine.begin() as connection:
                self._add_quarantine(connection, [row])
        except SQLAlchemyError as error:
            raise StoreError(f"cannot quarantine in {self.display}: {error}") from None

    def _add_quarantine(self, connection: Connection, rows: list[dict[str, Any]]) -> None:
        connection.execute(insert(quarantine), rows)
        self._count_refusals(connection, rows)
        # Bounded: a device sending garbage in a loop must not fill the disk. Ids only
        # grow, so "the newest N" is one range delete on the primary key.
        newest = connection.execute(select(func.max(quarantine.c.id))).scalar_one()
        if newest is not None and newest > self.quarantine_limit:
            connection.execute(
                delete(quarantine).where(quarantine.c.id <= newest - self.quarantine_limit)
            )

    def _count_refusals(self, connection: Connection, rows: list[dict[str, Any]]) -> None:
        counts: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            key = (row["fleet"], row["device_id"] or "")
            entry = counts.setdefault(key, {"fleet": key[0], "device_id": key[1], "refused": 0})
            entry.update(refused=entry["refused"] + 1, last_refused=row["received"])
            entry["last_reason"] = row["reason"]
        statement = self._insert(refusals)
        # Sorted: two monitors' transactions lock the rows in the same order (no deadlock).
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=["fleet", "device_id"],
                set_={
                    "refused": refusals.c.refused + statement.excluded.refused,
                    "last_refused": statement.excluded.last_refused,
                    "last_reason": statement.excluded.last_reason,
                },
            ),
            [counts[key] for key in sorted(counts)],
        )

    def quarantined(
        self, fleet: str | None = None, limit: int = 100, *, device_id: str | None = None
    ) -> list[QuarantinedReport]:
        """The newest quarantined messages first, of one fleet or all, of one device (the
        one their topic named) or all."""
        query = select(quarantine).order_by(quarantine.c.id.desc()).limit(max(0, limit))
        if fleet is not None:
            query = query.where(quarantine.c.fleet == fleet)
        if device_id is not None:
            query = query.where(quarantine.c.device_id == device_id)
        return [
            QuarantinedReport(
                id=int(r.id),
                fleet=r.fleet,
                topic=r.topic,
                device_id=r.device_id,
                received=float(r.received),
                reason=r.reason,
                payload_bytes=int(r.payload_bytes),
                payload_sha256=r.payload_sha256,
                excerpt=r.excerpt,
            )
            for r in self._rows(query)
        ]

    def refusals_by_device(self, fleet: str) -> dict[str, int]:
        """Refused reports per device named by their topic: with the broker's access list
        on, the topic is the sender's own, so this counts each device's refused reports (a
        body claiming another device, malformed, unknown version, ...)."""
        return {r.device_id: r.refused for r in self.refusal_counts(fleet)}

    def refusal_counts(self, fleet: str | None = None) -> list[RefusalCount]:
        """Refused reports per device, ever (not only those the quarantine still holds),
        most refused first."""
        query = select(refusals).order_by(refusals.c.refused.desc(), refusals.c.device_id)
        if fleet is not None:
            query = query.where(refusals.c.fleet == fleet)
        return [
            RefusalCount(
                fleet=r.fleet,
                device_id=r.device_id,
                refused=int(r.refused),
                last_refused=float(r.last_refused),
                last_reason=r.last_reason,
            )
            for r in self._rows(query)
        ]

    def quarantine_count(self, fleet: str | None = None, *, device_id: str | None = None) -> int:
        query = select(func.count()).select_from(quarantine)
        if fleet is not None:
            query = query.where(quarantine.c.fleet == fleet)
        if device_id is not None:
            query = query.where(quarantine.c.device_id == device_id)
        return int(self._scalar(query))

"""Raw reports: stored exactly once, and merged or counted on demand."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.central.monitor.rollups import BatchRollups, PartialRollup, RollupKey
from edgefleet.central.monitor.storage.admission import (
    PreparedBatch,
    prepare,
    quarantine_row,
    version_refusal,
)
from edgefleet.central.monitor.storage.devices import DeviceStore
from edgefleet.central.monitor.storage.quarantine import QuarantineStore
from edgefleet.central.monitor.storage.reads import FleetReads
from edgefleet.central.monitor.storage.records import IngestCounts, KnownVersion
from edgefleet.central.monitor.storage.schema import reports
from edgefleet.central.monitor.validation import layout_of
from edgefleet.errors import StoreError

logger = logging.getLogger("edgefleet.monitor")


class ReportStore(QuarantineStore, FleetReads, DeviceStore):
    """Ingest and the queries over raw reports."""

    # -- ingest --------------------------------------------------------------------------

    def ingest_many(
        self,
        items: Sequence[tuple[str, bytes]],
        *,
        known_version: KnownVersion | None = None,
        fleet: str | None = None,
        prefix: str | None = None,
    ) -> IngestCounts:
        """Validate and store ``(topic, payload)`` messages in one transaction.

        A valid report new to the database is stored; one already there (same fleet,
        device and sequence) is a duplicate; anything else is quarantined with its reason.
        ``fleet`` and ``prefix``, when given, are the only topic levels accepted. Raises
        :class:`StoreError` if the database fails, in which case nothing was written and
        the call can be repeated as is. The same as :func:`prepare` (the CPU-bound half,
        which another process may do) then :meth:`store_prepared`."""
        batch = prepare(items, fleet=fleet, prefix=prefix, rollups=self.rollups)
        return self.store_prepared(batch, known_version=known_version)

    def store_prepared(
        self, batch: PreparedBatch, *, known_version: KnownVersion | None = None
    ) -> IngestCounts:
        """Store what :func:`prepare` made of a batch of messages, in one transaction,
        after checking each report against its version (``known_version``)."""
        rows: dict[tuple[str, str, int], dict[str, Any]] = {}
        refused = list(batch.refused)
        repeated = 0
        for topic, row, layout in batch.valid:
            # Here, not in prepare(): a registry that fails to answer is not the report's
            # fault, and the caller retries the batch.
            reason = version_refusal(row, layout, known_version, batch.received)
            if reason is not None:
                payload = row["body"].encode("utf-8")  # the very bytes that arrived
                refused.append(quarantine_row(topic, payload, reason, batch.received, row["fleet"]))
                continue
            key = (row["fleet"], row["device_id"], row["sequence"])
            if key in rows:
                repeated += 1
                continue
            rows[key] = row
        try:
            with self.engine.begin() as connection:
                stored = self._insert_reports(connection, rows, batch.partials)
                if refused:
                    self._add_quarantine(connection, refused)
        except SQLAlchemyError as error:
            raise StoreError(f"cannot store reports in {self.display}: {error}") from None
        if self.rollups:
            self.fold_rollups()
        return IngestCounts(
            stored, len(rows) - stored + repeated, len(refused), committed=tuple(rows)
        )

    def _insert_sqlite(
        self, connection: Connection, statement: Any, ordered: list[dict[str, Any]]
    ) -> set[tuple[str, str, int]]:
        """The keys of the rows an INSERT ... ON CONFLICT DO NOTHING stored on SQLite,
        without RETURNING (a third dearer, measured): sqlite3's executemany sums the rows
        each INSERT changed, 0 for a conflict; when some conflicted, the stored ones are
        the newest ids, since this transaction holds the write lock from its first INSERT
        and SQLite gives each new row the largest id plus one."""
        count = int(connection.execute(statement, ordered).rowcount)
        if count == len(ordered):
            return {(r["fleet"], r["device_id"], r["sequence"]) for r in ordered}
        if count == 0:
            return set()
        newest = connection.execute(select(func.max(reports.c.id))).scalar_one()
        keys = (reports.c.fleet, reports.c.device_id, reports.c.sequence)
        found = connection.execute(select(*keys).where(reports.c.id > newest - count)).all()
        return _stored_keys(found)

    def _insert_reports(
        self,
        connection: Connection,
        rows: dict[tuple[str, str, int], dict[str, Any]],
        partials: Mapping[RollupKey, PartialRollup],
    ) -> int:
        """Insert the reports new to the database and append their rollups; how many were
        new."""
        if not rows:
            return 0
        rolled = 1 if self.rollups else 0
        ordered = [{**rows[key], "rolled_up": rolled} for key in sorted(rows)]
        statement = self._insert(reports).on_conflict_do_nothing(
            index_elements=["fleet", "device_id", "sequence"]
        )
        if self.dialect == "sqlite":
            stored = self._insert_sqlite(connection, statement, ordered)
        else:
            keys = (reports.c.fleet, reports.c.device_id, reports.c.sequence)
            returned = connection.execute(statement.returning(*keys), ordered)
            stored = {(f, d, int(s)) for f, d, s in returned}
        if self.rollups:
            self._append_rollups(connection, _stored_partials(partials, stored, rows))
            self._count_devices(connection, [rows[key] for key in rows if key in stored])
        return len(stored)


def _stored_keys(rows: Sequence[Any]) -> set[tuple[str, str, int]]:
    return {(str(f), str(d), int(s)) for f, d, s in rows}


def _stored_partials(
    partials: Mapping[RollupKey, PartialRollup],
    stored: set[tuple[str, str, int]],
    rows: Mapping[tuple[str, str, int], Mapping[str, Any]],
) -> Mapping[RollupKey, PartialRollup]:
    """The rollups of the reports stored: the batch's as they are when they sum exactly
    the stored reports, each once; else (a duplicate, a refused version, a batch prepared
    without rollups) summed again from the stored reports' bodies."""
    members = [m for _, _, rolled in partials.values() for m in rolled]
    if len(members) == 2 * len(stored) and set(members) == stored:
        return partials
    summed = BatchRollups()
    for member in sorted(stored):
        raw = json.loads(rows[member]["body"])
        summed.add(raw, layout_of(raw), member)
    return summed.result()

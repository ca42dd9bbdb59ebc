"""Raw reports: stored exactly once, and merged or counted on demand."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from edgefleet.central.monitor.merging import (
    Merged,
    StoredMerge,
    StoredRow,
    dumps_skipped,
)
from edgefleet.central.monitor.storage.admission import (
    PreparedBatch,
    prepare,
    quarantine_row,
    version_refusal,
)
from edgefleet.central.monitor.storage.quarantine import QuarantineStore
from edgefleet.central.monitor.storage.records import DeviceSummary, IngestCounts, KnownVersion
from edgefleet.central.monitor.storage.schema import MERGE_COLUMNS, reports
from edgefleet.central.monitor.validation import (
    VersionProfile,
)
from edgefleet.edge.manifest import parse_version
from edgefleet.edge.report import Aggregate
from edgefleet.errors import InputError, StoreError

logger = logging.getLogger("edgefleet.monitor")


class ReportStore(QuarantineStore):
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
        return self.store_prepared(
            prepare(items, fleet=fleet, prefix=prefix), known_version=known_version
        )

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
        stored = 0
        try:
            with self.engine.begin() as connection:
                if rows:
                    ordered = [rows[key] for key in sorted(rows)]
                    statement = self._insert(reports).on_conflict_do_nothing(
                        index_elements=["fleet", "device_id", "sequence"]
                    )
                    if self.dialect == "sqlite":
                        # sqlite3's executemany sums the rows each INSERT changed, 0 for a
                        # conflict: exact, and a third cheaper than RETURNING (measured).
                        stored = connection.execute(statement, ordered).rowcount
                    else:
                        returning = statement.returning(reports.c.id)
                        stored = len(connection.execute(returning, ordered).all())
                if refused:
                    self._add_quarantine(connection, refused)
        except SQLAlchemyError as error:
            raise StoreError(f"cannot store reports in {self.display}: {error}") from None
        return IngestCounts(
            stored, len(rows) - stored + repeated, len(refused), committed=tuple(rows)
        )

    # -- queries -------------------------------------------------------------------------

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
        (:class:`~edgefleet.central.monitor.merging.Merged`): each row is checked again
        before it is merged, against ``expected`` (the version's profile) when given, else
        against the layout of most of the rows."""
        where = self._filters(
            fleet,
            model_name=model_name,
            model_version=model_version,
            cohort=cohort,
            device_group=device_group,
            device_id=device_id,
            since=since,
            until=until,
        )
        query = select(*MERGE_COLUMNS).where(*where).order_by(reports.c.id)
        total = StoredMerge(expected)
        try:
            with self.engine.connect() as connection:
                result = connection.execution_options(yield_per=2000).execute(query)
                for values in result:
                    if not total.add(StoredRow(*values)):
                        raise InputError(self._mixed_versions(where))
        except SQLAlchemyError as error:
            raise StoreError(f"cannot read reports from {self.display}: {error}") from None
        merged = total.result()
        if merged.skipped_total:
            logger.warning(
                "fleet %s: %d stored report(s) skipped, they cannot be merged: %s",
                fleet,
                merged.skipped_total,
                dumps_skipped(merged.skipped),
            )
        return merged

    def _mixed_versions(self, where: list[ColumnElement[bool]]) -> str:
        query = (
            select(reports.c.model_name, reports.c.model_version, func.count())
            .where(*where)
            .group_by(reports.c.model_name, reports.c.model_version)
            .order_by(reports.c.model_name, reports.c.model_version)
        )
        with self.engine.connect() as connection:
            found = connection.execute(query).all()
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
        where = self._filters(
            fleet,
            model_name=model_name,
            model_version=model_version,
            cohort=cohort,
            device_group=device_group,
            device_id=device_id,
            since=since,
            until=until,
        )
        return int(self._scalar(select(func.count()).select_from(reports).where(*where)))

    def model_versions(self, fleet: str) -> list[tuple[str, str, int]]:
        """``(model_name, model_version, reports)`` of every version a fleet reported on."""
        query = (
            select(reports.c.model_name, reports.c.model_version, func.count())
            .where(reports.c.fleet == fleet)
            .group_by(reports.c.model_name, reports.c.model_version)
        )
        rows = [(str(n), str(v), int(c)) for n, v, c in self._rows(query)]
        return sorted(rows, key=lambda r: (r[0], _version_key(r[1])))

    def fleets(self) -> list[str]:
        return sorted(str(f) for (f,) in self._rows(select(reports.c.fleet).distinct()))

    def devices(self, fleet: str) -> list[DeviceSummary]:
        """Every device that reported to ``fleet``, by device id."""
        latest = (
            select(func.max(reports.c.id).label("id"))
            .where(reports.c.fleet == fleet)
            .group_by(reports.c.device_id)
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
        totals = self._device_totals(fleet)
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
        return sorted(summaries, key=lambda s: s.device_id)

    def _device_totals(self, fleet: str) -> dict[str, tuple[int, int, int]]:
        query = (
            select(
                reports.c.device_id,
                func.count(),
                func.sum(reports.c.scored),
                func.sum(reports.c.failed),
            )
            .where(reports.c.fleet == fleet)
            .group_by(reports.c.device_id)
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
            reports.c.fleet == fleet
        )
        for device, scored, failed in self._rows(query_rows):
            entry = sums.setdefault(device, [0, 0, 0])
            entry[0] += 1
            entry[1] += int(scored)
            entry[2] += int(failed)
        return {d: (n, s, f) for d, (n, s, f) in sums.items()}


def _version_key(version: str) -> tuple[int, int, int]:
    try:
        return parse_version(version)
    except InputError:
        return (0, 0, 0)

"""The fleet monitor's database (docs/architecture.md §§5 and 7): every report counted exactly
once, what was refused and why, and the alerts and decisions the monitor takes.

SQLAlchemy Core on a SQLite file (the default) or PostgreSQL (``postgresql://...``, driven
by psycopg 3). Tables::

    reports     one row per (fleet, device_id, sequence), UNIQUE: the identity columns
                (fleet, device, sequence, model name and version, cohort, device group,
                window, scored, failed, dropped_reports, received) and ``body``, the report
                JSON exactly as it arrived (validated before it is stored)
    quarantine  a refused message: topic, received, reason, size, sha256 and a bounded,
                escaped excerpt of the payload (never the hostile bytes themselves); only
                the newest ``quarantine_limit`` rows are kept
    refusals    per (fleet, device the topic names): how many reports were refused, ever,
                and when last (exact, unlike the bounded quarantine table)
    alerts      rule, scope, subject, value, threshold, evidence (JSON), open or closed
    decisions   action, model version, reason, evidence (JSON)

Exactly once: :meth:`MonitorStore.ingest_many` inserts with ``INSERT ... ON CONFLICT DO
NOTHING RETURNING id``, so a QoS 1 redelivery, a device re-sending after a lost PUBACK and
two monitors racing on the same report all end as one row, and the rows RETURNING gives
back are exactly the ones this call stored. Rows are inserted in key order, so two
PostgreSQL transactions of overlapping batches take their row locks in the same order and
cannot deadlock.

:meth:`MonitorStore.ingest_many` is :func:`prepare` (validation, CPU-bound, no database:
the monitor may run it in a worker process) followed by :meth:`MonitorStore.store_prepared`
(the registry check and the transaction).

Validation is :meth:`edgefleet.edge.report.Report.decode`'s (through the fast path of
``fastpath.py``), plus: the topic is ``{prefix}/{fleet}/devices/{id}/report``, the
report's fleet and device are the topic's, its totals are ones a device can make
(``merging.check_mergeable_counts``), and, when a ``known_version`` lookup is given, its
model version is known and the report matches that version's profile (``validation.py``).
A refused report is kept in the quarantine table and counted against the device its topic
names.

Merging (:meth:`MonitorStore.merged`, :meth:`MonitorStore.aggregate`) checks every stored
row again and skips, naming it, any row that cannot be merged (``merging.py``): one bad row
never takes a fleet's pages down.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit no longer waits for an fsync
of the log. A crash of the monitor loses nothing (the log is in the operating system's
hands, and reports are acknowledged to the broker only after their commit); a power cut can
lose the last commits, whose reports the broker has already forgotten. That trade is what
lets one monitor store thousands of reports per second on one disk; pass
``sqlite_synchronous="FULL"`` to refuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from edgefleet.central.monitor.fastpath import fast_decode as _fast_decode
from edgefleet.central.monitor.merging import (
    Merged,
    StoredMerge,
    StoredRow,
    check_mergeable_counts,
    dumps_skipped,
)
from edgefleet.central.monitor.validation import (
    Layout,
    ProfileLookup,
    VersionProfile,
    layout_of,
)
from edgefleet.edge.manifest import parse_version
from edgefleet.edge.report import Aggregate, Report
from edgefleet.edge.status import DeviceStatus
from edgefleet.edge.topics import validate_device_id, validate_name
from edgefleet.errors import InputError, StoreError

__all__ = [
    "EXCERPT_BYTES",
    "AlertRecord",
    "DecisionRecord",
    "DeviceSummary",
    "IngestCounts",
    "KnownVersion",
    "Merged",
    "MonitorStore",
    "PreparedBatch",
    "QuarantinedReport",
    "RefusalCount",
    "StoreError",
    "database_url",
    "prepare",
]

logger = logging.getLogger("edgefleet.monitor")

EXCERPT_BYTES = 256
"""Bytes of a refused payload kept in the quarantine table, escaped to printable text."""
MAX_REASON = 500
MAX_TOPIC = 256
MAX_VERSION = 64
DEFAULT_QUARANTINE_LIMIT = 100_000

KnownVersion = ProfileLookup
"""``known_version(model_name, model_version)``: the version's :class:`VersionProfile`
(reports are checked against it), True (known, checked for form only), or False/None
(unknown: quarantined). See :data:`edgefleet.central.monitor.validation.ProfileLookup`."""


# -- value objects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestCounts:
    """What one :meth:`MonitorStore.ingest_many` call did with its messages; they add up to
    the number of messages given."""

    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    committed: tuple[tuple[str, str, int], ...] = field(default=(), compare=False, repr=False)
    """``(fleet, device_id, sequence)`` of every report this call found in the store after
    its commit (stored now or before): what the monitor acknowledges to the devices. Sums
    of counts leave it out."""

    def __add__(self, other: IngestCounts) -> IngestCounts:
        return IngestCounts(
            self.stored + other.stored,
            self.duplicates + other.duplicates,
            self.quarantined + other.quarantined,
        )

    @property
    def total(self) -> int:
        return self.stored + self.duplicates + self.quarantined


@dataclass(frozen=True)
class DeviceSummary:
    """One device of a fleet: what its latest report said (by arrival) and its totals."""

    device_id: str
    device_group: str
    model_name: str
    model_version: str
    cohort: str
    last_seen: float
    """When the latest report arrived (the monitor's clock, epoch seconds)."""
    last_window_end: float
    """The end of the latest report's window (the device's clock)."""
    last_sequence: int
    reports: int
    scored: int
    failed: int


@dataclass(frozen=True)
class QuarantinedReport:
    id: int
    fleet: str
    topic: str
    device_id: str | None
    """The device the topic names, if it names a valid one (not necessarily the sender)."""
    received: float
    reason: str
    payload_bytes: int
    payload_sha256: str
    excerpt: str
    """The first :data:`EXCERPT_BYTES` bytes, control and invalid bytes escaped."""


@dataclass(frozen=True)
class RefusalCount:
    """How many reports naming one device (on their topic) were refused, ever."""

    fleet: str
    device_id: str
    """The device the topics named, "" for reports on topics that named no valid device."""
    refused: int
    last_refused: float
    last_reason: str


AlertStatus = Literal["open", "closed"]


@dataclass(frozen=True)
class AlertRecord:
    id: int | None
    fleet: str
    created: float
    rule: str
    scope: str
    subject: str
    value: float
    threshold: float
    evidence: Mapping[str, Any] = field(default_factory=dict)
    status: AlertStatus = "open"


@dataclass(frozen=True)
class DecisionRecord:
    id: int | None
    fleet: str
    created: float
    action: str
    model_version: str
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


# -- schema ----------------------------------------------------------------------------------

_metadata = MetaData()
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_Id = BigInteger().with_variant(Integer(), "sqlite")

reports = Table(
    "monitor_reports",
    _metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("fleet", String(64), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("cohort", String(16), nullable=False),
    Column("device_group", String(64), nullable=False),
    Column("window_start", Double, nullable=False),
    Column("window_end", Double, nullable=False),
    Column("scored", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
    Column("dropped_reports", BigInteger, nullable=False),
    Column("received", Double, nullable=False),
    Column("body", Text, nullable=False),
    # The deduplication key; also serves queries by device (its prefix is (fleet, device)).
    UniqueConstraint("fleet", "device_id", "sequence", name="uq_monitor_reports_key"),
    Index("ix_monitor_reports_window", "fleet", "window_end"),
    Index("ix_monitor_reports_version", "fleet", "model_version", "window_end"),
    Index("ix_monitor_reports_group", "fleet", "device_group", "window_end"),
)

quarantine = Table(
    "monitor_quarantine",
    _metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("fleet", String(64), nullable=False),
    Column("topic", Text, nullable=False),
    Column("device_id", String(64), nullable=True),
    Column("received", Double, nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload_bytes", BigInteger, nullable=False),
    Column("payload_sha256", String(64), nullable=False),
    Column("excerpt", Text, nullable=False),
    Index("ix_monitor_quarantine_fleet", "fleet", "id"),
)

# Refused reports per device, ever: the quarantine table keeps only the newest rows, and a
# device sending garbage must not hide another's refusals by flooding it.
refusals = Table(
    "monitor_refusals",
    _metadata,
    Column("fleet", String(64), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("refused", BigInteger, nullable=False),
    Column("last_refused", Double, nullable=False),
    Column("last_reason", Text, nullable=False),
)

# The latest retained status of each device (one row per device, overwritten).
device_status = Table(
    "monitor_device_status",
    _metadata,
    Column("fleet", String(64), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("received", Double, nullable=False),
    Column("state", String(8), nullable=False),
    Column("model_version", String(64), nullable=True),
    Column("update_state", String(32), nullable=True),
    Column("problem", Text, nullable=True),
    Column("outbox_pending", BigInteger, nullable=False),
    Column("outbox_awaiting_ack", BigInteger, nullable=False),
    Column("outbox_dropped", BigInteger, nullable=False),
)

alerts = Table(
    "monitor_alerts",
    _metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("fleet", String(64), nullable=False),
    Column("created", Double, nullable=False),
    Column("rule", String(128), nullable=False),
    Column("scope", String(128), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("value", Double, nullable=False),
    Column("threshold", Double, nullable=False),
    Column("evidence", Text, nullable=False),
    Column("status", String(8), nullable=False),
    Index("ix_monitor_alerts_fleet", "fleet", "status", "created"),
)

decisions = Table(
    "monitor_decisions",
    _metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("fleet", String(64), nullable=False),
    Column("created", Double, nullable=False),
    Column("action", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("evidence", Text, nullable=False),
    Index("ix_monitor_decisions_fleet", "fleet", "created"),
)


def database_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 (SQLAlchemy would pick
    psycopg2, which edgefleet does not install); everything else as given."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


# What a merge reads of each stored report, in StoredRow's order.
_MERGE_COLUMNS = (
    reports.c.id,
    reports.c.fleet,
    reports.c.device_id,
    reports.c.sequence,
    reports.c.model_name,
    reports.c.model_version,
    reports.c.cohort,
    reports.c.device_group,
    reports.c.body,
)


# -- the store -------------------------------------------------------------------------------


class MonitorStore:
    """Reports, quarantine, alerts and decisions in one database; safe to share between
    threads, and between processes (several monitors on one database)."""

    def __init__(
        self,
        url: str,
        *,
        quarantine_limit: int = DEFAULT_QUARANTINE_LIMIT,
        sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ):
        if quarantine_limit < 1:
            raise InputError(f"quarantine_limit must be at least 1, not {quarantine_limit}")
        if sqlite_synchronous not in ("NORMAL", "FULL"):
            raise InputError("sqlite_synchronous must be NORMAL or FULL")
        self.url = database_url(url)
        self.quarantine_limit = quarantine_limit
        try:
            self.engine = self._make_engine(sqlite_synchronous)
            _metadata.create_all(self.engine)
        except (SQLAlchemyError, ImportError) as error:
            raise StoreError(f"cannot open the monitor database {self.display}: {error}") from None
        self.dialect = self.engine.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            raise StoreError(
                f"the monitor database {self.display} is {self.dialect}; "
                "use sqlite:///FILE or postgresql://..."
            )

    @property
    def display(self) -> str:
        # The URL may hold a password: never in a message.
        try:
            from sqlalchemy.engine import make_url

            return make_url(self.url).render_as_string(hide_password=True)
        except SQLAlchemyError:
            return "(unreadable URL)"

    def _make_engine(self, synchronous: str) -> Engine:
        if not self.url.startswith("sqlite"):
            return create_engine(self.url, pool_pre_ping=True)
        # A second monitor (or the dashboard) writing at the same moment waits this long for
        # the lock instead of failing at once.
        engine = create_engine(self.url, connect_args={"timeout": 30.0})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL: readers never block the writer; NORMAL: see the module docstring.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.close()

        return engine

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> MonitorStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _insert(self, table: Table) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

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
            reason = _version_refusal(row, layout, known_version, batch.received)
            if reason is not None:
                payload = row["body"].encode("utf-8")  # the very bytes that arrived
                refused.append(
                    _quarantine_row(topic, payload, reason, batch.received, row["fleet"])
                )
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

    def quarantine_message(
        self, topic: str, payload: bytes, reason: str, *, fleet: str | None = None
    ) -> None:
        """Quarantine one message outright (e.g. one the database refused to store)."""
        row = _quarantine_row(topic, payload, reason, time.time(), fleet)
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
        query = select(*_MERGE_COLUMNS).where(*where).order_by(reports.c.id)
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

    # -- device status -------------------------------------------------------------------

    def put_statuses(self, fleet: str, statuses: Sequence[DeviceStatus]) -> None:
        """Keep each device's latest status (one row per device, replaced)."""
        if not statuses:
            return
        now = time.time()
        rows = [{"fleet": fleet, "received": now, **asdict(s)} for s in statuses]
        statement = self._insert(device_status)
        columns = {c: statement.excluded[c] for c in rows[0] if c not in ("fleet", "device_id")}
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=["fleet", "device_id"], set_=columns
                    ),
                    rows,
                )
        except SQLAlchemyError as error:
            raise StoreError(f"cannot store device status in {self.display}: {error}") from None

    def statuses(self, fleet: str) -> dict[str, DeviceStatus]:
        """The latest status of every device of ``fleet`` that published one."""
        query = select(device_status).where(device_status.c.fleet == fleet)
        fields = DeviceStatus.__dataclass_fields__
        return {
            row.device_id: DeviceStatus(**{k: v for k, v in row._mapping.items() if k in fields})
            for row in self._rows(query)
        }

    # -- alerts and decisions ------------------------------------------------------------

    def add_alert(self, alert: AlertRecord) -> int:
        if alert.status not in ("open", "closed"):
            raise InputError(f"alert status must be 'open' or 'closed', not {alert.status!r}")
        values = {
            "fleet": alert.fleet,
            "created": alert.created,
            "rule": alert.rule,
            "scope": alert.scope,
            "subject": alert.subject,
            "value": alert.value,
            "threshold": alert.threshold,
            "evidence": _dump_evidence(alert.evidence),
            "status": alert.status,
        }
        return self._insert_returning_id(alerts, values)

    def alerts(self, fleet: str, *, open_only: bool = False) -> list[AlertRecord]:
        """A fleet's alerts, oldest first."""
        query = select(alerts).where(alerts.c.fleet == fleet).order_by(alerts.c.id)
        if open_only:
            query = query.where(alerts.c.status == "open")
        return [
            AlertRecord(
                id=int(r.id),
                fleet=r.fleet,
                created=float(r.created),
                rule=r.rule,
                scope=r.scope,
                subject=r.subject,
                value=float(r.value),
                threshold=float(r.threshold),
                evidence=json.loads(r.evidence),
                status=r.status,
            )
            for r in self._rows(query)
        ]

    def close_alerts_for(self, fleet: str, model_version: str | None) -> list[int]:
        """Close the open alerts raised about ``model_version`` (it was replaced: they are
        answered); the ids closed."""
        closed = []
        for alert in self.alerts(fleet, open_only=True):
            if alert.id is not None and alert.evidence.get("model_version") == model_version:
                self.close_alert(alert.id)
                closed.append(alert.id)
        return closed

    def close_alert(self, alert_id: int) -> None:
        """Close an alert; :class:`InputError` if there is no alert of that id."""
        try:
            with self.engine.begin() as connection:
                result = connection.execute(
                    update(alerts).where(alerts.c.id == alert_id).values(status="closed")
                )
                changed = result.rowcount
        except SQLAlchemyError as error:
            raise StoreError(f"cannot close alert {alert_id}: {error}") from None
        if not changed:
            raise InputError(f"there is no alert {alert_id}")

    def add_decision(self, decision: DecisionRecord) -> int:
        values = {
            "fleet": decision.fleet,
            "created": decision.created,
            "action": decision.action,
            "model_version": decision.model_version,
            "reason": decision.reason,
            "evidence": _dump_evidence(decision.evidence),
        }
        return self._insert_returning_id(decisions, values)

    def decisions(self, fleet: str) -> list[DecisionRecord]:
        """A fleet's decisions, oldest first."""
        query = select(decisions).where(decisions.c.fleet == fleet).order_by(decisions.c.id)
        return [
            DecisionRecord(
                id=int(r.id),
                fleet=r.fleet,
                created=float(r.created),
                action=r.action,
                model_version=r.model_version,
                reason=r.reason,
                evidence=json.loads(r.evidence),
            )
            for r in self._rows(query)
        ]

    # -- plumbing ------------------------------------------------------------------------

    def _insert_returning_id(self, table: Table, values: dict[str, Any]) -> int:
        try:
            with self.engine.begin() as connection:
                new_id = connection.execute(
                    insert(table).values(**values).returning(table.c.id)
                ).scalar_one()
        except SQLAlchemyError as error:
            raise StoreError(f"cannot write to {self.display}: {error}") from None
        return int(new_id)

    def _rows(self, query: Any) -> list[Any]:
        try:
            with self.engine.connect() as connection:
                return list(connection.execute(query).all())
        except SQLAlchemyError as error:
            raise StoreError(f"cannot read from {self.display}: {error}") from None

    def _scalar(self, query: Any) -> Any:
        try:
            with self.engine.connect() as connection:
                return connection.execute(query).scalar_one()
        except SQLAlchemyError as error:
            raise StoreError(f"cannot read from {self.display}: {error}") from None


@dataclass(frozen=True)
class PreparedBatch:
    """A batch of messages validated by :func:`prepare`: the valid reports as
    ``(topic, row, layout)`` (the layout for the check against their version) and the
    quarantine rows of the others. Plain data, so that it crosses a process boundary
    cheaply."""

    received: float
    valid: list[tuple[str, dict[str, Any], Layout]]
    refused: list[dict[str, Any]]


def prepare(
    items: Sequence[tuple[str, bytes]], *, fleet: str | None = None, prefix: str | None = None
) -> PreparedBatch:
    """Validate ``(topic, payload)`` messages (everything but the registry's say): the
    CPU-bound half of :meth:`MonitorStore.ingest_many`, needing no database."""
    received = time.time()
    valid: list[tuple[str, dict[str, Any], Layout]] = []
    refused: list[dict[str, Any]] = []
    layouts: dict[Layout, Layout] = {}
    for topic, payload in items:
        try:
            row, layout = _validate(topic, payload, fleet, prefix)
        except InputError as error:
            refused.append(_quarantine_row(topic, payload, str(error), received, fleet))
            continue
        except Exception as error:  # a decoder bug must not stop ingestion either
            reason = f"{type(error).__name__} while decoding: {error}"
            refused.append(_quarantine_row(topic, payload, reason, received, fleet))
            continue
        row["received"] = received
        # One object per distinct layout: pickled once per batch on the way from a worker.
        valid.append((topic, row, layouts.setdefault(layout, layout)))
    return PreparedBatch(received, valid, refused)


def _version_refusal(
    row: dict[str, Any], layout: Layout, known_version: KnownVersion | None, received: float
) -> str | None:
    """Why a valid report does not fit the version it claims, or None if it does."""
    if known_version is None:
        return None
    verdict = known_version(row["model_name"], row["model_version"])
    if not verdict:
        return (
            f"model {row['model_name']} {row['model_version']} is not a known version (not "
            "in the registry): train or register it, and the device's re-sends are stored"
        )
    if isinstance(verdict, VersionProfile):
        try:
            verdict.check(layout, row["window_end"], received)
        except InputError as error:
            return str(error)
    return None


def _version_key(version: str) -> tuple[int, int, int]:
    try:
        return parse_version(version)
    except InputError:
        return (0, 0, 0)


def _dump_evidence(evidence: Mapping[str, Any]) -> str:
    # NaN and infinities survive the round trip (a metric can be undefined); anything JSON
    # cannot hold is refused here rather than stored as something else.
    try:
        return json.dumps(dict(evidence), sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as error:
        raise InputError(f"evidence must be JSON (numbers, text, lists, dicts): {error}") from None


# -- validation ------------------------------------------------------------------------------


def _validate(
    topic: str, payload: bytes, fleet: str | None, prefix: str | None
) -> tuple[dict[str, Any], Layout]:
    """The row and feature layout of a valid report, or :class:`InputError` saying why it
    is not one."""
    topic_fleet, topic_device = _parse_topic(topic, fleet, prefix)
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise InputError(f"a report payload is bytes, not {type(payload).__name__}")
    raw = _fast_decode(payload)
    if raw is None:
        report = Report.decode(payload)  # raises the exact reason, or accepts
        raw = report.to_dict()
    if raw["device_id"] != topic_device:
        raise InputError(
            f"the report of device {raw['device_id']!r} came on the topic of device "
            f"{topic_device!r}: a device may only report as itself"
        )
    if raw["fleet"] != topic_fleet:
        raise InputError(
            f"the report of fleet {raw['fleet']!r} came on a topic of fleet {topic_fleet!r}"
        )
    if len(raw["model_version"]) > MAX_VERSION:
        # parse_version takes digits without end; the column does not.
        raise InputError(f"report field 'model_version' is longer than {MAX_VERSION} characters")
    check_mergeable_counts(raw)
    row = {
        "fleet": raw["fleet"],
        "device_id": raw["device_id"],
        "sequence": raw["sequence"],
        "model_name": raw["model_name"],
        "model_version": raw["model_version"],
        "cohort": raw["cohort"],
        "device_group": raw["device_group"],
        "window_start": float(raw["window_start"]),
        "window_end": float(raw["window_end"]),
        "scored": raw["scored"],
        "failed": raw["failed"],
        "dropped_reports": raw["dropped_reports"],
        # The bytes that were validated, not a re-encoding: the exact report, for free.
        "body": bytes(payload).decode("utf-8"),
    }
    return row, layout_of(raw)


def _parse_topic(topic: str, fleet: str | None, prefix: str | None) -> tuple[str, str]:
    parts = topic.split("/") if isinstance(topic, str) else []
    shape = "{prefix}/{fleet}/devices/{device}/report"
    if len(parts) != 5 or parts[2] != "devices" or parts[4] != "report":
        raise InputError(f"the topic {_excerpt(topic, 80)!r} is not a report topic ({shape})")
    if prefix is not None and parts[0] != prefix:
        raise InputError(f"the topic {_excerpt(topic, 80)!r} does not start with {prefix!r}")
    if fleet is not None and parts[1] != fleet:
        raise InputError(f"the topic {_excerpt(topic, 80)!r} is not of fleet {fleet!r}")
    validate_name("fleet name", parts[1])
    return parts[1], validate_device_id(parts[3])


# -- quarantine rows -------------------------------------------------------------------------


def _excerpt(value: Any, limit: int) -> str:
    """Printable text of at most about ``limit`` characters: control characters (NUL
    included, which PostgreSQL text refuses) and invalid UTF-8 escaped as ``\\xNN``."""
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value[:limit]).decode("utf-8", errors="backslashreplace")
    else:
        text = str(value)[:limit]
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def _quarantine_row(
    topic: Any, payload: Any, reason: str, received: float, fleet: str | None
) -> dict[str, Any]:
    if not isinstance(payload, bytes | bytearray | memoryview):
        payload = str(payload).encode("utf-8", errors="replace")
    parts = topic.split("/") if isinstance(topic, str) else []
    topic_fleet = parts[1] if len(parts) > 1 else ""
    device = parts[3] if len(parts) == 5 else None
    try:
        topic_fleet = validate_name("fleet", topic_fleet)
    except InputError:
        topic_fleet = fleet or "?"
    try:
        device = validate_device_id(device) if device is not None else None
    except InputError:
        device = None
    return {
        "fleet": fleet or topic_fleet,
        "topic": _excerpt(topic, MAX_TOPIC),
        "device_id": device,
        "received": received,
        "reason": _excerpt(reason, MAX_REASON),
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "excerpt": _excerpt(payload, EXCERPT_BYTES),
    }

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

The parts live in ``storage/``, one module per kind of record: ``schema.py`` (the tables),
``admission.py`` (validation and quarantine rows), ``reports.py`` (ingest and raw-report
queries), ``quarantine.py``, ``statuses.py`` and ``journal.py`` (alerts and decisions). This
module puts them together and keeps every name importers use.
"""

from __future__ import annotations

from edgefleet.central.monitor.merging import Merged
from edgefleet.central.monitor.storage.admission import (
    EXCERPT_BYTES,
    PreparedBatch,
    prepare,
    version_refusal,
)
from edgefleet.central.monitor.storage.base import DEFAULT_QUARANTINE_LIMIT
from edgefleet.central.monitor.storage.journal import JournalStore
from edgefleet.central.monitor.storage.records import (
    AlertRecord,
    AlertStatus,
    DecisionRecord,
    DeviceSummary,
    FleetDevices,
    IngestCounts,
    KnownVersion,
    QuarantinedReport,
    RefusalCount,
)
from edgefleet.central.monitor.storage.reports import ReportStore
from edgefleet.central.monitor.storage.schema import (
    alerts,
    database_url,
    decisions,
    device_status,
    devices,
    quarantine,
    refusals,
    reports,
    rollups,
)
from edgefleet.central.monitor.storage.statuses import StatusStore
from edgefleet.errors import StoreError

__all__ = [
    "DEFAULT_QUARANTINE_LIMIT",
    "EXCERPT_BYTES",
    "AlertRecord",
    "AlertStatus",
    "DecisionRecord",
    "DeviceSummary",
    "FleetDevices",
    "IngestCounts",
    "KnownVersion",
    "Merged",
    "MonitorStore",
    "PreparedBatch",
    "QuarantinedReport",
    "RefusalCount",
    "StoreError",
    "_version_refusal",
    "alerts",
    "database_url",
    "decisions",
    "device_status",
    "devices",
    "prepare",
    "quarantine",
    "refusals",
    "reports",
    "rollups",
    "version_refusal",
]


_version_refusal = version_refusal  # the name tests and older callers import


class MonitorStore(ReportStore, StatusStore, JournalStore):
    """Reports, quarantine, alerts and decisions in one database; safe to share between
    threads, and between processes (several monitors on one database)."""

"""The monitor database's tables (SQLAlchemy Core), one definition for SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.sql.elements import ColumnElement

# -- schema ----------------------------------------------------------------------------------

metadata = MetaData()
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_Id = BigInteger().with_variant(Integer(), "sqlite")

reports = Table(
    "monitor_reports",
    metadata,
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
    # 1 when the report was summed into the rollups in the transaction that stored it; 0
    # for rows written otherwise (by SQL, an older edgefleet, a restored backup), which
    # reads merge from here until `edgefleet reports compact` rolls them up.
    Column("rolled_up", Integer, nullable=False, server_default=text("0")),
    # The deduplication key; also serves queries by device (its prefix is (fleet, device)).
    UniqueConstraint("fleet", "device_id", "sequence", name="uq_monitor_reports_key"),
    Index("ix_monitor_reports_window", "fleet", "window_end"),
    Index("ix_monitor_reports_version", "fleet", "model_version", "window_end"),
    Index(
        "ix_monitor_reports_unrolled",
        "fleet",
        "window_end",
        sqlite_where=text("rolled_up = 0"),
        postgresql_where=text("rolled_up = 0"),
    ),
)

NOT_ROLLED_UP = reports.c.rolled_up == literal_column("0")
"""The rows not rolled up, as the partial index's own condition: a literal, not a bound
parameter, or neither SQLite nor a generic PostgreSQL plan can use the index (and the
query scans every report of its window)."""


def unindexed(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """``column`` as an expression no index serves (``column || ''``): the queries of rows
    not rolled up filter and group on it, so that the only index left for them is the
    partial one of :data:`NOT_ROLLED_UP`. Without it SQLite, which keeps no statistics,
    reads the rows of a model version through ``ix_monitor_reports_version`` (or groups
    devices through the unique key) and checks ``rolled_up`` on each: every report of the
    window, growing with the reports stored (measured: bench/scale.py)."""
    return column.concat(literal_column("''"))


# Rollups (docs/architecture.md §7b): partial sums of reports per key and bucket, appended
# by each monitor in the transaction that stores the reports (never updated there: no hot
# row), folded into one row per key and writer as the monitor goes, merged at read time.
rollups = Table(
    "monitor_rollups",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("fleet", String(64), nullable=False),
    Column("width", Integer, nullable=False),
    Column("bucket", BigInteger, nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("cohort", String(16), nullable=False),
    Column("device_group", String(64), nullable=False),
    Column("layout", String(16), nullable=False),
    Column("writer", String(32), nullable=False),
    Column("reports", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
    Index("ix_monitor_rollups_bucket", "fleet", "width", "bucket"),
)

# One row per device (storage/devices.py): its latest report by arrival and its totals,
# kept by an upsert that adds in the transaction that stores its reports.
devices = Table(
    "monitor_devices",
    metadata,
    Column("fleet", String(64), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("device_group", String(64), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("cohort", String(16), nullable=False),
    Column("last_seen", Double, nullable=False),
    Column("last_window_end", Double, nullable=False),
    Column("last_sequence", BigInteger, nullable=False),
    Column("reports", BigInteger, nullable=False),
    Column("scored", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
)

quarantine = Table(
    "monitor_quarantine",
    metadata,
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
    metadata,
    Column("fleet", String(64), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("refused", BigInteger, nullable=False),
    Column("last_refused", Double, nullable=False),
    Column("last_reason", Text, nullable=False),
)

# The latest retained status of each device (one row per device, overwritten).
device_status = Table(
    "monitor_device_status",
    metadata,
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
    metadata,
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
    metadata,
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
MERGE_COLUMNS = (
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

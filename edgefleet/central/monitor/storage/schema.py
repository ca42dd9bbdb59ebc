"""The monitor database's tables (SQLAlchemy Core), one definition for SQLite and PostgreSQL."""

from __future__ import annotations

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
)

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
    # The deduplication key; also serves queries by device (its prefix is (fleet, device)).
    UniqueConstraint("fleet", "device_id", "sequence", name="uq_monitor_reports_key"),
    Index("ix_monitor_reports_window", "fleet", "window_end"),
    Index("ix_monitor_reports_version", "fleet", "model_version", "window_end"),
    Index("ix_monitor_reports_group", "fleet", "device_group", "window_end"),
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

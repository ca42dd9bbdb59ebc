"""The operational table the stream writes: one row per key, upserted (``INSERT ... ON
CONFLICT (key) DO UPDATE``), so an event delivered twice (the broker re-sends what was not
acknowledged before a crash) rewrites its row instead of adding one. SQLite and PostgreSQL.

Events that can never be scored (not JSON, no key, a bad field) go to ``{table}_rejected``
with the reason, in the same transaction: acknowledged, never silently dropped, and never
re-delivered forever.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.errors import InputError, StoreError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Scored:
    key: str
    probability: float
    label: str
    model_version: str


@dataclass(frozen=True)
class Rejected:
    topic: str
    payload: str
    reason: str


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise InputError(f"{what} {name!r} must be a plain SQL name: letters, digits, _")
    return name


class PredictionTable:
    """``table`` in the database at ``url`` (created if missing), keyed by ``key``."""

    def __init__(self, url: str, table: str, key: str) -> None:
        _check_name(table, "--table")
        _check_name(key, "--key")
        if not url.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise InputError(f"--db must be sqlite:///FILE or postgresql://..., not {url[:40]!r}")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        self.key = key
        metadata = MetaData()
        self.table = Table(
            table,
            metadata,
            Column(key, String(256), primary_key=True),
            Column("probability", Float, nullable=False),
            Column("label", String(64), nullable=False),
            Column("model_version", String(64), nullable=False),
            Column("scored_at", DateTime(timezone=True), nullable=False),
        )
        self.rejected = Table(
            f"{table}_rejected",
            metadata,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("topic", Text, nullable=False),
            Column("payload", Text, nullable=False),
            Column("reason", Text, nullable=False),
            Column("at", DateTime(timezone=True), nullable=False),
        )
        try:
            self.engine: Engine = create_engine(url, pool_pre_ping=True)
            metadata.create_all(self.engine)
        except SQLAlchemyError as error:
            raise StoreError(
                f"cannot open {url.split('@')[-1]}: {error.__class__.__name__}: "
                f"{str(error).splitlines()[0]}"
            ) from None
        self._insert = (
            postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        )

    def write(self, rows: Sequence[Scored], rejected: Sequence[Rejected] = ()) -> None:
        """Upsert ``rows`` and record ``rejected``, in one transaction."""
        try:
            self._write(rows, rejected)
        except SQLAlchemyError as error:
            first = str(error).splitlines()[0]
            raise StoreError(f"writing to {self.table.name} failed: {first}") from None

    def _write(self, rows: Sequence[Scored], rejected: Sequence[Rejected]) -> None:
        now = datetime.now(UTC)
        with self.engine.begin() as connection:
            if rows:
                statement = self._insert(self.table)
                excluded = statement.excluded
                statement = statement.on_conflict_do_update(
                    index_elements=[self.key],
                    set_={
                        c: excluded[c]
                        for c in ("probability", "label", "model_version", "scored_at")
                    },
                )
                connection.execute(
                    statement,
                    [
                        {
                            self.key: r.key,
                            "probability": r.probability,
                            "label": r.label,
                            "model_version": r.model_version,
                            "scored_at": now,
                        }
                        for r in _last_per_key(rows)
                    ],
                )
            if rejected:
                connection.execute(
                    self.rejected.insert(),
                    [
                        {"topic": r.topic, "payload": r.payload, "reason": r.reason, "at": now}
                        for r in rejected
                    ],
                )

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(select(func.count()).select_from(self.table)).scalar_one()
            )

    def close(self) -> None:
        self.engine.dispose()


def _last_per_key(rows: Sequence[Scored]) -> list[Scored]:
    # PostgreSQL refuses one statement that updates a row twice: the newest event wins.
    return list({r.key: r for r in rows}.values())

"""Where the stream writes: the operational prediction table of
:mod:`edgefleet.central.predictions` (one row per key, upserted, shared with batch scoring),
and beside it ``{table}_rejected`` for events that can never be scored.

Both writes are idempotent, so the stream may repeat them after a crash: a prediction is
upserted by key, a rejected event inserted once by the digest of its topic and payload
(``ON CONFLICT DO NOTHING``). The consumer acknowledges an event only after both committed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, Engine, MetaData, String, Table, Text, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.central.predictions import Prediction, PredictionStore
from edgefleet.errors import StoreError


@dataclass(frozen=True)
class Rejected:
    topic: str
    payload: bytes
    reason: str


class StreamTable:
    """The prediction table ``table`` at ``url`` and its ``{table}_rejected`` log."""

    def __init__(self, url: str, table: str) -> None:
        self.store = PredictionStore(url, table)
        self.rejected = Table(
            f"{table}_rejected",
            MetaData(),
            Column("digest", String(64), primary_key=True),
            Column("topic", Text, nullable=False),
            Column("payload", Text, nullable=False),
            Column("reason", Text, nullable=False),
            Column("at", DateTime(timezone=True), nullable=False),
        )
        try:
            self.rejected.metadata.create_all(self.store.engine)
        except SQLAlchemyError as error:
            raise StoreError(f"cannot create {self.rejected.name}: {error}") from None
        dialect = self.store.dialect
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert

    @property
    def engine(self) -> Engine:
        return self.store.engine

    def write(self, rows: Sequence[Prediction], rejected: Sequence[Rejected] = ()) -> None:
        if rejected:
            self._reject(rejected)
        if rows:
            self.store.upsert(rows)

    def _reject(self, rejected: Sequence[Rejected]) -> None:
        now = datetime.now(UTC)
        values = [
            {
                "digest": hashlib.sha256(r.topic.encode() + b"\0" + r.payload).hexdigest(),
                "topic": r.topic,
                "payload": r.payload[:2000].decode("utf-8", errors="replace"),
                "reason": r.reason,
                "at": now,
            }
            for r in rejected
        ]
        statement = self._insert(self.rejected).on_conflict_do_nothing(index_elements=["digest"])
        try:
            with self.store.engine.begin() as connection:
                connection.execute(statement, values)
        except SQLAlchemyError as error:
            raise StoreError(f"cannot write to {self.rejected.name}: {error}") from None

    def count(self) -> int:
        return self.store.count()

    def rejected_count(self) -> int:
        with self.store.engine.connect() as connection:
            query = select(func.count()).select_from(self.rejected)
            return int(connection.execute(query).scalar_one())

    def close(self) -> None:
        self.store.close()

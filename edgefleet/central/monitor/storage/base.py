"""The monitor store's engine (SQLite tuned for many writers, or PostgreSQL) and plumbing."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Literal, Self

from sqlalchemy import (
    Engine,
    Table,
    create_engine,
    event,
    insert,
    inspect,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.central.monitor.storage.schema import database_url, metadata
from edgefleet.errors import InputError, StoreError

DEFAULT_QUARANTINE_LIMIT = 100_000


class StoreBase:
    """The engine and the plumbing every part of the store shares."""

    def __init__(
        self,
        url: str,
        *,
        quarantine_limit: int = DEFAULT_QUARANTINE_LIMIT,
        sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        rollups: bool = True,
    ):
        if quarantine_limit < 1:
            raise InputError(f"quarantine_limit must be at least 1, not {quarantine_limit}")
        if sqlite_synchronous not in ("NORMAL", "FULL"):
            raise InputError("sqlite_synchronous must be NORMAL or FULL")
        self.url = database_url(url)
        self.quarantine_limit = quarantine_limit
        self.rollups = rollups
        """Whether ingest sums reports into rollups (off only to measure what they cost:
        reports stored without are merged from raw until compaction rolls them up)."""
        # This store's name on the rollup rows it appends (see storage/rollups.py).
        self.writer = uuid.uuid4().hex[:16]
        # Rollup rows this store appended per key, not folded yet (storage/rollups.py).
        self._pending: dict[tuple[str, str, str, str, str, str, int, int], int] = {}
        self._fold_lock = threading.Lock()
        self._last_fold = time.monotonic()
        try:
            self.engine = self._make_engine(sqlite_synchronous)
            metadata.create_all(self.engine)
            self._add_missing_columns()
        except (SQLAlchemyError, ImportError) as error:
            raise StoreError(f"cannot open the monitor database {self.display}: {error}") from None
        self.dialect = self.engine.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            raise StoreError(
                f"the monitor database {self.display} is {self.dialect}; "
                "use sqlite:///FILE or postgresql://..."
            )

    def _add_missing_columns(self) -> None:
        """A database made by an older edgefleet gets the columns added since (its rows
        count as not rolled up: reads merge them raw until compaction rolls them up)."""
        present = {c["name"] for c in inspect(self.engine).get_columns("monitor_reports")}
        if "rolled_up" in present:
            return
        with self.engine.begin() as connection:
            connection.exec_driver_sql(
                "ALTER TABLE monitor_reports ADD COLUMN rolled_up INTEGER NOT NULL DEFAULT 0"
            )
        metadata.create_all(self.engine)  # the index on the new column

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _insert(self, table: Table) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

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

"""The operational table of predictions: one row per key (a customer id), the newest
prediction for it, which model and version made it, and when (docs/architecture.md §11).

This is the table the call-centre software reads, and the only writer of it: batch scoring
(``edgefleet batch score --db``), and any other scorer that keeps predictions in an
operational database, write through :class:`PredictionStore`, so the schema and the upsert
exist once. SQLite (a file) and PostgreSQL (``postgresql://...``, psycopg 3) only, through
SQLAlchemy Core::

    key          text, primary key     the input's key column, as text
    model        text                  the model's name ("churn")
    version      text                  the model's version ("1.2.0")
    label        text, null            the predicted class (the most probable); null for a
                                       regressor
    score        double                binary: P(classes[1]); multi-class: the predicted
                                       class's probability; regression: the value
    probabilities text                 the model's outputs, a JSON list: every class's
                                       probability in class order, or [value]
    scored_at    timestamp with tz     when the row was scored (UTC)

Upsert by key (``INSERT ... ON CONFLICT (key) DO UPDATE``, on both dialects): tonight's run
replaces last night's row of each key it scores and leaves the others alone. A batch that
holds one key twice keeps its last row (PostgreSQL refuses to update one row twice in a
statement); rows are written in key order, so two writers of overlapping batches take their
row locks in the same order and cannot deadlock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    Column,
    DateTime,
    Double,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from edgefleet.central.monitor.store import database_url
from edgefleet.errors import InputError, StoreError

DEFAULT_TABLE = "predictions"
# Rows per INSERT statement: 7 parameters a row stays under SQLite's 32,766 variables.
UPSERT_CHUNK = 2000
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
MAX_KEY_LENGTH = 256


@dataclass(frozen=True)
class Prediction:
    """One row of the table."""

    key: str
    model: str
    version: str
    label: str | None
    """None for a regressor."""
    score: float
    probabilities: tuple[float, ...]
    scored_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The row as the lookup API answers it (``scored_at`` in seconds since the epoch,
        as every time of the API; ``scored_at_iso`` the same in ISO 8601, UTC). A
        classifier's row: ``label``, ``score`` and ``probabilities``; a regressor's (no
        label): ``value``."""
        answer: dict[str, Any] = {
            "key": self.key,
            "model": self.model,
            "version": self.version,
        }
        if self.label is None:
            answer["value"] = self.score
        else:
            answer |= {
                "label": self.label,
                "score": self.score,
                "probabilities": list(self.probabilities),
            }
        return answer | {
            "scored_at": self.scored_at.timestamp(),
            "scored_at_iso": self.scored_at.astimezone(UTC).isoformat(),
        }


def predictions_from_scores(
    keys: Sequence[Any],
    probabilities: npt.NDArray[Any],
    *,
    classes: Sequence[str],
    model: str,
    version: str,
    scored_at: datetime | None = None,
) -> list[Prediction]:
    """Rows for ``keys`` from a scorer's ``[N, n_outputs]`` output, per task as the
    batch scorer writes them (``classes`` in the model's order; none for a regressor):
    binary, the argmax and P(``classes[1]``); multi-class, the argmax and its probability;
    regression, no label and the value."""
    if len(keys) != len(probabilities):
        raise InputError(f"{len(keys)} keys for {len(probabilities)} rows of probabilities")
    when = scored_at or datetime.now(UTC)
    outputs = np.asarray(probabilities, dtype=np.float64)
    labels, scores = _labels_and_scores(outputs, classes)
    return [
        Prediction(
            key=check_key(key),
            model=model,
            version=version,
            label=labels[i],
            score=float(scores[i]),
            probabilities=tuple(float(p) for p in outputs[i]),
            scored_at=when,
        )
        for i, key in enumerate(keys)
    ]


def _labels_and_scores(
    outputs: npt.NDArray[np.float64], classes: Sequence[str]
) -> tuple[list[str | None], npt.NDArray[np.float64]]:
    if not classes:
        return [None] * len(outputs), outputs[:, 0] if len(outputs) else np.empty(0)
    best = outputs.argmax(axis=1) if len(outputs) else np.empty(0, dtype=np.int64)
    labels: list[str | None] = [classes[int(k)] for k in best]
    if len(classes) == 2:
        return labels, outputs[:, 1] if len(outputs) else np.empty(0)
    return labels, outputs.max(axis=1, initial=0.0)


def check_key(key: Any) -> str:
    """A key as stored: text, not empty, at most :data:`MAX_KEY_LENGTH` characters."""
    if isinstance(key, float) and key.is_integer():
        key = int(key)  # a CSV id column read as float: 17.0 is customer "17"
    text = str(key).strip() if key is not None else ""
    if not text or text.lower() == "nan":
        raise InputError("the key is missing")
    if len(text) > MAX_KEY_LENGTH:
        raise InputError(f"the key is {len(text)} characters long; at most {MAX_KEY_LENGTH}")
    return text


def check_table_name(name: str) -> str:
    if not isinstance(name, str) or not _TABLE_NAME.match(name):
        raise InputError(
            f"table name {name!r} is not usable: letters, digits and _, starting with a "
            "letter or _, at most 63 characters"
        )
    return name


def _table(name: str) -> Table:
    return Table(
        check_table_name(name),
        MetaData(),
        Column("key", String(MAX_KEY_LENGTH), primary_key=True),
        Column("model", String(200), nullable=False),
        Column("version", String(100), nullable=False),
        # Null for a regressor; a table made before tasks keeps its NOT NULL (binary only).
        Column("label", String(200), nullable=True),
        Column("score", Double, nullable=False),
        Column("probabilities", Text, nullable=False),
        Column("scored_at", DateTime(timezone=True), nullable=False),
    )


class PredictionStore:
    """The prediction table in one SQLite or PostgreSQL database; creates it if missing.
    Safe to share between threads; each process opens its own."""

    def __init__(self, url: str, table: str = DEFAULT_TABLE, *, create: bool = True):
        """``create=False`` for readers: nothing is created, and until a writer has made
        the table :meth:`get` finds nothing."""
        self.url = database_url(url)
        self.table = _table(table)
        self._exists = create
        try:
            self.engine = self._make_engine()
            self.dialect = self.engine.dialect.name
            if self.dialect not in ("sqlite", "postgresql"):
                raise StoreError(
                    f"the prediction database {self.display} is {self.dialect}; "
                    "use sqlite:///FILE or postgresql://..."
                )
            if create:
                self.table.metadata.create_all(self.engine)
        except (SQLAlchemyError, ArgumentError, ImportError) as error:
            raise StoreError(
                f"cannot open the prediction database {self.display}: {error}"
            ) from None

    @property
    def display(self) -> str:
        # The URL may hold a password: never in a message.
        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except (SQLAlchemyError, ArgumentError):
            return "(unreadable URL)"

    def _make_engine(self) -> Engine:
        if not self.url.startswith("sqlite"):
            return create_engine(self.url, pool_pre_ping=True)
        # Another writer (a second batch, the dashboard reading) waits for the lock.
        engine = create_engine(self.url, connect_args={"timeout": 30.0})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.close()

        return engine

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> PredictionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def upsert(self, predictions: Iterable[Prediction]) -> int:
        """Insert or replace each key's row, in one transaction; the number of keys written."""
        latest = {p.key: p for p in predictions}  # the last row of a repeated key wins
        rows = [_row(latest[key]) for key in sorted(latest)]
        if not rows:
            return 0
        insert = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(self.table)
        statement = insert.on_conflict_do_update(
            index_elements=[self.table.c.key],
            set_={name: insert.excluded[name] for name in _row(next(iter(latest.values())))},
        )
        try:
            with self.engine.begin() as connection:
                for start in range(0, len(rows), UPSERT_CHUNK):
                    connection.execute(statement, rows[start : start + UPSERT_CHUNK])
        except SQLAlchemyError as error:
            raise StoreError(f"cannot write predictions to {self.display}: {error}") from None
        return len(rows)

    def get(self, key: str) -> Prediction | None:
        """The newest prediction for ``key``, or None."""
        try:
            if not self._exists:
                self._exists = inspect(self.engine).has_table(self.table.name)
                if not self._exists:
                    return None
            with self.engine.connect() as connection:
                row = connection.execute(select(self.table).where(self.table.c.key == key)).first()
        except SQLAlchemyError as error:
            raise StoreError(f"cannot read predictions from {self.display}: {error}") from None
        return None if row is None else _prediction(row._mapping)

    def count(self) -> int:
        try:
            with self.engine.connect() as connection:
                return int(
                    connection.execute(select(func.count()).select_from(self.table)).scalar_one()
                )
        except SQLAlchemyError as error:
            raise StoreError(f"cannot read predictions from {self.display}: {error}") from None


def _row(p: Prediction) -> dict[str, Any]:
    return {
        "key": p.key,
        "model": p.model,
        "version": p.version,
        "label": p.label,
        "score": p.score,
        "probabilities": json.dumps(list(p.probabilities)),
        "scored_at": p.scored_at.astimezone(UTC),
    }


def _prediction(row: Any) -> Prediction:
    scored_at: datetime = row["scored_at"]
    if scored_at.tzinfo is None:  # SQLite keeps no zone; every row is written in UTC
        scored_at = scored_at.replace(tzinfo=UTC)
    return Prediction(
        key=row["key"],
        model=row["model"],
        version=row["version"],
        label=row["label"],
        score=float(row["score"]),
        probabilities=tuple(float(p) for p in json.loads(row["probabilities"])),
        scored_at=scored_at.astimezone(UTC),
    )

"""The device's outbox: reports queued on disk until a monitor has stored them.

One SQLite file in WAL mode (stdlib ``sqlite3``). The agent ``put``s messages; the network
side takes the ones that are :meth:`Outbox.due` in FIFO order, publishes them and marks them
sent. A report (a message with a ``sequence``) leaves the outbox only when a monitor's
end-to-end acknowledgement names its sequence (:meth:`Outbox.ack_sequences`, see
:mod:`edgefleet.edge.ack`): the broker's PUBACK is not storage, and a broker that dies
before writing its database loses what it acknowledged. A sent report that is not
acknowledged becomes due again after a timeout that doubles with every attempt (with
jitter, so a fleet that lost its broker does not re-send in lock-step), so delivery is at
least once, and the central side counts each ``(device_id, sequence)`` once. A message
without a sequence is removed on the broker's PUBACK (:meth:`Outbox.ack`).

Rows: pending (never sent) -> sent (``attempts`` > 0, waiting for the ack; due again at
``due``) -> deleted on the ack.

Policy (bounded, never silent):

- **Bounds**: at most ``max_messages`` messages (default 10,000) and ``max_bytes`` of topics
  and payloads (default 50 MB; SQLite's own overhead comes on top). A payload larger than
  ``max_bytes`` on its own is refused with :class:`edgefleet.errors.InputError`.
- **Full**: a ``put`` that would exceed a bound drops the *oldest* messages until the new one
  fits, because the newest state matters most; each drop counts in ``dropped_overflow``.
- **TTL**: a message older than ``ttl_seconds`` (default 7 days) by the wall clock is
  dropped at the next put, peek or ``purge_expired`` and counted in ``dropped_expired``. A
  device whose clock jumps forward by more than the TTL (no RTC, then NTP) expires its queue.
- **Counted once, in a report**: every drop also adds to ``unreported_drops``.
  :meth:`Outbox.put_report` builds the next report with that number (its
  ``dropped_reports``) and stores it in the same transaction that takes the number, so a
  crash cannot lose the count or count it twice. The message remembers the drops it carries;
  if it is dropped in turn, its carried drops return to ``unreported_drops`` together with
  itself. So each drop reaches the central side in exactly one delivered report (once a
  report gets through), and the counters in :meth:`Outbox.stats` persist across restarts.
- **Durability**: ``synchronous=FULL``: in WAL mode each commit is fsynced before ``put``
  returns, so a returned put survives power loss, not only a killed process (``NORMAL``
  would survive a killed process but could lose the last commits on power loss, common on
  devices). Reports are a few per minute, so an fsync each is cheap. A process killed at any
  point leaves a consistent database: SQLite commits atomically, a message is there whole or
  not at all. Acks are fsynced too; an ack lost to a power cut means a duplicate, which the
  central side discards.
- **Corruption** (a damaged SD card, not a crash): a file SQLite reports as corrupt or not a
  database is renamed to ``<name>.corrupt-<time>`` for inspection and a fresh outbox
  started, counted in ``corrupt_resets``: a device keeps reporting rather than stopping.
- **Threads**: one lock around one connection; the MQTT network thread may ack while the
  agent thread puts. Not for network file systems (WAL needs shared memory).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edgefleet.errors import InputError

__all__ = ["Outbox", "OutboxItem", "OutboxStats"]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGES = 10_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_TTL_SECONDS = 7 * 24 * 3600.0

_COUNTERS = ("dropped_overflow", "dropped_expired", "unreported_drops", "corrupt_resets")
_SCHEMA = (
    # AUTOINCREMENT: ids are never reused, so a late ack of an old id cannot remove a newer
    # message, and id order is FIFO order.
    """CREATE TABLE IF NOT EXISTS messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        qos INTEGER NOT NULL,
        created REAL NOT NULL,
        size INTEGER NOT NULL,
        carried INTEGER NOT NULL,
        payload BLOB NOT NULL,
        sequence INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        due REAL NOT NULL DEFAULT 0
    )""",
    # Covers the TTL scan and the byte total without reading payload pages.
    "CREATE INDEX IF NOT EXISTS messages_created ON messages (created, size)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)
# Indexes on columns an outbox of an earlier edgefleet lacks: created after _MIGRATIONS.
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS messages_sequence ON messages (sequence)",
    "CREATE INDEX IF NOT EXISTS messages_due ON messages (due, id)",
)
# Columns added since the first outbox: an existing device file gains them on open.
_MIGRATIONS = {
    "sequence": "ALTER TABLE messages ADD COLUMN sequence INTEGER",
    "attempts": "ALTER TABLE messages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
    "due": "ALTER TABLE messages ADD COLUMN due REAL NOT NULL DEFAULT 0",
}
_ITEM_COLUMNS = "id, topic, payload, qos, created, carried, sequence, attempts"
# SQLite result codes (sqlite3.h) that mean the file itself is damaged, unlike "locked".
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


@dataclass(frozen=True)
class OutboxItem:
    id: int
    topic: str
    payload: bytes
    qos: int
    created: float
    carried_drops: int
    """Drops this message reports (its ``dropped_reports``), 0 for a plain ``put``."""
    sequence: int | None = None
    """The report's sequence, which an end-to-end ack names; None for a plain message."""
    attempts: int = 0
    """How often it was sent without an acknowledgement so far."""


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    """Messages in the outbox: never sent, or sent and waiting for the acknowledgement."""
    bytes: int
    dropped_overflow: int
    dropped_expired: int
    unreported_drops: int
    """Drops no queued report carries yet: the next :meth:`Outbox.put_report` takes them."""
    corrupt_resets: int
    awaiting_ack: int = 0
    """Of ``pending``, those sent at least once and not yet acknowledged."""


class Outbox:
    """A bounded, persistent FIFO of outgoing messages (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ):
        if max_messages < 1 or max_bytes < 1 or not ttl_seconds > 0:
            raise InputError("outbox bounds must be positive: max_messages, max_bytes, ttl")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.ttl_seconds = float(ttl_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            return _connect(self.path)
        except sqlite3.DatabaseError as error:
            code = getattr(error, "sqlite_errorcode", None)
            if code not in (_SQLITE_CORRUPT, _SQLITE_NOTADB) and "quick_check" not in str(error):
                raise
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        log.error("outbox %s is corrupt; moved to %s, starting a new one", self.path, aside)
        self.path.rename(aside)
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists():
            wal.rename(aside.with_name(aside.name + "-wal"))
        self.path.with_name(self.path.name + "-shm").unlink(missing_ok=True)
        db = _connect(self.path)
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE counters SET value = value + 1 WHERE name = 'corrupt_resets'")
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def put(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Queue a message; returns its id once it is on disk."""
        return self._put(topic, lambda _: payload, qos, carry=False)

    def put_report(
        self,
        topic: str,
        build: Callable[[int], bytes],
        qos: int = 1,
        *,
        sequence: int | None = None,
    ) -> int:
        """Queue a report that carries the drops not yet reported: ``build(dropped)`` makes
        the payload (a report whose ``dropped_reports`` is ``dropped``). Taking the count and
        storing the report are one transaction; if ``build`` raises, nothing changes. With a
        ``sequence``, the report stays until an end-to-end ack names it."""
        if sequence is not None and (type(sequence) is not int or sequence < 0):
            raise InputError(f"a report sequence is an integer from 0, not {sequence!r}")
        return self._put(topic, build, qos, carry=True, sequence=sequence)

    def _put(
        self,
        topic: str,
        build: Callable[[int], bytes],
        qos: int,
        *,
        carry: bool,
        sequence: int | None = None,
    ) -> int:
        if not isinstance(topic, str) or not topic:
            raise InputError("an outbox message needs a topic")
        if qos not in (0, 1, 2):
            raise InputError(f"qos is 0, 1 or 2, not {qos!r}")
        with self._lock, self._db:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            now = self._clock()
            self._expire(now)
            carried = self._counter("unreported_drops") if carry else 0
            payload = build(carried)
            if not isinstance(payload, bytes | bytearray | memoryview):
                raise InputError(f"an outbox payload is bytes, not {type(payload).__name__}")
            payload = bytes(payload)
            size = len(payload) + len(topic.encode("utf-8"))
            if size > self.max_bytes:
                raise InputError(
                    f"a message of {size} bytes can never fit an outbox of {self.max_bytes}"
                )
            # Drops made here stay unreported: this payload was built before them, and the
            # next report carries them.
            self._make_room(size)
            cursor = db.execute(
                "INSERT INTO messages (topic, qos, created, size, carried, payload, sequence) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (topic, qos, now, size, carried, payload, sequence),
            )
            if carried:
                self._add("unreported_drops", -carried)
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def peek(self, n: int = 1, *, after: int | None = None) -> list[OutboxItem]:
        """Up to ``n`` of the oldest messages (with an id above ``after``, to skip those
        already in flight), oldest first. Peeking removes nothing."""
        if type(n) is not int or n < 1:
            raise InputError(f"peek takes a positive count, not {n!r}")
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._expire(self._clock())
            rows = self._db.execute(
                f"SELECT {_ITEM_COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (-1 if after is None else after, n),
            ).fetchall()
        return [OutboxItem(*row) for row in rows]

    def due(self, n: int = 1) -> list[OutboxItem]:
        """Up to ``n`` of the oldest messages to send now: never sent, or sent and not
        acknowledged by their due time. Taking them removes nothing."""
        if type(n) is not int or n < 1:
            raise InputError(f"due takes a positive count, not {n!r}")
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            now = self._clock()
            self._expire(now)
            rows = self._db.execute(
                f"SELECT {_ITEM_COLUMNS} FROM messages WHERE due <= ? ORDER BY id LIMIT ?",
                (now, n),
            ).fetchall()
        return [OutboxItem(*row) for row in rows]

    def mark_sent(self, items: Sequence[OutboxItem], retry_after: Callable[[int], float]) -> None:
        """Record that ``items`` were handed to the broker: each is due again
        ``retry_after(attempts)`` seconds from now unless an ack removes it first."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            now = self._clock()
            self._db.executemany(
                "UPDATE messages SET attempts = attempts + 1, due = ? WHERE id = ?",
                [(now + retry_after(item.attempts + 1), item.id) for item in items],
            )

    def next_due(self) -> float | None:
        """Seconds until the next message is due (0 if one is due now), None if empty."""
        with self._lock:
            row = self._db.execute("SELECT MIN(due) FROM messages").fetchone()
        return None if row[0] is None else max(0.0, row[0] - self._clock())

    def ack_sequences(self, ranges: Sequence[tuple[int, int]]) -> int:
        """Remove the reports whose sequences fall in the inclusive ``ranges``, which a
        monitor has stored; returns how many were still queued."""
        if not ranges:
            return 0
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            return sum(
                self._db.execute(
                    "DELETE FROM messages WHERE sequence BETWEEN ? AND ?", pair
                ).rowcount
                for pair in ranges
            )

    def ack(self, item_id: int) -> bool:
        """Remove a message the broker acknowledged; False if it was no longer queued
        (acked before, or dropped meanwhile: then its drop was counted)."""
        return self.ack_many([item_id]) == 1

    def ack_many(self, item_ids: Sequence[int]) -> int:
        """:meth:`ack` for a batch in one transaction: one fsync instead of one a message,
        which is what bounds a sender's rate. Returns how many were still queued."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            return sum(
                self._db.execute("DELETE FROM messages WHERE id = ?", (item_id,)).rowcount
                for item_id in item_ids
            )

    def purge_expired(self) -> int:
        """Drop the messages older than the TTL now; returns how many."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            return self._expire(self._clock())

    def stats(self) -> OutboxStats:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._expire(self._clock())
            pending, size = self._totals()
            (sent,) = self._db.execute(
                "SELECT COUNT(*) FROM messages WHERE attempts > 0"
            ).fetchone()
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return OutboxStats(
            pending=pending,
            bytes=size,
            awaiting_ack=int(sent),
            **{k: counters[k] for k in _COUNTERS},
        )

    # The helpers below run inside a transaction the caller opened, under the lock.

    def _totals(self) -> tuple[int, int]:
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages"
        ).fetchone()
        return int(count), int(size)

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def _add(self, name: str, amount: int) -> None:
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (amount, name))

    def _drop(self, where: str, parameter: float, counter: str) -> int:
        count, carried = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(carried), 0) FROM messages WHERE {where}",
            (parameter,),
        ).fetchone()
        if count:
            self._db.execute(f"DELETE FROM messages WHERE {where}", (parameter,))
            self._add(counter, count)
            # A dropped report's own drops were never delivered: they go back in the pool.
            self._add("unreported_drops", count + carried)
        return int(count)

    def _expire(self, now: float) -> int:
        return self._drop("created < ?", now - self.ttl_seconds, "dropped_expired")

    def _make_room(self, size: int) -> None:
        count, total = self._totals()
        excess_count = count + 1 - self.max_messages
        excess_bytes = total + size - self.max_bytes
        if excess_count <= 0 and excess_bytes <= 0:
            return
        last = None
        for message_id, message_size in self._db.execute(
            "SELECT id, size FROM messages ORDER BY id"
        ):
            last = message_id
            excess_count -= 1
            excess_bytes -= message_size
            if excess_count <= 0 and excess_bytes <= 0:
                break
        if last is not None:
            self._drop("id <= ?", last, "dropped_overflow")


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are opened explicitly (BEGIN IMMEDIATE takes the
    # write lock up front, so a transaction never fails half-way on a busy lock), and the
    # connection's context manager commits or rolls back.
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        # Keep the WAL file from staying large after a burst (flash storage is small).
        db.execute("PRAGMA journal_size_limit = 4194304")
        result = db.execute("PRAGMA quick_check").fetchone()
        if result is None or result[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {result}")
        with db:
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
            for column, statement in _MIGRATIONS.items():
                if column not in columns:
                    db.execute(statement)
            for statement in _INDEXES:
                db.execute(statement)
            db.executemany(
                "INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)",
                [(name,) for name in _COUNTERS],
            )
    except BaseException:
        db.close()
        raise
    return db

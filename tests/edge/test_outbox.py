"""The on-disk outbox: FIFO, bounded with every drop counted once, durable across a killed
writer, safe to use from two threads."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.edge.outbox import Outbox, OutboxStats
from edgefleet.errors import InputError


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_fifo_order_and_peek_after(tmp_path: Path) -> None:
    with Outbox(tmp_path / "out.db") as box:
        ids = [box.put(f"t/{i}", b"payload %d" % i) for i in range(5)]
        assert ids == sorted(ids)
        items = box.peek(3)
        assert [i.payload for i in items] == [b"payload 0", b"payload 1", b"payload 2"]
        assert [i.topic for i in items] == ["t/0", "t/1", "t/2"]
        assert [i.payload for i in box.peek(10, after=items[-1].id)] == [
            b"payload 3",
            b"payload 4",
        ]
        assert box.ack(items[1].id)
        assert not box.ack(items[1].id)
        assert not box.ack(999)
        assert [i.payload for i in box.peek(10)] == [
            b"payload 0",
            b"payload 2",
            b"payload 3",
            b"payload 4",
        ]
        assert box.peek(1)[0].qos == 1
        with pytest.raises(InputError, match="positive count"):
            box.peek(0)


def test_ids_are_never_reused_after_the_newest_is_acked(tmp_path: Path) -> None:
    with Outbox(tmp_path / "out.db") as box:
        first = box.put("t", b"a")
        assert box.ack(first)
    with Outbox(tmp_path / "out.db") as box:
        assert box.put("t", b"b") > first


def test_messages_and_counters_persist_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "out.db"
    with Outbox(path, max_messages=3) as box:
        for i in range(5):
            box.put("t", bytes([i]) * 10)
        before = box.stats()
    with Outbox(path, max_messages=3) as box:
        assert box.stats() == before
        assert before == OutboxStats(
            pending=3,
            bytes=33,
            dropped_overflow=2,
            dropped_expired=0,
            unreported_drops=2,
            corrupt_resets=0,
        )
        assert [i.payload[0] for i in box.peek(5)] == [2, 3, 4]


def test_bounded_by_count_drops_the_oldest(tmp_path: Path) -> None:
    with Outbox(tmp_path / "out.db", max_messages=4) as box:
        for i in range(10):
            box.put("t", str(i).encode())
        assert [i.payload for i in box.peek(10)] == [b"6", b"7", b"8", b"9"]
        stats = box.stats()
        assert (stats.pending, stats.dropped_overflow, stats.unreported_drops) == (4, 6, 6)


def test_bounded_by_bytes_drops_the_oldest(tmp_path: Path) -> None:
    # Each message is 1 byte of topic + 30 of payload.
    with Outbox(tmp_path / "out.db", max_bytes=100) as box:
        for i in range(5):
            box.put("t", bytes([i]) * 30)
        assert [i.payload[0] for i in box.peek(10)] == [2, 3, 4]
        assert box.stats().bytes == 93
        # A big one pushes out as many as it needs, oldest first.
        box.put("t", b"x" * 60)
        assert [i.payload[0] for i in box.peek(10)] == [4, ord("x")]
        assert box.stats().dropped_overflow == 4
        with pytest.raises(InputError, match="101 bytes can never fit an outbox of 100"):
            box.put("t", b"y" * 100)
        assert box.stats().pending == 2


def test_ttl_expiry_is_counted(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path / "out.db", ttl_seconds=100, clock=clock) as box:
        box.put("t", b"old")
        clock.now += 50
        box.put("t", b"newer")
        clock.now += 50  # "old" is exactly 100 s old: not yet expired
        assert [i.payload for i in box.peek(5)] == [b"old", b"newer"]
        clock.now += 1
        assert [i.payload for i in box.peek(5)] == [b"newer"]
        assert box.stats().dropped_expired == 1
        clock.now += 1000
        assert box.purge_expired() == 1
        stats = box.stats()
        assert (stats.pending, stats.dropped_expired, stats.unreported_drops) == (0, 2, 2)


def test_a_report_carries_the_drops_exactly_once(tmp_path: Path) -> None:
    with Outbox(tmp_path / "out.db", max_messages=3) as box:
        for i in range(5):
            box.put("t", b"%d" % i)  # drops 0 and 1
        for item in box.peek(2):
            box.ack(item.id)
        seen: list[int] = []

        def build(dropped: int) -> bytes:
            seen.append(dropped)
            return b"report dropped=%d" % dropped

        first = box.put_report("t/report", build)
        assert seen == [2]
        assert box.stats().unreported_drops == 0
        assert box.peek(5)[-1].carried_drops == 2
        box.put_report("t/report", build)
        assert seen == [2, 0]
        box.put("t", b"filler")  # drops message 4
        assert box.stats().unreported_drops == 1
        # The first report is dropped in its turn: its 2 go back in the pool, with itself.
        box.put("t", b"filler")
        assert first not in {item.id for item in box.peek(5)}
        assert box.stats().unreported_drops == 4
        # A build that fails leaves everything as it was.
        before = box.stats()

        def broken(dropped: int) -> bytes:
            raise RuntimeError("encoder bug")

        with pytest.raises(RuntimeError):
            box.put_report("t/report", broken)
        assert box.stats() == before
        # A report put into a full outbox takes the count first; the drop it causes waits
        # for the next one.
        box.put_report("t/report", build)
        assert seen == [2, 0, 4]
        assert box.stats().unreported_drops == 1


def _report_of_size(n: int) -> Callable[[int], bytes]:
    return lambda dropped: b"%d:" % dropped + b"r" * n


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.integers(1, 40)),
            st.tuples(st.just("report"), st.integers(1, 40)),
            st.tuples(st.just("ack"), st.integers(0, 3)),
            st.tuples(st.just("wait"), st.integers(1, 80)),
        ),
        max_size=30,
    )
)
def test_every_drop_is_reported_exactly_once(operations: list[tuple[str, int]]) -> None:
    """Whatever happens, each drop is in exactly one place: the unreported pool, a queued
    report, or a delivered (acked) report."""
    clock = Clock()
    delivered = 0
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "out.db"
        with Outbox(path, max_messages=4, max_bytes=100, ttl_seconds=100, clock=clock) as box:
            for operation, value in operations:
                if operation == "put":
                    box.put("t", b"x" * value)
                elif operation == "report":
                    box.put_report("r", _report_of_size(value))
                elif operation == "ack":
                    items = box.peek(4)
                    if len(items) > value:
                        delivered += items[value].carried_drops
                        assert box.ack(items[value].id)
                else:
                    clock.now += value
                stats = box.stats()
                queued = sum(item.carried_drops for item in box.peek(10))
                total = stats.dropped_overflow + stats.dropped_expired
                assert total == stats.unreported_drops + queued + delivered
                assert stats.pending <= 4
                assert stats.bytes <= 100


def test_concurrent_put_and_ack_from_two_threads(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "out.db")
    n = 300
    acked: list[bytes] = []
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            for i in range(n):
                box.put("t", b"%05d" % i)
        except BaseException as error:
            errors.append(error)

    def consumer() -> None:
        try:
            deadline = time.monotonic() + 20
            while len(acked) < n and time.monotonic() < deadline:
                for item in box.peek(16):
                    assert box.ack(item.id)
                    acked.append(item.payload)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert acked == [b"%05d" % i for i in range(n)]
    assert box.stats().pending == 0
    box.close()


WRITER = textwrap.dedent(
    """
    import hashlib, os, random, sys
    from edgefleet.edge.outbox import Outbox

    box = Outbox(sys.argv[1], max_messages=10**6, max_bytes=10**9)
    rng = random.Random(int(sys.argv[2]))
    while True:
        body = os.urandom(rng.randrange(10, 200_000))
        item = box.put("t", hashlib.sha256(body).digest() + body)
        print("put", item, flush=True)
        if rng.random() < 0.3:
            oldest = box.peek(1)[0].id
            box.ack(oldest)
            print("ack", oldest, flush=True)
    """
)


def test_a_sigkilled_writer_leaves_a_usable_outbox_with_whole_messages(tmp_path: Path) -> None:
    path = tmp_path / "out.db"
    put: set[int] = set()
    acked: set[int] = set()
    for round_ in range(3):
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(round_)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        for count, line in enumerate(process.stdout, 1):
            kind, item = line.split()
            (put if kind == "put" else acked).add(int(item))
            if count == 40:
                break
        # Kill at an arbitrary point of the next write, not between two of them.
        time.sleep(0.001 * (7 * round_ % 5))
        process.send_signal(signal.SIGKILL)
        # Read the rest through the same text stream: the loop above may have buffered lines
        # past the 40th, and communicate() would read the pipe beneath that buffer and lose
        # them (a put never recorded looked like a message from nowhere).
        rest = process.stdout.read()
        assert process.wait(timeout=10) == -signal.SIGKILL
        # Whole lines printed before the kill are puts and acks that returned.
        for line in rest.split("\n")[:-1]:
            kind, item = line.split()
            (put if kind == "put" else acked).add(int(item))

        with Outbox(path, max_messages=10**6, max_bytes=10**9) as box:
            queued = box.peek(10**6)
            stats = box.stats()
        assert stats.corrupt_resets == 0
        present = {message.id for message in queued}
        for message in queued:
            digest, body = message.payload[:32], message.payload[32:]
            assert hashlib.sha256(body).digest() == digest, f"message {message.id} is damaged"
        # Every put that returned and was not acked is there, except that the kill may have
        # come after a commit and before its line: one ack of the oldest, one put more.
        expected = put - acked
        missing, extra = expected - present, present - expected
        assert missing <= {min(expected)}
        assert len(extra) <= 1
        assert all(i > max(put) for i in extra)
        put |= extra
        acked |= missing
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_corrupt_file_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "out.db"
    path.write_bytes(os.urandom(8192))
    with Outbox(path) as box:
        box.put("t", b"still reporting")
        assert box.stats().corrupt_resets == 1
    assert len(list(tmp_path.glob("out.db.corrupt-*"))) == 1
    with Outbox(path) as box:
        assert [i.payload for i in box.peek(5)] == [b"still reporting"]


def test_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="must be positive"):
        Outbox(tmp_path / "a.db", max_messages=0)
    with Outbox(tmp_path / "out.db") as box:
        with pytest.raises(InputError, match="needs a topic"):
            box.put("", b"x")
        with pytest.raises(InputError, match="qos is 0, 1 or 2"):
            box.put("t", b"x", qos=3)
        with pytest.raises(InputError, match="payload is bytes, not str"):
            box.put("t", "text")  # type: ignore[arg-type]
        assert box.stats().pending == 0


def test_durability_settings(tmp_path: Path) -> None:
    with Outbox(tmp_path / "out.db") as box:
        db = box._db
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


# -- end-to-end acks: pending -> sent -> deleted on the monitor's ack -------------------------


def _report(box: Outbox, sequence: int) -> int:
    return box.put_report("r", lambda dropped: b"report %d" % sequence, sequence=sequence)


def test_a_sent_report_stays_until_its_ack_and_is_due_again_after_the_timeout(
    tmp_path: Path,
) -> None:
    clock = Clock()
    with Outbox(tmp_path / "out.db", clock=clock) as box:
        for sequence in (1, 2, 3):
            _report(box, sequence)
        items = box.due(10)
        assert [i.sequence for i in items] == [1, 2, 3]
        box.mark_sent(items, lambda attempts: 10.0 * attempts)
        assert box.due(10) == []  # sent, waiting for the ack
        assert box.stats().pending == 3
        assert box.stats().awaiting_ack == 3
        assert box.next_due() == pytest.approx(10.0)
        assert box.ack_sequences([(1, 1), (3, 7)]) == 2
        clock.now += 10.0
        (again,) = box.due(10)
        assert (again.sequence, again.attempts) == (2, 1)
        box.mark_sent([again], lambda attempts: 10.0 * attempts)
        clock.now += 19.0
        assert box.due(10) == []  # the second wait doubled
        clock.now += 1.0
        assert [i.attempts for i in box.due(10)] == [2]
        assert box.ack_sequences([(2, 2)]) == 1
        assert box.ack_sequences([(2, 2)]) == 0  # a repeated ack is harmless
        assert box.stats().pending == 0
        assert box.next_due() is None


def test_sent_state_survives_reopening(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path / "out.db", clock=clock) as box:
        _report(box, 1)
        box.mark_sent(box.due(1), lambda attempts: 30.0)
    with Outbox(tmp_path / "out.db", clock=clock) as box:
        assert box.due(1) == []
        assert box.stats().awaiting_ack == 1
        clock.now += 30.0
        assert [i.sequence for i in box.due(1)] == [1]


def test_an_outbox_of_the_first_format_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
        "qos INTEGER NOT NULL, created REAL NOT NULL, size INTEGER NOT NULL, "
        "carried INTEGER NOT NULL, payload BLOB NOT NULL)"
    )
    db.execute(
        "INSERT INTO messages (topic, qos, created, size, carried, payload) "
        "VALUES ('t', 1, ?, 5, 0, x'6f6c6421')",
        (time.time(),),
    )
    db.commit()
    db.close()
    with Outbox(path) as box:
        (item,) = box.due(5)
        assert (item.payload, item.sequence, item.attempts) == (b"old!", None, 0)
        _report(box, 7)
        assert [i.sequence for i in box.due(5)] == [None, 7]


def test_report_sequences_are_checked(tmp_path: Path) -> None:
    with Outbox(tmp_path / "out.db") as box, pytest.raises(InputError, match="sequence"):
        box.put_report("r", lambda dropped: b"x", sequence=-1)

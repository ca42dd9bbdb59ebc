"""Rollups (docs/architecture.md §7b): every fleet, cohort and group measure read from
rollups equals the same measure over the raw reports, on SQLite and PostgreSQL, for windows
aligned to buckets and not, with duplicates, refused reports, several writers and folds."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import func, select

from edgefleet.central.monitor.merging import add_counts
from edgefleet.central.monitor.purge import delete_device_records
from edgefleet.central.monitor.retention import DAY, Retention, compact
from edgefleet.central.monitor.rollups import HOUR, MINUTE, plan_window
from edgefleet.central.monitor.store import MonitorStore, reports, rollups
from edgefleet.central.monitor.validation import layout_of
from edgefleet.edge.aggregate import Aggregate, SketchSums, merge_all
from edgefleet.edge.distinct import EXACT_LIMIT
from edgefleet.edge.topics import Topics
from tests.monitor.conftest import db_url, insert_stored_row, make_report  # noqa: F401

TOPICS = Topics("acme")
START = 1_750_000_000.0 - (1_750_000_000.0 % HOUR)  # an hour boundary
DEVICES = [f"d{i}" for i in range(6)]


def _messages() -> list[tuple[str, bytes]]:
    """Reports of 6 devices, two versions, two cohorts, two groups, over 2.5 hours with
    windows ending off the minute boundaries, and a re-sent duplicate."""
    messages = []
    for step in range(30):
        end = START + step * 317.0 + 13.5  # crosses minutes and hours unevenly
        for number, device in enumerate(DEVICES):
            report = make_report(
                device,
                step,
                model_version="1.0.0" if number < 4 else "1.1.0",
                cohort="stable" if number % 2 else "canary",
                device_group="eu" if number < 3 else "us",
                window_end=end + number,
                rows=20,
            )
            messages.append((TOPICS.report(device), report.encode()))
    messages.append(messages[7])  # a duplicate in a later batch
    return messages


def _ingest(store: MonitorStore, messages: list[tuple[str, bytes]], batch: int) -> None:
    for start in range(0, len(messages), batch):
        store.ingest_many(messages[start : start + batch])


WINDOWS: list[tuple[float | None, float | None]] = [
    (None, None),
    (START, START + HOUR),  # one whole hour
    (START + 120.0, START + 1800.0),  # whole minutes
    (START + 95.5, START + 4000.25),  # edges, minutes, an hour boundary inside
    (START + 700.0, None),
    (None, START + 2 * HOUR + 61.0),
    (START + 10.0, START + 50.0),  # inside one minute
]
SCOPES: list[dict[str, Any]] = [
    {"model_version": "1.0.0"},
    {"model_version": "1.1.0"},
    {"model_version": "1.0.0", "cohort": "canary"},
    {"model_version": "1.0.0", "device_group": "us"},
    {"model_version": "1.1.0", "cohort": "stable", "device_group": "us"},
]


def _same(a: Aggregate | None, b: Aggregate | None) -> None:
    """The same merge, every count of every sketch (so every measure made of it)."""
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert a.to_dict() == b.to_dict()


@pytest.fixture
def stores(db_url: str, tmp_path: Any) -> Any:  # noqa: F811
    """The same reports in a store that rolls them up (two writers, folded or not) and in
    one that keeps them raw only."""
    messages = _messages()
    rolled = MonitorStore(db_url)
    other_writer = MonitorStore(db_url)
    _ingest(rolled, messages[:100], 17)
    _ingest(other_writer, messages[100:], 23)  # a second monitor on the same database
    rolled.fold_rollups(force=True)
    raw = MonitorStore(f"sqlite:///{tmp_path / 'raw.db'}", rollups=False)
    _ingest(raw, messages, 50)
    yield rolled, raw
    for store in (rolled, other_writer, raw):
        store.close()


def test_rollup_measures_equal_raw_measures(stores: Any) -> None:
    rolled, raw = stores
    with rolled.engine.connect() as connection:
        unrolled = connection.execute(
            select(func.count()).select_from(reports).where(reports.c.rolled_up == 0)
        ).scalar_one()
        rollup_rows = connection.execute(select(func.count()).select_from(rollups)).scalar_one()
    assert unrolled == 0
    assert rollup_rows > 0
    compared = 0
    for since, until in WINDOWS:
        for scope in SCOPES:
            a = rolled.aggregate("acme", since=since, until=until, **scope)
            b = raw.aggregate("acme", since=since, until=until, **scope)
            _same(a, b)
            assert rolled.report_count("acme", since=since, until=until, **scope) == (
                raw.report_count("acme", since=since, until=until, **scope)
            )
            compared += a is not None
    assert compared >= 25
    assert rolled.model_versions("acme") == raw.model_versions("acme")
    assert rolled.model_versions("acme") == [("churn", "1.0.0", 120), ("churn", "1.1.0", 60)]
    assert rolled.fleets() == raw.fleets() == ["acme"]


def test_rows_written_by_sql_are_read_raw_until_rolled_up(db_url: str) -> None:  # noqa: F811
    store = MonitorStore(db_url)
    store.ingest_many([(TOPICS.report("d0"), make_report("d0", 1, window_end=START + 30).encode())])
    hand = make_report("d1", 1, window_end=START + 90)
    insert_stored_row(store, hand.encode().decode("utf-8"))
    whole = store.aggregate("acme", model_version="1.0.0")
    assert whole is not None
    assert whole.reports == 2
    assert whole.devices == {"d0", "d1"}
    assert store.report_count("acme") == 2
    store.close()


def test_plan_covers_a_window_exactly_once() -> None:
    """Every second of ``[since, until)`` is in exactly one hour, minute or raw range."""
    for since, until in [(START + 95.5, START + 9000.25), (START, START + 60), (START + 5, None)]:
        plan = plan_window(since, until)
        parts: list[tuple[float, float]] = list(plan.raw)
        parts += [(float(a), float(b)) for a, b in plan.minutes]
        if plan.hours is not None:
            parts.append((float(plan.hours[0]), float(plan.hours[1])))
        parts.sort()
        assert parts[0][0] == since
        for (_, end), (start, _) in itertools.pairwise(parts):
            assert end == start
        assert parts[-1][1] == (until if until is not None else parts[-1][1])
        for a, b in plan.minutes:
            assert a % MINUTE == 0
            assert b % MINUTE == 0
        if plan.hours is not None and until is not None:
            assert plan.hours[0] % HOUR == 0
            assert math.isclose(plan.hours[1] % HOUR, 0)


def test_deleting_a_device_sums_its_buckets_again(stores: Any) -> None:
    rolled, raw = stores
    for store in (rolled, raw):
        delete_device_records(store, "acme", "d2")
        delete_device_records(store, "acme", "d4", since=START + 1000.0, until=START + 5000.0)
    for since, until in WINDOWS:
        for scope in SCOPES:
            _same(
                rolled.aggregate("acme", since=since, until=until, **scope),
                raw.aggregate("acme", since=since, until=until, **scope),
            )
    whole = rolled.aggregate("acme", model_version="1.0.0")
    assert whole is not None
    assert "d2" not in whole.devices
    assert [d.device_id for d in rolled.devices("acme")] == [
        d.device_id for d in raw.devices("acme")
    ]
    assert {d.device_id: d.reports for d in rolled.devices("acme")} == {
        d.device_id: d.reports for d in raw.devices("acme")
    }


def _rows_of(store: MonitorStore, width: int) -> list[tuple[int, str]]:
    with store.engine.connect() as connection:
        found = connection.execute(
            select(rollups.c.bucket, rollups.c.writer).where(rollups.c.width == width)
        ).all()
    return [(int(b), str(w)) for b, w in found]


def test_compaction_rolls_up_folds_and_expires(db_url: str) -> None:  # noqa: F811
    now = START + 50 * DAY
    ages = (40 * DAY, 20 * DAY, 3 * DAY, 1800.0)
    first, second = MonitorStore(db_url), MonitorStore(db_url)
    for number, age in enumerate(ages):
        for device, store in (("d0", first), ("d1", second)):
            report = make_report(device, number, window_end=now - age)
            store.ingest_many([(TOPICS.report(device), report.encode())])
    hand = make_report("d2", 1, window_end=now - 20 * DAY + 5)  # written by SQL
    insert_stored_row(first, hand.encode().decode("utf-8"))
    insert_stored_row(first, "not json", device_id="d3", sequence=2, window_end=now - 20 * DAY)
    before = first.aggregate("acme", model_version="1.0.0")
    assert before is not None
    assert before.reports == 9  # the bad row is skipped

    done = compact(first, Retention(raw_days=7, minute_days=30, hour_days=365), now=now)

    assert done.rolled_up == 2  # both rows were looked at; the good one rolled up
    assert done.raw_deleted == 6  # 40 and 20 days old: d0, d1 each, the hand row, the bad one
    assert done.minute_deleted > 0
    after = first.aggregate("acme", model_version="1.0.0")
    _same(after, before)  # every report lives on in the hour rollups
    minutes = _rows_of(first, MINUTE)
    assert min(b for b, _ in minutes) >= now - 30 * DAY - MINUTE
    hours = _rows_of(first, HOUR)
    old_hour = int((now - 40 * DAY) // HOUR * HOUR)
    assert [w for b, w in hours if b == old_hour] == [first.writer]  # two writers, folded
    with first.engine.connect() as connection:
        kept = connection.execute(select(func.min(reports.c.window_end))).scalar_one()
    assert kept >= now - 7 * DAY
    # Idempotent: a second run finds nothing to do.
    again = compact(first, Retention(), now=now)
    assert (again.raw_deleted, again.minute_deleted, again.folded) == (0, 0, 0)
    _same(first.aggregate("acme", model_version="1.0.0"), before)
    first.close()
    second.close()


def test_a_rollup_body_is_the_aggregate_of_its_reports() -> None:
    """SketchSums.to_dict (the rollup body, made at every batch) is freeze().to_dict():
    the extension point of docs/architecture.md §7b holds the two equal."""
    reports_ = [
        make_report(f"d{i}", i, cohort="canary" if i % 2 else "stable", window_end=START + i)
        for i in range(5)
    ]
    for report in reports_:
        report_dict = report.to_dict()
        assert layout_of(report_dict)  # a report parses as the merge reads it
    total = SketchSums()
    for report in reports_:
        raw = report.to_dict()
        add_counts(total, raw, layout_of(raw))
    assert total.to_dict() == total.freeze().to_dict()
    assert total.freeze() == merge_all(reports_)


def test_device_totals_count_what_the_device_list_holds(stores: Any, db_url: str) -> None:  # noqa: F811
    """The overview's figures, summed by the database, equal those of the device list;
    with reports not rolled up (then combined from the list)."""
    rolled, _ = stores
    for turn in range(2):
        summaries = rolled.devices("acme")
        since = sorted(s.last_seen for s in summaries)[len(summaries) // 2]
        counted = rolled.device_totals("acme", since)
        running: dict[tuple[str, str], int] = {}
        for s in summaries:
            running[(s.model_name, s.model_version)] = (
                running.get((s.model_name, s.model_version), 0) + 1
            )
        assert counted.total == len(summaries)
        assert counted.online == sum(1 for s in summaries if s.last_seen >= since)
        assert counted.scored == sum(s.scored for s in summaries)
        assert counted.failed == sum(s.failed for s in summaries)
        assert counted.last_seen == max(s.last_seen for s in summaries)
        assert dict(counted.running) == running
        hand = make_report("d9", turn, window_end=START + 90)  # a device only SQL wrote
        insert_stored_row(rolled, hand.encode().decode("utf-8"))
    assert rolled.device_totals("acme", 0.0).total == len(DEVICES) + 1  # d9 once
    assert rolled.device_totals("nobody", 0.0).total == 0


def test_reads_of_reports_not_rolled_up_use_their_partial_index(tmp_path: Any) -> None:
    """SQLite keeps no statistics: unless nothing else fits, it reads a version's rows not
    rolled up through another index and checks every report of the window (a read that
    grew with the reports stored)."""
    store = MonitorStore(f"sqlite:///{tmp_path / 'plan.db'}")
    _ingest(store, _messages(), 50)
    names = {"model_name": "churn", "model_version": "1.0.0", "cohort": "canary"}
    query = select(reports.c.id).where(*store._unrolled("acme", names, 0.0, 1e12))
    with store.engine.connect() as connection:
        compiled = query.compile(connection, compile_kwargs={"literal_binds": True})
        plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
    store.close()
    assert "ix_monitor_reports_unrolled" in str(plan)


def test_rollups_of_many_devices_count_them_as_raw_reports_do(db_url: str, tmp_path: Any) -> None:  # noqa: F811
    """Past EXACT_LIMIT devices a merge counts them in registers (edge/distinct.py): the
    rollups' union is the raw reports' to the bit, so the estimate is the same; a
    device-level scope still finds every device, from the raw reports."""
    template = make_report("d0", 0, window_end=START + 30)
    messages = []
    for number in range(EXACT_LIMIT + 44):
        device = f"m{number:04d}"
        for step in range(2):
            end = START + 37.0 * number + HOUR * step + 0.5
            report = replace(
                template, device_id=device, sequence=step, window_start=end - 60, window_end=end
            )
            messages.append((TOPICS.report(device), report.encode()))
    rolled = MonitorStore(db_url)
    raw = MonitorStore(f"sqlite:///{tmp_path / 'raw-many.db'}", rollups=False)
    _ingest(rolled, messages, 97)
    _ingest(raw, messages, 200)
    rolled.fold_rollups(force=True)
    for since, until in [(None, None), (START, START + 2 * HOUR), (START + 60, START + 5000.5)]:
        a = rolled.aggregate("acme", model_version="1.0.0", since=since, until=until)
        b = raw.aggregate("acme", model_version="1.0.0", since=since, until=until)
        _same(a, b)
    whole = rolled.aggregate("acme", model_version="1.0.0")
    assert whole is not None
    assert whole.device_sketch is not None
    assert abs(whole.n_devices - (EXACT_LIMIT + 44)) <= 0.05 * (EXACT_LIMIT + 44)
    assert rolled.device_ids("acme", model_version="1.0.0") == sorted(
        f"m{n:04d}" for n in range(EXACT_LIMIT + 44)
    )
    rolled.close()
    raw.close()

"""The monitor's store, on SQLite and on a real PostgreSQL server: each report counted once,
hostile messages quarantined without stopping the good ones, aggregates equal to merging the
reports by hand, and the fast validation path never more lenient than Report.decode."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from typing import Any

import pytest

from edgefleet.central.monitor.fastpath import fast_decode as _fast_decode
from edgefleet.central.monitor.store import (
    EXCERPT_BYTES,
    AlertRecord,
    DecisionRecord,
    IngestCounts,
    MonitorStore,
)
from edgefleet.edge.aggregate import merge_all
from edgefleet.edge.report import MAX_REPORT_BYTES, Report
from edgefleet.edge.topics import Topics
from edgefleet.errors import InputError
from tests.monitor.conftest import insert_stored_row, make_report

TOPICS = Topics("acme")


def message(report: Report) -> tuple[str, bytes]:
    return TOPICS.report(report.device_id), report.encode()


def mutated(report: Report, **changes: Any) -> bytes:
    raw = report.to_dict()
    raw.update(changes)
    return json.dumps(raw, separators=(",", ":")).encode()


def test_each_report_is_stored_once(db_url: str) -> None:
    store = MonitorStore(db_url)
    reports = [make_report(f"d{i % 3}", i // 3) for i in range(9)]
    first = store.ingest_many([message(r) for r in reports])
    assert first == IngestCounts(stored=9, duplicates=0, quarantined=0)
    # Again (a QoS 1 redelivery), and twice within one batch (a device's retry).
    again = store.ingest_many([message(r) for r in reports[:4]] + [message(reports[0])])
    assert again == IngestCounts(stored=0, duplicates=5, quarantined=0)
    mixed = store.ingest_many([message(make_report("d9", 0))] * 2 + [message(reports[5])])
    assert mixed == IngestCounts(stored=1, duplicates=2, quarantined=0)
    assert store.report_count("acme") == 10
    store.close()


def test_two_writers_racing_never_double_count(db_url: str) -> None:
    """Two stores (two monitors' connections) ingest overlapping batches at once."""
    reports = [message(make_report(f"d{i % 20}", i // 20, rows=5)) for i in range(400)]
    stores = [MonitorStore(db_url), MonitorStore(db_url)]
    results: list[IngestCounts] = []
    lock = threading.Lock()

    def ingest(store: MonitorStore, items: list[tuple[str, bytes]]) -> None:
        for start in range(0, len(items), 50):
            counts = store.ingest_many(items[start : start + 50])
            with lock:
                results.append(counts)

    # Same reports, opposite orders: every batch of one overlaps batches of the other.
    threads = [
        threading.Thread(target=ingest, args=(stores[0], reports)),
        threading.Thread(target=ingest, args=(stores[1], reports[::-1])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    total = sum(results, IngestCounts())
    assert total.stored == 400
    assert total.duplicates == 400
    assert stores[0].report_count("acme") == 400
    for store in stores:
        store.close()


def _hostile(good: Report) -> list[tuple[str, bytes, str]]:
    """(topic, payload, a word the quarantine reason must contain)."""
    topic = TOPICS.report(good.device_id)
    nested = b"[" * 100_000 + b"]" * 100_000
    return [
        (topic, b"\x00\xff garbage \x00", "UTF-8"),
        (topic, b"{not json", "not JSON"),
        (topic, b"x" * (MAX_REPORT_BYTES + 1), "exceeds"),
        (topic, mutated(good, schema_version=5), "schema_version"),
        (topic, mutated(good, schema_version=2), "segments"),
        (TOPICS.report("someone-else"), good.encode(), "only report as itself"),
        ("edgefleet/other/devices/x/report", good.encode(), "not of fleet"),
        (topic, mutated(good, model_version="9.9.9"), "not a known version"),
        (topic, mutated(good, device_group="eu'); DROP TABLE monitor_reports; --"), "group"),
        (topic, mutated(good, device_group="x" * 10_000), "group"),
        (topic, mutated(good, fleet="a\x00b"), "fleet"),
        (topic, good.encode().replace(b'"eu"', b'"e\\u0000u"'), "group"),
        (topic, good.encode()[:-1] + b',"extra":1}', "unknown field"),
        (topic, good.encode().replace(b'"failed":0', b'"failed":0,"failed":1'), "twice"),
        (topic, good.encode().replace(b'"sequence":', b'"sequence":-'), "sequence"),
        (topic, good.encode().replace(b'"failed":0', b'"failed":true'), "failed"),
        (topic, good.encode().replace(b'"failed":0', b'"failed":NaN'), "NaN"),
        # Report.decode raises OverflowError here (float() of the int): still quarantined.
        (topic, mutated(good, window_start=10**400), "finite time"),
        (topic, nested, "JSON"),
        ("edgefleet/acme/devices/" + "z" * 10_000 + "/report", good.encode(), "device id"),
        ("edgefleet/acme/devices/a\x00b/report", good.encode(), "device id"),
    ]


def test_hostile_reports_are_quarantined_and_ingestion_goes_on(db_url: str) -> None:
    store = MonitorStore(db_url)
    good = [make_report(f"d{i}", 0) for i in range(4)]
    hostile = _hostile(make_report("bad", 7))
    # Valid, though it looks like SQL: feature names may hold quotes.
    raw = good[3].to_dict()
    raw["features"][0]["name"] = "x'); DROP TABLE monitor_reports; --\""
    raw["model_version"] = "2.0.0"  # features of its own: merged apart
    sneaky = json.dumps(raw).encode()
    items = [message(good[0]), *[(t, p) for t, p, _ in hostile[:10]], message(good[1])]
    items += [(t, p) for t, p, _ in hostile[10:]]
    items += [message(good[2]), (TOPICS.report("d3"), sneaky)]

    def known(name: str, version: str) -> bool:
        return name == "churn" and version in ("1.0.0", "2.0.0")

    counts = store.ingest_many(items, known_version=known, fleet="acme", prefix="edgefleet")
    assert counts == IngestCounts(stored=4, duplicates=0, quarantined=len(hostile))
    assert store.report_count("acme") == 4
    kept = store.quarantined("acme", limit=1000)
    assert len(kept) == len(hostile) == store.quarantine_count("acme")
    unmatched = list(kept)
    for _, payload, word in hostile:
        # Each hostile message has its row: same size, the reason naming the fault.
        row = next(
            r
            for r in unmatched
            if r.payload_bytes == len(payload) and word.lower() in r.reason.lower()
        )
        unmatched.remove(row)
    for row in kept:
        assert len(row.excerpt) <= 4 * EXCERPT_BYTES
        assert len(row.reason) <= 500
        assert "\x00" not in row.excerpt + row.topic + row.reason
        assert row.excerpt.isprintable()
        assert row.topic.isprintable()
    stored = store.aggregate("acme", model_version="1.0.0")
    assert stored is not None
    assert stored.reports == 3
    sneaky_stored = store.aggregate("acme", model_version="2.0.0")
    assert sneaky_stored is not None
    assert sneaky_stored.features[0].name.startswith("x'); DROP")
    store.close()


def test_quarantine_keeps_only_the_newest(db_url: str) -> None:
    store = MonitorStore(db_url, quarantine_limit=5)
    for i in range(3):
        store.ingest_many([(TOPICS.report("d"), f"junk {i}.{j}".encode()) for j in range(4)])
    kept = store.quarantined("acme")
    assert [row.excerpt for row in kept] == [f"junk 2.{j}" for j in (3, 2, 1, 0)] + ["junk 1.3"]
    assert store.quarantined("elsewhere") == []
    store.close()


def test_aggregate_filters_match_hand_merges(db_url: str) -> None:
    store = MonitorStore(db_url)
    reports = []
    for i in range(24):
        reports.append(
            make_report(
                f"d{i % 6}",
                i // 6,
                model_version="1.0.0" if i % 4 else "1.1.0",
                cohort="canary" if i % 3 == 0 else "stable",
                device_group=f"g{i % 2}",
                window_end=1000.0 + 60.0 * i,
                rows=10 + i,
            )
        )
    assert store.ingest_many([message(r) for r in reports]).stored == 24
    cases: list[tuple[dict[str, Any], Callable[[Report], bool]]] = [
        ({"model_version": "1.0.0"}, lambda r: r.model_version == "1.0.0"),
        ({"model_version": "1.1.0"}, lambda r: r.model_version == "1.1.0"),
        (
            {"model_version": "1.0.0", "cohort": "canary"},
            lambda r: r.model_version == "1.0.0" and r.cohort == "canary",
        ),
        (
            {"model_version": "1.0.0", "device_group": "g1"},
            lambda r: r.model_version == "1.0.0" and r.device_group == "g1",
        ),
        (
            {"model_version": "1.0.0", "device_id": "d2"},
            lambda r: r.model_version == "1.0.0" and r.device_id == "d2",
        ),
        (
            {"model_version": "1.0.0", "since": 1300.0, "until": 1900.0},
            lambda r: r.model_version == "1.0.0" and 1300.0 <= r.window_end < 1900.0,
        ),
        (
            {"model_version": "1.1.0", "cohort": "canary", "device_group": "g0", "since": 1000.0},
            lambda r: (
                r.model_version == "1.1.0" and r.cohort == "canary" and r.device_group == "g0"
            ),
        ),
    ]
    for filters, keep in cases:
        expected = [r for r in reports if keep(r)]
        assert expected, filters
        assert store.aggregate("acme", **filters) == merge_all(expected), filters
        assert store.report_count("acme", **filters) == len(expected), filters
    # The window's edges: since is in, until is out.
    assert store.report_count("acme", since=1000.0, until=1060.0) == 1
    assert store.aggregate("acme", model_version="1.0.0", since=99_999.0) is None
    assert store.aggregate("other") is None
    with pytest.raises(InputError, match=r"1\.0\.0 \(18 reports\), churn 1\.1\.0 \(6"):
        store.aggregate("acme")
    assert store.model_versions("acme") == [("churn", "1.0.0", 18), ("churn", "1.1.0", 6)]
    store.close()


def test_devices_summarise_the_latest_report(db_url: str) -> None:
    store = MonitorStore(db_url)
    first = [make_report("d1", 0, rows=10), make_report("d2", 0, rows=20, device_group="us")]
    later = make_report("d1", 1, rows=30, model_version="1.1.0", cohort="canary")
    store.ingest_many([message(r) for r in first])
    store.ingest_many([message(later)])
    devices = {d.device_id: d for d in store.devices("acme")}
    assert list(devices) == ["d1", "d2"]
    d1 = devices["d1"]
    assert (d1.model_version, d1.cohort, d1.last_sequence, d1.reports) == ("1.1.0", "canary", 1, 2)
    assert (d1.scored, d1.failed) == (40, 0)
    assert (devices["d2"].device_group, devices["d2"].scored) == ("us", 20)
    assert store.devices("nobody") == []
    store.close()


def test_device_totals_stay_exact_beyond_64_bits(db_url: str) -> None:
    """Reports may not count beyond MAX_REPORT_COUNT (their sums would overflow a merge);
    rows stored before that rule (inserted here by SQL) still give exact device totals,
    where SQLite's sum() overflows, and are skipped by name from merges, not fatal."""
    store = MonitorStore(db_url)
    big = 2**62 + 1
    items = []
    for sequence in range(3):
        raw = make_report("d1", sequence, rows=0).to_dict()
        raw["scored"] = big
        for feature in raw["features"]:
            feature["bins"][0] = big
        raw["scores"]["counts"][0] = big
        items.append((TOPICS.report("d1"), json.dumps(raw).encode()))
    assert store.ingest_many(items) == IngestCounts(quarantined=3)
    assert "no device scores that much" in store.quarantined("acme")[0].reason
    for _, payload in items:
        insert_stored_row(store, payload.decode())
    (device,) = store.devices("acme")
    assert (device.scored, device.reports) == (3 * big, 3)
    merged = store.merged("acme")
    assert merged.aggregate is None
    assert merged.skipped_total == 3
    assert [s.sequence for s in merged.skipped] == [0, 1, 2]
    assert all("no device scores that much" in s.reason for s in merged.skipped)
    store.close()


def test_alerts_and_decisions_round_trip(db_url: str) -> None:
    store = MonitorStore(db_url)
    evidence = {"psi": 0.31, "auroc": math.nan, "bins": [1, 2, 3], "note": 'it\'s "quoted"'}
    alert = AlertRecord(None, "acme", 10.0, "drift.psi", "cohort", "tenure", 0.31, 0.2, evidence)
    first = store.add_alert(alert)
    second = store.add_alert(AlertRecord(None, "acme", 11.0, "r", "fleet", "s", 1.0, 2.0))
    store.add_alert(AlertRecord(None, "other", 12.0, "r", "fleet", "s", 1.0, 2.0))
    assert first != second
    (found, _) = store.alerts("acme")
    assert (found.id, found.rule, found.status) == (first, "drift.psi", "open")
    assert math.isnan(found.evidence["auroc"])
    assert found.evidence["note"] == evidence["note"]
    store.close_alert(first)
    assert [a.id for a in store.alerts("acme", open_only=True)] == [second]
    assert store.alerts("acme")[0].status == "closed"
    with pytest.raises(InputError, match="no alert"):
        store.close_alert(10**9)
    decision = DecisionRecord(None, "acme", 20.0, "promote", "1.1.0", "canary as good", {"n": 3})
    decision_id = store.add_decision(decision)
    assert store.decisions("acme") == [
        DecisionRecord(decision_id, "acme", 20.0, "promote", "1.1.0", "canary as good", {"n": 3})
    ]
    assert store.decisions("other") == []
    with pytest.raises(InputError, match="JSON"):
        store.add_decision(DecisionRecord(None, "acme", 1.0, "a", "1.0.0", "r", {"x": object()}))
    store.close()


# -- the fast validation path (not a database test) ------------------------------------------


def _variants(report: Report) -> list[bytes]:
    """A valid payload and many near misses, each of which Report.decode refuses or
    accepts for its own reasons: the fast path must never accept what decode refuses."""
    base = report.encode()
    raw = report.to_dict()
    out = [base, json.dumps(raw, indent=1).encode(), json.dumps(raw, sort_keys=True).encode()]

    def change(path: list[Any], value: Any) -> None:
        copy = json.loads(base)
        target = copy
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        out.append(json.dumps(copy).encode())

    for value in (-1, 1.0, 2**63, None, "1", [1], True, 0):
        change(["features", 0, "bins", 0], value)
        change(["features", 0, "missing"], value)
        change(["features", 1, "out_of_range"], value)
        change(["scores", "counts", 5], value)
        change(["scores", "by_label", 1, 5], value)
        change(["outcomes", "by_label", 0, 0], value)
        change(["latency", "counts", 3], value)
        change(["scored"], value)
        change(["sequence"], value)
        change(["window_start"], value)
        change(["window_end"], value)
    for value in ("", " x", "x ", "a\tb", "x" * 129, "é", 7, None):
        change(["features", 2, "name"], value)
        change(["model_name"], value)
    for value in ("dev 1", "-dev", "d" * 65, "ok-1", "ok.1", ""):
        change(["device_id"], value)
        change(["device_group"], value)
    change(["features", 3, "name"], raw["features"][4]["name"])
    change(["features", 0, "kind"], "categorical")
    change(["features", 0, "bins"], [])
    change(["features", 0, "bins"], [0] * 1001)
    change(["scores", "counts"], raw["scores"]["counts"][:-1])
    change(["scores", "by_label"], [raw["scores"]["counts"]])
    change(["latency", "counts"], [0] * 10)
    change(["cohort"], "beta")
    change(["model_version"], "1.0")
    change(["model_version"], "01.0.0")
    change(["window_end"], raw["window_start"] - 1)
    change(["window_end"], 1e300)
    change(["features"], raw["features"] * 2)
    out.append(base.replace(b'"missing":0', b'"missing":-0', 1))
    out.append(base.replace(b'"failed":0', b'"failed": -1', 1))
    out.append(base.replace(b'"failed":0', b'"failed":0.0', 1))
    out.append(base.replace(b'"failed":0', b'"failed":1e2', 1))
    return out


def test_fast_path_is_never_more_lenient_than_report_decode() -> None:
    report = make_report("pos-0042", 3, rows=40)
    accepted_fast = 0
    for payload in _variants(report):
        fast = _fast_decode(payload)
        try:
            decoded: Report | None = Report.decode(payload)
        except (InputError, OverflowError):
            decoded = None
        if fast is not None:
            accepted_fast += 1
            assert decoded is not None, payload[:300]
            assert Report.from_dict(fast) == decoded
    # The valid variants (compact, indented, sorted) do take the fast path.
    assert accepted_fast >= 3
    assert _fast_decode(report.encode()) is not None

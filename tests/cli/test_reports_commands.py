"""``edgefleet reports quarantine`` and ``edgefleet reports delete`` as a user runs them
(real subprocesses), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.central.monitor.store import MonitorStore
from edgefleet.edge.status import DeviceStatus
from edgefleet.edge.topics import Topics
from tests.cli.test_cli_flow import run
from tests.monitor.conftest import db_url, make_report, postgres_server  # noqa: F401

TOPICS = Topics("acme")


@pytest.fixture
def seeded_db(db_url: str) -> str:  # noqa: F811
    """Devices a and b, 3 reports each (windows ending at 1000, 2000, 3000); two refused
    reports on a's topic (one of the wrong bins), one on b's."""
    store = MonitorStore(db_url)
    reports = [make_report(d, s, window_end=1000.0 * (s + 1)) for d in "ab" for s in range(3)]
    wrong = reports[0].to_dict()
    wrong["sequence"] = 9
    wrong["features"][0]["bins"].append(0)
    store.ingest_many(
        [(TOPICS.report(r.device_id), r.encode()) for r in reports]
        + [(TOPICS.report("a"), b"junk"), (TOPICS.report("b"), b"junk")]
    )
    store.ingest_many(
        [(TOPICS.report("a"), json.dumps(wrong).encode())],
        known_version=lambda name, version: False,
    )
    store.put_statuses("acme", [DeviceStatus(device_id="a", state="online")])
    store.close()
    return db_url


def test_quarantine_lists_per_device_counts_and_messages(seeded_db: str, tmp_path: Path) -> None:
    out = run("reports", "quarantine", "--fleet", "acme", "--db", seeded_db, cwd=tmp_path).stdout
    assert "refused reports per device (fleet acme), ever:" in out
    assert "2  acme/a" in out
    assert "1  acme/b" in out
    assert "3 quarantined report(s) kept (fleet acme); the newest 3:" in out
    only_a = run(
        "reports", "quarantine", "--fleet", "acme", "--device", "a", "--db", seeded_db, cwd=tmp_path
    ).stdout
    assert "acme/b" not in only_a
    assert "2 quarantined report(s) kept (fleet acme, device a); the newest 2" in only_a
    assert "not a known version" in only_a
    # The older name still works.
    alias = run("quarantine", "--fleet", "acme", "--device", "a", "--db", seeded_db, cwd=tmp_path)
    assert alias.stdout == only_a


def test_delete_asks_first_and_removes_in_one_go(seeded_db: str, tmp_path: Path) -> None:
    base = ("reports", "delete", "--fleet", "acme", "--device", "a", "--db", seeded_db)
    # Said no (or nothing at all): nothing deleted.
    for answer in ("n\n", ""):
        refused = run(*base, cwd=tmp_path, ok=False, stdin=answer)
        assert refused.returncode == 1
        assert "3 report(s) and its status row" in refused.stdout
        assert "delete 4 row(s)? [y/N]" in refused.stdout
        assert "nothing deleted" in refused.stdout
    # A time range, confirmed: window ends in [2000, 3000).
    ranged = run(
        *base, "--since", "2000", "--until", "1970-01-01T00:50:00Z", cwd=tmp_path, stdin="y\n"
    )
    assert "1 report(s) in" in ranged.stdout
    assert "deleted 1 report(s) of device a" in ranged.stdout
    everything = run(*base, "--yes", cwd=tmp_path)
    assert "deleted 2 report(s) and its status row of device a" in everything.stdout
    assert "nothing to delete" in run(*base, "--yes", cwd=tmp_path).stdout
    store = MonitorStore(seeded_db)
    assert store.report_count("acme", device_id="a") == 0
    assert store.report_count("acme", device_id="b") == 3
    assert store.statuses("acme") == {}
    store.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--since", "yesterday"), "is not a time: give ISO 8601"),
        (("--since", "3000", "--until", "2000"), "--since must be before --until"),
        (("--until", "-5"), "is not a time after 1970"),
        (("--until", "nan"), "is not a time after 1970"),
    ],
)
def test_delete_explains_bad_input(
    seeded_db: str, tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    result = run(
        "reports", "delete", "--fleet", "acme", "--device", "a", "--db", seeded_db, *extra,
        cwd=tmp_path, ok=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    bad_device = run(
        "reports", "delete", "--fleet", "acme", "--device", "../x", "--db", seeded_db, "--yes",
        cwd=tmp_path, ok=False,
    )  # fmt: skip
    assert "--device must be" in bad_device.stderr


def test_compact_applies_the_retention_and_keeps_the_measures(
    seeded_db: str, tmp_path: Path
) -> None:
    store = MonitorStore(seeded_db)
    before = store.aggregate("acme", model_version="1.0.0")
    store.close()
    assert before is not None
    # The seeded windows ended in 1970: raw reports and minute rollups expire, hours stay.
    out = run("reports", "compact", "--db", seeded_db, "--hour-days", "100000", cwd=tmp_path).stdout
    assert "raw reports 7 days, minute rollups 30 days, hour rollups 100000 days" in out
    assert "6 raw report(s)" in out
    store = MonitorStore(seeded_db)
    after = store.aggregate("acme", model_version="1.0.0")
    assert store.report_count("acme", device_id="a") == 0  # the raw reports are gone
    store.close()
    assert after is not None
    assert after.to_dict() == before.to_dict()
    bad = run("reports", "compact", "--db", seeded_db, "--raw-days", "-1", cwd=tmp_path, ok=False)
    assert bad.returncode == 2
    assert "a positive number of days, not '-1'" in bad.stderr
    helped = run("reports", "compact", "--help", cwd=tmp_path).stdout
    assert "raw reports      7 days" in helped

"""Bad rows in the reports table (written by SQL, as an older edgefleet, a restored backup or
a hand would) never take a fleet's pages down: every page and API route answers 200, the
rows are skipped and named, and the rest is shown exactly as without them.

Before: one stored report of a known version whose histograms had the wrong number of bins
made the overview, drift and device pages and the JSON API answer 400 for that fleet, for
good."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from edgefleet.central.monitor.store import MonitorStore
from edgefleet.web.app import create_app
from tests.fleet.conftest import broker  # noqa: F401
from tests.monitor.conftest import insert_stored_row
from tests.web.test_dashboard_api import Seeded, get, seeded  # noqa: F401

PAGES = (
    "/fleets/{f}/",
    "/fleets/{f}/models",
    "/fleets/{f}/drift",
    "/fleets/{f}/drift?version=1.1.0",
    "/fleets/{f}/devices",
    "/fleets/{f}/devices/pos-0",
    "/fleets/{f}/devices/pos-1",
    "/fleets/{f}/devices/pos-3",
    "/fleets/{f}/rollouts",
    "/",
)
API = (
    "/api/fleets",
    "/api/fleets/{f}/overview",
    "/api/fleets/{f}/devices",
    "/api/fleets/{f}/devices/pos-0",
    "/api/fleets/{f}/devices/pos-1",
    "/api/fleets/{f}/devices/pos-3",
    "/api/fleets/{f}/drift",
    "/api/fleets/{f}/drift?model_version=1.1.0",
    "/api/fleets/{f}/drift?buckets=4",
    "/api/fleets/{f}/alerts",
    "/api/fleets/{f}/decisions",
    "/api/fleets/{f}/models",
    "/api/fleets/{f}/rollout",
)


def _stored_body(store: MonitorStore, fleet: str, device: str) -> dict[str, Any]:
    """A real stored report of the device, to forge from."""
    with store.engine.connect() as connection:
        body = connection.exec_driver_sql(
            "SELECT body FROM monitor_reports WHERE fleet = ? AND device_id = ? LIMIT 1",
            (fleet, device),
        ).scalar_one()
    raw: dict[str, Any] = json.loads(body)
    return raw


def _poison(seeded: Seeded, tmp_path: Path) -> tuple[str, list[int]]:  # noqa: F811
    """A copy of the seeded database with four bad rows; (its URL, their sequences)."""
    source = Path(seeded.db.removeprefix("sqlite:///"))
    copy = tmp_path / "monitor.db"
    shutil.copy(source, copy)
    db = f"sqlite:///{copy}"
    store = MonitorStore(db)
    fleet = seeded.fleet
    good = _stored_body(store, fleet, "pos-0")
    # 1. The attack: a well-formed report of 1.0.0 with one bin too many on a feature.
    wrong_bins = json.loads(json.dumps(good))
    wrong_bins.update(sequence=91)
    wrong_bins["features"][0]["bins"].append(0)
    insert_stored_row(store, json.dumps(wrong_bins))
    # 2. Not JSON at all, on another device.
    insert_stored_row(store, "{half a report", fleet=fleet, device_id="pos-1", sequence=92)
    # 3. A row whose columns say 1.0.0 and pos-0 but whose report is another device's.
    altered = json.loads(json.dumps(good))
    altered.update(sequence=93, device_id="pos-2")
    insert_stored_row(store, json.dumps(altered), device_id="pos-0")
    # 4. Negative counts that still add up.
    negative = json.loads(json.dumps(good))
    negative.update(sequence=94)
    bins = negative["features"][1]["bins"]
    bins[0], bins[-1] = bins[0] - 1000, bins[-1] + 1000
    insert_stored_row(store, json.dumps(negative))
    store.close()
    return db, [91, 92, 93, 94]


@pytest.fixture
def poisoned(seeded: Seeded, tmp_path: Path) -> tuple[FlaskClient, list[int]]:  # noqa: F811
    db, sequences = _poison(seeded, tmp_path)
    return create_app(seeded.config(db=db)).test_client(), sequences


def test_every_page_and_route_answers_despite_bad_rows(
    poisoned: tuple[FlaskClient, list[int]],
    seeded: Seeded,  # noqa: F811
) -> None:
    client, _ = poisoned
    for path in PAGES:
        response = client.get(path.format(f=seeded.fleet), follow_redirects=True)
        assert response.status_code == 200, (path, response.get_data(as_text=True)[:300])
    for path in API:
        get(client, path.format(f=seeded.fleet))


def test_the_bad_rows_are_named_and_the_rest_shown(
    poisoned: tuple[FlaskClient, list[int]],
    seeded: Seeded,  # noqa: F811
) -> None:
    client, sequences = poisoned
    fleet = seeded.fleet
    clean = create_app(seeded.config()).test_client()
    # The drift of 1.0.0: the same numbers as without the bad rows, and all four named.
    drift = get(client, f"/api/fleets/{fleet}/drift?buckets=4")
    before = get(clean, f"/api/fleets/{fleet}/drift?buckets=4")
    assert drift["reports"] == before["reports"] == 12
    assert drift["measures"] == before["measures"]
    assert before["skipped"] == {"total": 0, "reports": []}
    skipped = drift["skipped"]
    assert skipped["total"] == 4
    reasons = {s["sequence"]: s["reason"] for s in skipped["reports"]}
    assert sorted(reasons) == sequences
    assert re.search(r"feature '\w+' has \d+ bins; the version has \d+", reasons[91])
    assert "JSON" in reasons[92]
    assert "device_id is 'pos-0' but its report says 'pos-2'" in reasons[93]
    assert "between 0 and" in reasons[94]
    # The overview's timeline and one device's page name theirs.
    overview = get(client, f"/api/fleets/{fleet}/overview")
    assert overview["timeline"]["skipped"]["total"] == 4
    assert (
        overview["timeline"]["versions"]
        == get(clean, f"/api/fleets/{fleet}/overview")["timeline"]["versions"]
    )
    device = get(client, f"/api/fleets/{fleet}/devices/pos-0")
    assert {s["sequence"] for s in device["skipped"]["reports"]} == {91, 93, 94}
    assert device["measures"] == get(clean, f"/api/fleets/{fleet}/devices/pos-0")["measures"]
    # The pages say so too.
    html = client.get(f"/fleets/{fleet}/drift").get_data(as_text=True)
    assert 'id="skipped-reports"' in html
    assert re.search(r"report \d+ of device <code>pos-1</code>, sequence 92", html)
    assert 'id="skipped-reports"' not in clean.get(f"/fleets/{fleet}/drift").get_data(as_text=True)

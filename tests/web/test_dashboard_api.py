"""The dashboard's JSON API, its downloads and its safety measures, through Flask's test
client (a fresh app per test, as in the Flask tutorial) over a home and a monitor database
seeded with real reports: the sketches of generated customers scored by the trained
model, as devices would send them, ingested by the monitor's own validation."""

from __future__ import annotations

import hashlib
import io
import json
import re
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from argparse import Namespace
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import encode_features
from edgefleet.central.export import export_bundle
from edgefleet.central.keys import generate_keys
from edgefleet.central.monitor.store import AlertRecord, DecisionRecord, MonitorStore
from edgefleet.central.publish import publish, rollout_status, state_file_for
from edgefleet.central.registry import Registry
from edgefleet.central.trainer import TrainedModel
from edgefleet.cli.cmd_serve import finish_demo
from edgefleet.edge.bundle import open_bundle
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.mqtt import MqttClient
from edgefleet.edge.report import Report
from edgefleet.edge.signing import load_private_key, load_public_key
from edgefleet.edge.sketch_builder import SketchBuilder
from edgefleet.edge.topics import Topics
from edgefleet.errors import InputError
from edgefleet.web.app import create_app
from edgefleet.web.config import WebConfig
from tests.fleet.conftest import broker  # noqa: F401

TOKEN = "test-write-token-0123456789"
WEB_DIR = Path(__file__).resolve().parents[2] / "edgefleet" / "web"
HOSTILE = "<script>window.__pwned=1</script>\"&'"


@dataclass
class Seeded:
    home: Path
    db: str
    fleet: str
    broker: MosquittoBroker
    now: float
    scored: int
    devices: dict[str, str]  # device id -> cohort
    manifests: dict[str, Manifest]

    def config(self, **overrides: Any) -> dict[str, Any]:
        return {
            "home": self.home,
            "db": self.db,
            "broker": self.broker.address,
            "write_token": TOKEN,
            "secret_key": "test-secret",
            **overrides,
        }


def device_report(
    manifest: Manifest,
    pipeline: Any,
    fleet: str,
    device: str,
    *,
    cohort: str,
    sequence: int,
    window_end: float,
    rows: int,
    scenario: str = "none",
) -> tuple[str, bytes, int]:
    """One real report: ``rows`` generated customers encoded, scored by the model and
    sketched as an agent does; half of them labelled."""
    frame = generate(rows, seed=sequence * 31 + int(device[-1]), scenario=scenario).frame
    inputs = encode_features(frame[list(manifest.schema.names)], manifest.schema)
    scores = pipeline.predict_proba(inputs)[:, 1]
    times = iter((window_end - 30.0, window_end))
    builder = SketchBuilder.from_manifest(manifest, clock=lambda: next(times))
    builder.add(inputs, scores, np.full(rows, 0.002))
    labels = (frame["churn"] == "Yes").to_numpy().astype(int)
    builder.add_outcomes(scores[: rows // 2], labels[: rows // 2])
    report = Report.from_body(
        builder.roll(),
        fleet=fleet,
        device_id=device,
        sequence=sequence,
        cohort=cohort,  # type: ignore[arg-type]
        device_group="north" if device.endswith(("0", "2")) else "south",
    )
    return Topics(fleet).report(device), report.encode(), rows


@pytest.fixture(scope="module")
def seeded(
    tmp_path_factory: pytest.TempPathFactory,
    trained: Callable[[str], TrainedModel],
    broker: MosquittoBroker,  # noqa: F811
) -> Seeded:
    """churn 1.0.0 stable and 1.1.0 canary (30 %) on a fleet; 5 devices x 4 reports."""
    root = tmp_path_factory.mktemp("dashboard-api")
    home = root / "home"
    private, _, _ = generate_keys(home / "keys")
    key = load_private_key(private)
    registry = Registry(home)
    fleet = f"api{time.time_ns() % 10**9}"
    manifests, pipelines = {}, {}
    for family in ("logreg", "dt"):
        version = registry.register(trained(family), data_sha256="0" * 64)
        bundle = export_bundle(
            version, ["onnx", "web"], home / "bundles" / f"churn-{version.version}", key
        ).bundle
        manifests[version.version] = Manifest.from_bytes((bundle / "manifest.json").read_bytes())
        pipelines[version.version] = version.load_pipeline()
        publish(
            bundle,
            fleet,
            broker.address,
            key,
            canary_percent=None if version.version == "1.0.0" else 30,
            state_file=state_file_for(home, fleet),
        )
    db = f"sqlite:///{root / 'monitor.db'}"
    store = MonitorStore(db)
    devices = {
        "pos-0": "stable",
        "pos-1": "stable",
        "pos-2": "stable",
        "pos-3": "canary",
        "pos-4": "canary",
    }
    now = time.time()
    items, scored = [], 0
    for sequence in range(1, 5):
        for device, cohort in devices.items():
            running = "1.1.0" if cohort == "canary" else "1.0.0"
            topic, payload, rows = device_report(
                manifests[running],
                pipelines[running],
                fleet,
                device,
                cohort=cohort,
                sequence=sequence,
                window_end=now - 400 + 100 * sequence,
                rows=150,
                # The later reports of two stable devices drift.
                scenario="price_increase"
                if sequence > 2 and device in ("pos-0", "pos-1")
                else "none",
            )
            items.append((topic, payload))
            scored += rows
    items.append((f"edgefleet/{fleet}/devices/bad.device/report", HOSTILE.encode()))
    counts = store.ingest_many(items)
    assert (counts.stored, counts.quarantined) == (20, 1)
    store.add_alert(
        AlertRecord(
            id=None,
            fleet=fleet,
            created=now - 50,
            rule="feature_drift",
            scope="device:pos-0",
            subject=HOSTILE,
            value=0.31,
            threshold=0.1,
            evidence={"model_version": "1.0.0", HOSTILE: HOSTILE},
        )
    )
    closed = store.add_alert(
        AlertRecord(
            id=None,
            fleet=fleet,
            created=now - 40,
            rule="error_rate",
            scope="fleet",
            subject="errors",
            value=0.05,
            threshold=0.02,
            evidence={"model_version": "1.0.0"},
        )
    )
    store.close_alert(closed)
    store.add_decision(
        DecisionRecord(
            id=None,
            fleet=fleet,
            created=now - 30,
            action="canary",
            model_version="1.1.0",
            reason=f"canary by hand {HOSTILE}",
            evidence={"percent": 30, "nested": {"list": [1, 2.5, None], HOSTILE: [HOSTILE]}},
        )
    )
    store.close()
    return Seeded(home, db, fleet, broker, now, scored, devices, manifests)


@pytest.fixture
def app(seeded: Seeded) -> Flask:
    return create_app(seeded.config())


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def strict_json(text: str) -> Any:
    """JSON as the standard has it: NaN or Infinity would fail here (Python's json.dumps
    writes them by default)."""

    def refuse(name: str) -> None:
        raise AssertionError(f"the API sent {name}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


def get(client: FlaskClient, url: str, status: int = 200) -> Any:
    response = client.get(url)
    assert response.status_code == status, (url, response.get_data(as_text=True)[:500])
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    return strict_json(response.get_data(as_text=True))


# ---------------------------------------------------------------------------------- reading


def test_fleets_and_overview(client: FlaskClient, seeded: Seeded) -> None:
    assert get(client, "/api/fleets") == {"fleets": [seeded.fleet]}
    overview = get(client, f"/api/fleets/{seeded.fleet}/overview")
    assert overview["devices"] == {
        "total": 5,
        "online": 5,
        "offline": 0,
        "online_seconds": 120.0,
    }
    assert overview["reports"] == 20
    assert overview["scored"] == seeded.scored
    assert overview["failed"] == 0
    assert overview["quarantined"] == 1
    assert overview["alerts"]["open"] == 1
    assert overview["alerts"]["newest"][0]["subject"] == HOSTILE
    state = overview["rollout"]["state"]
    assert (state["stable"]["version"], state["canary"]["version"]) == ("1.0.0", "1.1.0")
    assert state["canary_percent"] == 30
    assert [
        (v["model_version"], v["role"], v["devices"], v["reports"]) for v in overview["versions"]
    ] == [
        ("1.0.0", "stable", 3, 12),
        ("1.1.0", "canary", 2, 8),
    ]
    assert overview["decisions"][0]["action"] == "canary"
    timeline = overview["timeline"]
    assert [v["model_version"] for v in timeline["versions"]] == ["1.0.0", "1.1.0"]
    assert len(timeline["buckets"]) == 4  # 4 reports per device
    for version in timeline["versions"]:
        assert len(version["max_feature_js"]) == len(version["score_js"]) == 4
        assert all(value is not None for value in version["max_feature_js"])


def test_an_unknown_fleet_is_404_everywhere(client: FlaskClient) -> None:
    for tail in ("overview", "devices", "drift", "alerts", "decisions", "models", "rollout"):
        body = get(client, f"/api/fleets/nope/{tail}", 404)
        assert "no fleet 'nope'" in body["error"]
    assert client.get("/fleets/nope/").status_code == 404
    assert get(client, "/api/no/such/thing", 404)["status"] == 404


def test_devices_online_and_offline(seeded: Seeded) -> None:
    client = create_app(seeded.config()).test_client()
    devices = get(client, f"/api/fleets/{seeded.fleet}/devices")
    assert [d["device_id"] for d in devices["devices"]] == sorted(seeded.devices)
    assert all(d["online"] for d in devices["devices"])
    first = devices["devices"][0]
    assert (first["reports"], first["scored"], first["last_sequence"]) == (4, 600, 4)
    assert first["model_version"] == "1.0.0"
    assert devices["quarantined"] == 1
    refused = devices["refused"][0]
    assert refused["device_id"] == "bad.device"
    assert refused["excerpt"] == HOSTILE
    assert refused["bytes"] == len(HOSTILE.encode())
    # A device whose last report is older than online_seconds is offline.
    strict = create_app(seeded.config(online_seconds=0.001)).test_client()
    time.sleep(0.01)
    overview = get(strict, f"/api/fleets/{seeded.fleet}/overview")
    assert (overview["devices"]["online"], overview["devices"]["offline"]) == (0, 5)


def test_one_device(client: FlaskClient, seeded: Seeded) -> None:
    document = get(client, f"/api/fleets/{seeded.fleet}/devices/pos-3")
    assert document["device"]["cohort"] == "canary"
    assert document["device"]["model_version"] == "1.1.0"
    assert document["measures"]["scored"] == 600
    assert len(document["features"]) == seeded.manifests["1.1.0"].schema.n_features
    score = document["score"]
    assert len(score["labels"]) == len(score["reference"]) == len(score["current"]) == 20
    assert sum(score["current"]) == 600
    assert get(client, f"/api/fleets/{seeded.fleet}/devices/pos-0")["alerts"][0]["subject"] == (
        HOSTILE
    )
    assert (
        "never reported" in get(client, f"/api/fleets/{seeded.fleet}/devices/pos-9", 404)["error"]
    )
    get(client, f"/api/fleets/{seeded.fleet}/devices/%3Cscript%3E", 404)


def test_drift_per_feature_over_time(client: FlaskClient, seeded: Seeded) -> None:
    drift = get(client, f"/api/fleets/{seeded.fleet}/drift?buckets=4")
    assert (drift["model_name"], drift["model_version"]) == ("churn", "1.0.0")  # stable
    assert [v["model_version"] for v in drift["versions"]] == ["1.0.0", "1.1.0"]
    assert drift["reports"] == 12
    assert drift["scored"] == 12 * 150
    assert [b["reports"] for b in drift["buckets"]] == [3, 3, 3, 3]
    manifest = seeded.manifests["1.0.0"]
    assert [f["name"] for f in drift["features"]] == list(manifest.schema.names)
    for feature in drift["features"]:
        histogram = feature["histogram"]
        assert len(histogram["labels"]) == len(histogram["reference"]) == len(histogram["current"])
        assert sum(histogram["current"]) == drift["scored"]
        assert len(feature["timeline"]["js"]) == len(feature["timeline"]["psi"]) == 4
        assert feature["verdict"] in ("drift", "no_drift", "insufficient_data")
    contract = next(f for f in drift["features"] if f["name"] == "contract")
    assert contract["histogram"]["labels"][:3] == list(
        manifest.schema.feature("contract").vocabulary  # type: ignore[union-attr]
    )
    # The price increase shows in monthly charges, and in the newest slices only.
    charges = next(f for f in drift["features"] if f["name"] == "monthly_charges")
    assert charges["js"] == max(f["js"] for f in drift["features"])
    timeline = charges["timeline"]["js"]
    assert timeline[-1] > timeline[0]
    assert drift["score"]["timeline"]["js"][0] is not None

    # Never more slices than reports per device: a slice would fall between two reports.
    assert len(get(client, f"/api/fleets/{seeded.fleet}/drift?buckets=40")["buckets"]) == 4
    canary = get(client, f"/api/fleets/{seeded.fleet}/drift?model_version=1.1.0&buckets=2")
    assert (canary["model_version"], canary["reports"]) == ("1.1.0", 8)
    window = get(client, f"/api/fleets/{seeded.fleet}/drift?since={seeded.now - 50:.0f}")
    assert window["reports"] == 3  # the newest report of each stable device
    assert "since" in get(client, f"/api/fleets/{seeded.fleet}/drift?since=5&until=4", 400)["error"]
    assert "buckets" in get(client, f"/api/fleets/{seeded.fleet}/drift?buckets=0", 400)["error"]
    assert "buckets" in get(client, f"/api/fleets/{seeded.fleet}/drift?buckets=x", 400)["error"]
    assert "since" in get(client, f"/api/fleets/{seeded.fleet}/drift?since=nan", 400)["error"]
    get(client, f"/api/fleets/{seeded.fleet}/drift?model_version=9.9.9", 404)
    empty = get(client, f"/api/fleets/{seeded.fleet}/drift?since={time.time() + 10:.0f}")
    assert "no reports" in empty["error"]


def test_alerts_and_decisions(client: FlaskClient, seeded: Seeded) -> None:
    every = get(client, f"/api/fleets/{seeded.fleet}/alerts")["alerts"]
    assert [a["rule"] for a in every] == ["error_rate", "feature_drift"]  # newest first
    assert [a["status"] for a in every] == ["closed", "open"]
    assert all(a["description"] for a in every)
    assert [
        a["rule"] for a in get(client, f"/api/fleets/{seeded.fleet}/alerts?status=open")["alerts"]
    ] == ["feature_drift"]
    assert len(get(client, f"/api/fleets/{seeded.fleet}/alerts?status=closed")["alerts"]) == 1
    assert "status" in get(client, f"/api/fleets/{seeded.fleet}/alerts?status=x", 400)["error"]
    decisions = get(client, f"/api/fleets/{seeded.fleet}/decisions")["decisions"]
    assert decisions[0]["evidence"]["nested"] == {"list": [1, 2.5, None], HOSTILE: [HOSTILE]}


def test_models_and_bundle_downloads(client: FlaskClient, seeded: Seeded) -> None:
    models = get(client, f"/api/fleets/{seeded.fleet}/models")["models"]
    assert [(m["version"], m["role"], m["family"]) for m in models] == [
        ("1.1.0", "canary", "dt"),
        ("1.0.0", "stable", "logreg"),
    ]
    for model in models:
        bundle = model["bundle"]
        assert bundle["verified"] is True
        assert bundle["error"] is None
        assert [a["format"] for a in bundle["formats"]] == ["onnx", "web"]
        assert all(a["parity"] <= bundle["tolerance"] for a in bundle["formats"])
        assert 0.5 < model["metrics"]["auroc"] <= 1
    stable = models[1]
    # The archive is a bundle `edgefleet verify` accepts: signature and every artifact.
    response = client.get(stable["bundle"]["download"])
    assert response.status_code == 200
    assert response.mimetype == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(response.data)) as archive:
        names = archive.getnames()
        assert "churn-1.0.0/manifest.json" in names
        assert "churn-1.0.0/web/ort/ort-wasm-simd-threaded.wasm" in names
    archive_path = seeded.home.parent / "download.tar"
    archive_path.write_bytes(response.data)
    verified = open_bundle(archive_path, [load_public_key(seeded.home / "keys" / "edgefleet.pub")])
    assert verified.manifest.version == "1.0.0"
    artifact = stable["bundle"]["formats"][0]
    response = client.get(artifact["download"])
    assert response.status_code == 200
    assert hashlib.sha256(response.data).hexdigest() == artifact["sha256"]
    assert "attachment" in response.headers["Content-Disposition"]
    # Only the manifest, its signature and the listed artifacts; nothing else of the home.
    for path in ("web/index.html", "../../registry.db", "web/ort/ort.wasm.min.js", "x"):
        assert client.get(f"/models/churn/1.0.0/files/{path}").status_code == 404
    assert client.get("/models/churn/9.9.9/bundle.tar").status_code == 404
    assert client.get("/models/churn/1.0.0/files/manifest.sig").status_code == 200


def test_rollout_document(client: FlaskClient, seeded: Seeded) -> None:
    rollout = get(client, f"/api/fleets/{seeded.fleet}/rollout")
    assert rollout["error"] is None
    assert rollout["state"]["sequence"] == 2
    assert [p["version"] for p in rollout["published"]] == ["1.0.0", "1.1.0"]
    assert rollout["actions"] == {
        "promote": True,
        "rollback_canary": True,
        "rollback_to": [],
        "writable": True,
    }
    read_only = create_app(seeded.config(write_token=None)).test_client()
    assert get(read_only, f"/api/fleets/{seeded.fleet}/rollout")["actions"]["writable"] is False


def test_a_tampered_state_file_is_not_shown(seeded: Seeded, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "fleets").mkdir(parents=True)
    (home / "keys").mkdir()
    for name in ("edgefleet.pub", "edgefleet.key"):
        (home / "keys" / name).write_bytes((seeded.home / "keys" / name).read_bytes())
    # The signed state inside the envelope inside the state file: 30 % becomes 99 %.
    document = json.loads(state_file_for(seeded.home, seeded.fleet).read_text())
    envelope = json.loads(document["rollout"])
    state = json.loads(envelope["state"])
    state["canary_percent"] = 99
    envelope["state"] = json.dumps(state, sort_keys=True, separators=(",", ":"))
    document["rollout"] = json.dumps(envelope)
    state_file_for(home, seeded.fleet).write_text(json.dumps(document))
    client = create_app(seeded.config(home=home)).test_client()
    rollout = get(client, f"/api/fleets/{seeded.fleet}/rollout")
    assert rollout["state"] is None
    assert "cannot be used" in rollout["error"]
    assert "signature" in rollout["error"]


def test_demo_bundle_and_its_files(client: FlaskClient, seeded: Seeded) -> None:
    demo = get(client, f"/api/fleets/{seeded.fleet}/demo")
    manifest = (seeded.home / "bundles" / "churn-1.0.0" / "manifest.json").read_bytes()
    assert demo["version"] == "1.0.0"  # the stable one, not the canary
    assert demo["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert len(bytes.fromhex(demo["public_key"])) == 32
    page = client.get(demo["page"])
    assert page.status_code == 200
    assert f'data-manifest-sha256="{demo["manifest_sha256"]}"' in page.get_data(as_text=True)
    base = "/demo/bundle/churn-1.0.0/"
    for path, mimetype in (
        ("manifest.json", "application/json"),
        ("manifest.sig", "application/json"),
        ("web/edgefleet.js", "text/javascript"),
        ("web/ort/ort.wasm.min.js", "text/javascript"),
        ("web/ort/ort-wasm-simd-threaded.mjs", "text/javascript"),
        ("web/ort/ort-wasm-simd-threaded.wasm", "application/wasm"),
        ("web/model.onnx", "application/octet-stream"),
    ):
        response = client.get(base + path)
        assert response.status_code == 200, path
        assert response.mimetype == mimetype
        assert response.headers["Cache-Control"] == "no-cache"
    for path in ("web/index.html", "model.onnx", "web/../manifest.json", "web/%2e%2e/x.js"):
        assert client.get(base + path).status_code == 404, path
    assert client.get("/demo/bundle/..%2Fkeys/edgefleet.key").status_code == 404
    assert client.get("/demo/bundle/.hidden/manifest.json").status_code == 404


def test_the_demo_refuses_a_bundle_that_does_not_verify(seeded: Seeded, tmp_path: Path) -> None:
    home = tmp_path / "home"
    for part in ("keys", "fleets", "bundles/churn-1.0.0/web"):
        (home / part).mkdir(parents=True)
    for name in ("keys/edgefleet.pub", f"fleets/{seeded.fleet}.json"):
        (home / name).write_bytes((seeded.home / name).read_bytes())
    source = seeded.home / "bundles" / "churn-1.0.0"
    for name in ("manifest.json", "manifest.sig", "web/model.onnx"):
        (home / "bundles" / "churn-1.0.0" / name).write_bytes((source / name).read_bytes())
    model = home / "bundles" / "churn-1.0.0" / "web" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    client = create_app(seeded.config(home=home)).test_client()
    assert "does not verify" in get(client, f"/api/fleets/{seeded.fleet}/demo", 409)["error"]
    page = client.get(f"/demo?fleet={seeded.fleet}")
    assert page.status_code == 409
    assert "does not verify" in page.get_data(as_text=True)
    assert "demo.js" not in page.get_data(as_text=True)  # no script to load anything


# ----------------------------------------------------------------------------------- pages


@pytest.mark.parametrize(
    "path",
    [
        "/fleets/{f}/",
        "/fleets/{f}/models",
        "/fleets/{f}/drift",
        "/fleets/{f}/devices",
        "/fleets/{f}/devices/pos-0",
        "/fleets/{f}/rollouts",
        "/demo?fleet={f}",
        "/",
    ],
)
def test_pages_render_and_escape(client: FlaskClient, seeded: Seeded, path: str) -> None:
    response = client.get(path.format(f=seeded.fleet), follow_redirects=True)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<script>window.__pwned" not in html
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []  # no inline script
    assert ' style="' not in html  # the CSP allows no inline style
    if path.startswith(("/fleets/{f}/rollouts", "/fleets/{f}/devices")):
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    headers = response.headers
    assert "script-src 'self' 'wasm-unsafe-eval'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"


def test_an_untrusted_host_is_refused(client: FlaskClient, seeded: Seeded) -> None:
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 reaches the dashboard
    # with the Host header evil.example.
    response = client.get(f"/api/fleets/{seeded.fleet}/overview", headers={"Host": "evil.example"})
    assert response.status_code == 400
    assert client.get("/api/fleets", headers={"Host": "127.0.0.1:8050"}).status_code == 200


# ---------------------------------------------------------------------------------- writes


def post_api(client: FlaskClient, url: str, body: Any = None, **headers: str) -> Any:
    response = client.post(url, json=body, headers=headers)
    return response.status_code, strict_json(response.get_data(as_text=True))


def test_api_writes_are_refused_without_the_token(client: FlaskClient, seeded: Seeded) -> None:
    url = f"/api/fleets/{seeded.fleet}/rollout/promote"
    assert client.get(url).status_code == 405
    status, body = post_api(client, url)
    assert (status, body["error"]) == (403, "wrong or missing write token")
    assert post_api(client, url, **{"X-Edgefleet-Token": TOKEN[:-1] + "x"})[0] == 403
    assert post_api(client, url, **{"Authorization": "Basic " + TOKEN})[0] == 403
    # From another site's page, even with the token: refused before anything happens.
    status, body = post_api(
        client, url, **{"X-Edgefleet-Token": TOKEN, "Origin": "http://evil.example"}
    )
    assert status == 403
    assert "cross-site" in body["error"]
    status, body = post_api(client, url, **{"X-Edgefleet-Token": TOKEN, "Origin": "null"})
    assert status == 403
    # The token, then the state: a stale sequence is refused before the broker is asked.
    status, body = post_api(client, url, {"expect_sequence": 1}, **{"X-Edgefleet-Token": TOKEN})
    assert status == 409
    assert "changed since" in body["error"]
    status, body = post_api(client, url, {"nope": 1}, **{"X-Edgefleet-Token": TOKEN})
    assert (status, body["error"]) == (400, "unknown field(s) nope")
    response = client.post(
        url, data="[1]", content_type="application/json", headers={"X-Edgefleet-Token": TOKEN}
    )
    assert response.status_code == 400
    read_only = create_app(seeded.config(write_token=None)).test_client()
    status, body = post_api(read_only, url, **{"X-Edgefleet-Token": TOKEN})
    assert status == 403
    assert "read-only" in body["error"]
    state = rollout_status(
        seeded.fleet,
        seeded.broker.address,
        [load_public_key(seeded.home / "keys" / "edgefleet.pub")],
    )
    assert state is not None
    assert (state.sequence, state.canary is not None) == (2, True)


def _csrf(client: FlaskClient, fleet: str) -> str:
    html = client.get(f"/fleets/{fleet}/rollouts").get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the rollout page has no CSRF field"
    return found.group(1)


def test_form_writes_need_csrf_origin_and_token(client: FlaskClient, seeded: Seeded) -> None:
    url = f"/fleets/{seeded.fleet}/rollouts/promote"
    own = {"Origin": "http://localhost"}
    csrf = _csrf(client, seeded.fleet)
    cases = [
        ({"token": TOKEN, "expect_sequence": "2"}, own, "CSRF token"),
        ({"csrf_token": "forged", "token": TOKEN}, own, "CSRF token"),
        ({"csrf_token": csrf, "token": TOKEN}, {}, "does not say which page"),
        ({"csrf_token": csrf, "token": TOKEN}, {"Origin": "http://evil.example"}, "cross-site"),
        (
            {"csrf_token": csrf, "token": TOKEN},
            {"Referer": "http://evil.example/fleets/x/rollouts"},
            "cross-site",
        ),
        ({"csrf_token": csrf, "token": "wrong-token-but-long-enough"}, own, "wrong or missing"),
        ({"csrf_token": csrf}, own, "wrong or missing"),
        ({"csrf_token": csrf, "token": TOKEN, "expect_sequence": "1"}, own, "changed since"),
        ({"csrf_token": csrf, "token": TOKEN, "expect_sequence": "x"}, own, "whole number"),
    ]
    for form, headers, message in cases:
        response = client.post(url, data=form, headers=headers)
        assert response.status_code in (400, 403, 409), (form, headers)
        assert message in response.get_data(as_text=True), (form, headers)
    # Another session's CSRF token is not this session's.
    other = create_app(seeded.config()).test_client()
    response = other.post(url, data={"csrf_token": csrf, "token": TOKEN}, headers=own)
    assert response.status_code == 403
    assert get(client, f"/api/fleets/{seeded.fleet}/rollout")["state"]["sequence"] == 2


def _retain_on_rollout(seeded: Seeded, payload: bytes) -> None:
    """What anyone with write access to the broker can do (issue #15: it froze the fleet)."""
    with MqttClient(seeded.broker.address, f"evil-{seeded.fleet}", clean_start=True) as client:
        client.publish(Topics(seeded.fleet).rollout, payload, retain=True).wait()


def test_promote_and_roll_back_through_the_api(client: FlaskClient, seeded: Seeded) -> None:
    """Last of the writes: it changes the seeded fleet's rollout for real, each time over
    garbage retained on the rollout topic, which it replaces with a warning."""
    trusted = [load_public_key(seeded.home / "keys" / "edgefleet.pub")]
    headers = {"X-Edgefleet-Token": TOKEN}
    _retain_on_rollout(seeded, b"\xff garbage")
    status, body = post_api(
        client,
        f"/api/fleets/{seeded.fleet}/rollout/promote",
        {"expect_sequence": 2},
        **headers,
    )
    assert status == 200, body
    assert body["rollout"]["state"]["stable"]["version"] == "1.1.0"
    assert body["rollout"]["state"]["canary"] is None
    assert body["rollout"]["state"]["expired"] is False
    assert body["rollout"]["state"]["expires"] > body["rollout"]["state"]["issued"]
    assert len(body["warnings"]) == 1, body["warnings"]
    assert "holds 9 bytes that are not a rollout state of ours" in body["warnings"][0]
    assert body["decision"]["evidence"]["warnings"] == body["warnings"]
    decision = body["decision"]
    assert (decision["action"], decision["model_version"]) == ("promoted", "1.1.0")
    assert decision["evidence"]["by"] == "dashboard"
    assert decision["evidence"]["before"] == {
        "sequence": 2,
        "stable": "1.0.0",
        "canary": "1.1.0",
        "canary_percent": 30,
    }
    state = rollout_status(seeded.fleet, seeded.broker.address, trusted)
    assert state is not None
    assert state.stable is not None
    assert (state.sequence, state.stable.version) == (3, "1.1.0")

    status, body = post_api(client, f"/api/fleets/{seeded.fleet}/rollout/promote", **headers)
    assert status == 409
    assert "no canary" in body["error"]
    status, body = post_api(
        client, f"/api/fleets/{seeded.fleet}/rollout/rollback", {"to_version": "2.0.0"}, **headers
    )
    assert status == 400
    _retain_on_rollout(seeded, b'{"state": "{}", "signature": {}}')
    status, body = post_api(
        client,
        f"/api/fleets/{seeded.fleet}/rollout/rollback",
        {"to_version": "1.0.0", "expect_sequence": 3},
        **headers,
    )
    assert status == 200, body
    assert "not a rollout state of ours" in body["warnings"][0]
    assert body["rollout"]["state"]["stable"]["version"] == "1.0.0"
    assert body["rollout"]["state"]["rollback"] is True
    assert body["decision"]["action"] == "rolled_back"
    state = rollout_status(seeded.fleet, seeded.broker.address, trusted)
    assert state is not None
    assert state.stable is not None
    assert (state.sequence, state.stable.version, state.rollback) == (4, "1.0.0", True)
    actions = [
        d["action"] for d in get(client, f"/api/fleets/{seeded.fleet}/decisions")["decisions"]
    ]
    assert actions[:2] == ["rolled_back", "promoted"]


def test_the_broker_being_away_is_a_502(seeded: Seeded) -> None:
    client = create_app(seeded.config(broker="mqtt://127.0.0.1:9")).test_client()
    status, body = post_api(
        client,
        f"/api/fleets/{seeded.fleet}/rollout/rollback",
        {"to_version": "1.0.0"},
        **{"X-Edgefleet-Token": TOKEN},
    )
    assert status == 502, body
    assert "127.0.0.1:9" in body["error"]


# ----------------------------------------------------------------------- config and docs


def test_config_is_checked() -> None:
    with pytest.raises(InputError, match="at least 16"):
        WebConfig(home=Path("h"), write_token="short")
    with pytest.raises(InputError, match="unknown dashboard setting"):
        create_app({"home": "h", "tokn": TOKEN})
    with pytest.raises(InputError, match="fleet name"):
        WebConfig(home=Path("h"), fleets=("a/b",))
    with pytest.raises(InputError, match="broker URL"):
        WebConfig(home=Path("h"), broker="http://x")
    with pytest.raises(InputError, match="needs a home"):
        create_app({})


def test_every_api_route_is_documented(app: Flask) -> None:
    names = {"fleet": "FLEET", "device_id": "ID", "key": "KEY"}
    rules = sorted(
        {
            re.sub(r"<(?:\w+:)?(\w+)>", lambda m: names[m.group(1)], rule.rule)
            for rule in app.url_map.iter_rules()
            if rule.rule.startswith("/api/")
        }
    )
    assert len(rules) == 13
    guide = (WEB_DIR / "API.md").read_text(encoding="utf-8")
    docstring = sys.modules["edgefleet.web.api"].__doc__ or ""
    for rule in rules:
        assert f"`{'POST' if 'rollout/' in rule else 'GET'} {rule}`" in guide, rule
        assert rule in docstring, rule


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def served(seeded: Seeded, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.cli.main",
            "--home",
            str(seeded.home),
            "serve",
            "--db",
            seeded.db,
            "--port",
            "0",
            "--broker",
            seeded.broker.url,
            "--token-file",
            str(token_file),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = []
    deadline = time.monotonic() + 60
    address = None
    while address is None and time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/)", line)
        address = found.group(1) if found else None
    assert address, "".join(lines)
    assert any(f"write token from {token_file}" in line for line in lines), lines
    try:
        yield process, address
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_edgefleet_serve_prints_its_address_and_stops_on_sigterm(
    served: tuple[subprocess.Popen[str], str], seeded: Seeded
) -> None:
    process, address = served
    with urllib.request.urlopen(f"{address}api/fleets", timeout=10) as response:
        assert json.load(response) == {"fleets": [seeded.fleet]}
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert process.stderr is not None
    assert "dashboard stopped" in process.stderr.read()


def test_the_demo_ends_with_the_dashboard_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    finish_demo(Namespace(serve=False, dashboard_port=8050), tmp_path / "run", "demo")
    printed = capsys.readouterr().err
    assert "dashboard: http://127.0.0.1:8050/fleets/demo/" in printed
    assert f"serve --db sqlite:///{tmp_path / 'run' / 'monitor.db'}" in printed


def test_a_devices_outbox_waiting_for_acks_shows_from_its_status(seeded: Seeded) -> None:
    from edgefleet.central.monitor.store import MonitorStore
    from edgefleet.edge.status import DeviceStatus

    store = MonitorStore(seeded.db)
    store.put_statuses(
        seeded.fleet,
        [DeviceStatus("pos-1", "online", "1.0.0", "idle", None, 7, 5, 2)],
    )
    store.close()
    client = create_app(seeded.config()).test_client()
    devices = {
        d["device_id"]: d for d in get(client, f"/api/fleets/{seeded.fleet}/devices")["devices"]
    }
    assert devices["pos-1"]["status"]["outbox_awaiting_ack"] == 5
    assert devices["pos-1"]["status"]["outbox_pending"] == 7
    assert devices["pos-2"]["status"] is None
    page = client.get(f"/fleets/{seeded.fleet}/devices").get_data(as_text=True)
    assert "5 / 7" in page
    one = client.get(f"/fleets/{seeded.fleet}/devices/pos-1").get_data(as_text=True)
    assert "5 sent, waiting for an ack; 2 dropped" in one

"""The dashboard in a real browser: Debian's chromium, driven by Playwright, against the
Flask app serving a monitor database that a real simulated fleet filled (Mosquitto, signed
bundles, agents, the monitor, the closed loop's canary). The pages show the store's
numbers, the charts render, the browser demo scores exactly as Python does and keeps
scoring offline, promote and roll back work from the page, hostile strings stay text, no
console error appears and no request leaves loopback. Screenshots of every page go to
test-artifacts/dashboard-*.png."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest

from edgefleet.central import publish as publish_module
from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import encode_features, load_training_table
from edgefleet.central.export import export_bundle
from edgefleet.central.keys import generate_keys
from edgefleet.central.monitor.ingest import Monitor
from edgefleet.central.monitor.loop import RetrainLoop
from edgefleet.central.monitor.store import AlertRecord, DecisionRecord, MonitorStore
from edgefleet.central.publish import publish, rollout_status, state_file_for
from edgefleet.central.registry import Registry
from edgefleet.central.simulator import Simulation, SimulationConfig
from edgefleet.central.trainer import TrainedModel, train
from edgefleet.converters.onnx_export import predict as onnx_predict
from edgefleet.edge.encoding import RecordEncoder
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.report import Report
from edgefleet.edge.rollout import in_canary
from edgefleet.edge.schema import CategoricalFeature, FeatureSchema, NumericFeature
from edgefleet.edge.signing import TrustedKey, load_private_key, load_public_key
from edgefleet.edge.sketch_builder import SketchBuilder
from edgefleet.edge.topics import Topics
from edgefleet.web.app import create_app
from edgefleet.web.server import dashboard_server
from tests.fleet.conftest import broker  # noqa: F401
from tests.fleet.kit import wait_for
from tests.web.test_browser_bundle import (
    BROWSER_VS_PYTHON,
    LOOPBACK,
    PAGE_TIMEOUT_MS,
    PageLog,
    _holdout_records,
    browser,  # noqa: F401
)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
TOKEN = "dashboard-write-token-0123456789"
DEVICES = 8

# Hostile strings, as a schema, a report or a decision could carry them.
LAB_NUMERIC = '<img src=x onerror="window.__pwned=1">'
LAB_CATEGORICAL = "plan</script><script>window.__pwned=2</script>"
LAB_VALUES = (
    "<b>gold</b>",
    "\"quoted\" & 'single'",
    "{{ 7*7 }}",
    "</textarea><svg onload=window.__pwned=3>",
)
HOSTILE_SUBJECT = '<iframe srcdoc="<script>window.__pwned=4</script>">'
HOSTILE_REASON = 'rolled back <a href="javascript:window.__pwned=5">here</a> & {{ 7*7 }}'
HOSTILE_KEY = '<em onmouseover="window.__pwned=6">key</em>'
HOSTILE_PAYLOAD = "<script>window.__pwned=7</script>"
INJECTED = "img, iframe, b, em, textarea, a[href^='javascript'], [onerror], [onload], [onmouseover]"


@dataclass
class Site:
    home: Path
    store: MonitorStore
    fleet: str
    lab: str
    broker: MosquittoBroker
    trusted: list[TrustedKey]
    url: str = ""


def balanced_rollout_id(fleet: str) -> str:
    """A rollout id that puts exactly half of the simulated devices in a 50 % canary. The
    real draw is random, and 8 devices all fall on one side of it once in 128 runs."""
    devices = [f"{fleet}-{i:04d}" for i in range(DEVICES)]  # Simulation.device_id
    for number in itertools.count():
        candidate = f"{number:012x}"
        if sum(in_canary(device, candidate, 50) for device in devices) == DEVICES // 2:
            return candidate
    raise AssertionError("unreachable")


def _lab_model() -> tuple[TrainedModel, pd.DataFrame]:
    """A model on a schema of hostile feature names and category values."""
    schema = FeatureSchema(
        features=(
            NumericFeature(LAB_NUMERIC, minimum=0, maximum=100),
            CategoricalFeature(LAB_CATEGORICAL, LAB_VALUES),
            NumericFeature("tenure"),
        ),
        target="left",
        classes=("no", "yes"),
    )
    rng = np.random.default_rng(0)
    rows = 1500
    x, code, tenure = rng.uniform(0, 100, rows), rng.integers(0, 4, rows), rng.uniform(0, 50, rows)
    p = 1 / (1 + np.exp(-(x / 25 - 2 + (code == 1) - tenure / 30)))
    frame = pd.DataFrame(
        {
            LAB_NUMERIC: x,
            LAB_CATEGORICAL: [LAB_VALUES[i] for i in code],
            "tenure": tenure,
            "left": np.where(rng.random(rows) < p, "yes", "no"),
        }
    )
    return train(load_training_table(frame, "left", schema=schema), "logreg", seed=1), frame


def _seed_lab(site: Site, key: Any) -> None:
    """The hostile fleet: its model published, two devices' reports, an alert, a decision
    and a refused report, all carrying markup."""
    model, frame = _lab_model()
    version = Registry(site.home).register(model, name="lab", data_sha256="0" * 64)
    bundle = export_bundle(version, ["onnx", "web"], site.home / "bundles" / "lab-1.0.0", key)
    publish(
        bundle.bundle,
        site.lab,
        site.broker.address,
        key,
        state_file=state_file_for(site.home, site.lab),
    )
    manifest = bundle.manifest
    inputs = encode_features(frame[list(manifest.schema.names)], manifest.schema)
    scores = model.pipeline.predict_proba(inputs)[:, 1]
    items = []
    for index, device in enumerate(("lab-0", "lab-1")):
        for sequence in (1, 2):
            rows = slice((index * 2 + sequence) * 300, (index * 2 + sequence + 1) * 300)
            builder = SketchBuilder.from_manifest(manifest)
            builder.add(inputs[rows], scores[rows], 0.001)
            body = builder.roll()
            report = Report.from_body(
                body,
                fleet=site.lab,
                device_id=device,
                sequence=sequence,
                cohort="stable",
                device_group="lab",
            )
            items.append((Topics(site.lab).report(device), report.encode()))
    items.append((Topics(site.lab).report("lab-9"), HOSTILE_PAYLOAD.encode()))
    counts = site.store.ingest_many(items)
    assert (counts.stored, counts.quarantined) == (4, 1)
    site.store.add_alert(
        AlertRecord(
            id=None,
            fleet=site.lab,
            created=time.time(),
            rule="feature_drift",
            scope="device:lab-0",
            subject=HOSTILE_SUBJECT,
            value=0.5,
            threshold=0.1,
            evidence={"model_version": "1.0.0", HOSTILE_KEY: LAB_VALUES[3]},
        )
    )
    site.store.add_decision(
        DecisionRecord(
            id=None,
            fleet=site.lab,
            created=time.time(),
            action="rolled_back",
            model_version="1.0.0",
            reason=HOSTILE_REASON,
            evidence={HOSTILE_KEY: [LAB_CATEGORICAL, {"deeper": LAB_NUMERIC}], "n": 3},
        )
    )


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
    trained: Callable[[str], TrainedModel],
    broker: MosquittoBroker,  # noqa: F811
) -> Site:
    """A real fleet: churn 1.0.0 published to 8 simulated devices, half of them hit by a
    price increase; the monitor stores their reports; the closed loop retrains and
    publishes churn 1.1.0 as the canary of half the fleet, whose devices then report on
    it. Plus the hostile "lab" fleet."""
    root = tmp_path_factory.mktemp("dashboard")
    home = root / "home"
    private, public, _ = generate_keys(home / "keys")
    key = load_private_key(private)
    version = Registry(home).register(trained("logreg"), data_sha256="0" * 64)
    bundle = export_bundle(version, ["onnx", "web"], home / "bundles" / "churn-1.0.0", key).bundle
    suffix = uuid.uuid4().hex[:8]
    site = Site(
        home=home,
        store=MonitorStore(f"sqlite:///{root / 'monitor.db'}"),
        fleet=f"shops-{suffix}",
        lab=f"lab-{suffix}",
        broker=broker,
        trusted=[load_public_key(public)],
    )
    publish(bundle, site.fleet, broker.address, key, state_file=state_file_for(home, site.fleet))
    config = SimulationConfig(
        fleet=site.fleet,
        devices=DEVICES,
        broker=broker.address,
        trusted_keys=tuple(site.trusted),
        state_root=root / "devices",
        scenario="price_increase",
        drift_share=0.5,
        drift_at=1.0,
        records_per_second=40.0,
        report_seconds=1.0,
        groups=2,
        seed=1,
    )
    newest = generate(3000, seed=11, scenario="price_increase").frame
    loop = RetrainLoop(
        site.fleet,
        home,
        site.store,
        broker.address,
        key,
        lambda: newest,
        formats=["onnx", "web"],
        canary_percent=50,
        window_seconds=6.0,
        min_gain=-0.05,  # a test fleet: ship unless clearly worse
    )
    stop = threading.Event()
    rollout_id = balanced_rollout_id(site.fleet)
    with (
        pytest.MonkeyPatch.context() as patch,
        Monitor(site.fleet, broker.address, site.store),
        Simulation(config) as sim,
    ):
        patch.setattr(publish_module, "new_rollout_id", lambda: rollout_id)
        wait_for(lambda: sim.models() == {"1.0.0": DEVICES}, 30, "every device on 1.0.0")
        feeder = threading.Thread(
            target=sim.run_for, args=(300.0,), kwargs={"step": 0.5, "until": stop.is_set}
        )
        feeder.start()
        try:
            time.sleep(7.0)
            result = loop.run(force=True)
            assert result.action == "canary", result.message
            state = loop.rollout()

            def settled() -> bool:
                statuses = [a.status() for a in sim.agents]
                return all(
                    s["model_version"] == ("1.1.0" if s["cohort"] == "canary" else "1.0.0")
                    and s["rollout_sequence"] == state.sequence
                    for s in statuses
                )

            wait_for(settled, 30, "canary devices on 1.1.0, the others on 1.0.0")
            time.sleep(3.0)
        finally:
            stop.set()
            feeder.join(timeout=30)
    assert site.store.alerts(site.fleet, open_only=True), "the drift raised no alert"
    assert site.store.report_count(site.fleet, model_version="1.1.0") > 0
    _seed_lab(site, key)
    return site


@pytest.fixture(scope="module")
def base_url(site: Site) -> Iterator[str]:
    app = create_app(
        {
            "home": site.home,
            "db": site.store.url,
            "broker": site.broker.address,
            "write_token": TOKEN,
            # The fleet stopped when the fixture ended; its devices stay "online" for the
            # length of the module.
            "online_seconds": 3600.0,
        }
    )
    # The production server, as `edgefleet serve` runs it.
    server = dashboard_server(app, "127.0.0.1", 0).start()
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def browsing(browser: Any) -> Iterator[tuple[Any, Any, PageLog]]:  # noqa: F811
    """A fresh browser context whose requests off loopback are aborted and recorded."""
    log = PageLog()
    context = browser.new_context(viewport={"width": 1280, "height": 860})

    def guard(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).scheme == "data" or urlsplit(url).hostname in LOOPBACK:
            route.continue_()
        else:
            log.blocked.append(url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.on("request", lambda request: log.requests.append(request.url))

    def console(message: Any) -> None:
        if message.type == "error":
            log.console_errors.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda error: log.console_errors.append(f"uncaught: {error}"))
    try:
        yield context, page, log
    finally:
        context.close()


def wait_until(page: Any, expression: str, arg: Any = None, timeout: float = 30.0) -> Any:
    """Poll ``expression`` until it is truthy. Not Playwright's wait_for_function: that
    evaluates its predicate with eval(), which the dashboard's CSP forbids."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {expression}")
        time.sleep(0.05)


def wait_for_probability(page: Any, want: float) -> None:
    wait_until(
        page,
        "(want) => Math.abs(Number(document.getElementById('probability').dataset.value)"
        " - want) <= 1e-6",
        want,
    )


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def api(page: Any, url: str) -> Any:
    response = page.request.get(url)
    assert response.ok, url
    return response.json()


def test_the_pages_show_the_fleet(
    browser: Any,  # noqa: F811
    site: Site,
    base_url: str,
) -> None:
    fleet = f"{base_url}/fleets/{site.fleet}"
    devices = site.store.devices(site.fleet)
    open_alerts = site.store.alerts(site.fleet, open_only=True)
    with browsing(browser) as (_, page, log):
        # The only fleet... of two: the index lists both.
        page.goto(f"{base_url}/")
        assert page.locator(f"text={site.fleet}").count() >= 1
        assert page.locator(f"text={site.lab}").count() >= 1

        page.goto(f"{fleet}/")
        page.wait_for_selector("#overview-drift[data-rendered=true]")
        assert page.inner_text("#kpi-devices [data-field=total]") == str(DEVICES)
        assert page.inner_text("#kpi-devices [data-field=online]") == str(DEVICES)
        assert page.inner_text("[data-field=scored]") == f"{sum(d.scored for d in devices):,}"
        assert page.inner_text("[data-field=alerts]") == str(len(open_alerts))
        assert page.inner_text("[data-field=stable]") == "churn 1.0.0"
        assert "canary churn 1.1.0 on 50 % of devices" in page.inner_text("[data-field=canary]")
        running = {d.model_version for d in devices}
        assert running == {"1.0.0", "1.1.0"}
        rows = page.locator("#versions tbody tr")
        assert rows.count() == 2
        assert "stable" in rows.nth(0).inner_text()
        assert "canary" in rows.nth(1).inner_text()
        overview = api(page, f"{base_url}/api/fleets/{site.fleet}/overview")
        assert [v["devices"] for v in overview["versions"]] == [DEVICES // 2, DEVICES // 2]
        assert page.locator("#overview-drift svg path.series").count() == 2  # one per version
        assert page.locator("#overview-drift svg circle").count() > 4
        assert page.locator("#recent-decisions li").count() == 4  # check .. canary
        screenshot(page, "overview")

        page.goto(f"{fleet}/models")
        cards = page.locator("section.model")
        assert cards.count() == 2
        assert cards.nth(0).get_attribute("data-version") == "1.1.0"
        assert page.locator("section.model .pill.verified").count() == 2
        assert "canary" in cards.nth(0).inner_text()
        assert "AUROC" in cards.nth(1).inner_text()
        screenshot(page, "models")

        page.goto(f"{fleet}/drift")
        page.wait_for_selector("#drift-app[data-rendered=true]")
        drift = api(page, f"{base_url}/api/fleets/{site.fleet}/drift")
        assert drift["model_version"] == "1.0.0"
        features = drift["features"]
        assert page.locator("#features tbody tr").count() == len(features) == 17
        assert page.locator("#features .spark svg path.series").count() == 17
        assert page.locator("#timeline-chart svg path.series").count() == 6  # top 5 + score
        drifted = len(drift["measures"]["drifted_features"])
        assert page.inner_text("#drifted-count") == f"{drifted} / 17"
        most = max(features, key=lambda f: f["js"])
        assert most["name"] == "monthly_charges"  # the price increase
        assert page.inner_text("#histogram-title") == most["name"]
        bins = len(most["histogram"]["labels"])
        assert page.locator("#histogram-chart svg > rect.bar-current").count() == bins
        assert page.locator("#histogram-chart svg > rect.bar-reference").count() == bins
        assert page.locator("#score-chart svg > rect.bar-current").count() == 20
        contract = next(i for i, f in enumerate(features) if f["name"] == "contract")
        page.click(f"#features tr[data-index='{contract}']")
        assert page.inner_text("#histogram-title") == "contract"
        assert page.locator("#histogram-chart svg > rect.bar-current").count() == 3
        ticks = page.evaluate(
            "[...document.querySelectorAll('#histogram-chart .tick-label')].map(t => t.textContent)"
        )
        assert ticks == ["month-to-month", "one-year", "two-year"]
        page.click("button[data-metric=psi]")
        assert "threshold 0.2" in page.inner_text("#timeline-chart")
        page.click("button[data-metric=js]")
        page.click(f"#features tr[data-index='{features.index(most)}']")
        screenshot(page, "drift")

        page.goto(f"{fleet}/devices")
        assert page.locator("#devices tbody tr").count() == DEVICES
        assert page.locator("#devices .dot.online").count() == DEVICES
        canary = next(d for d in devices if d.cohort == "canary")
        screenshot(page, "devices")
        page.click(f"#devices tr[data-device='{canary.device_id}'] a")
        page.wait_for_selector("#device-app[data-rendered=true]")
        assert canary.device_id in page.inner_text("h1")
        assert "churn 1.1.0" in page.inner_text(".kpis")
        assert page.locator("#device-score-chart svg > rect.bar-current").count() == 20
        assert page.locator("#device-features-chart svg > rect.bar-current").count() == 17
        screenshot(page, "device")

        page.goto(f"{fleet}/rollouts")
        decisions = site.store.decisions(site.fleet)
        assert [d.action for d in decisions] == ["check", "retrained", "accepted", "canary"]
        assert page.locator("#history li.decision").count() == len(decisions)
        assert page.locator("#history li.decision").nth(0).get_attribute("data-action") == "canary"
        page.click("#history li.decision:last-child details summary")
        evidence = page.inner_text("#history li.decision:last-child details")
        assert "monthly_charges" in evidence  # the alert that asked for the retrain
        assert page.locator("#alerts tbody tr").count() == len(site.store.alerts(site.fleet))
        assert page.is_visible("#promote-button")
        screenshot(page, "rollouts")
        log.check()


def _fill(page: Any, manifest: Manifest, record: dict[str, Any]) -> None:
    for feature in manifest.schema.features:
        value = record[feature.name]
        control = page.locator(f"#form [name='{feature.name}']")
        if isinstance(feature, CategoricalFeature):
            if value in feature.vocabulary:
                control.select_option(value=value)
            else:
                control.select_option(label="other / unknown")
        else:
            control.fill("" if value is None else repr(float(value)))


def test_the_demo_scores_like_python_and_offline(
    browser: Any,  # noqa: F811
    site: Site,
    base_url: str,
    trained: Callable[[str], TrainedModel],
) -> None:
    root = site.home / "bundles" / "churn-1.0.0"
    manifest = Manifest.from_bytes((root / "manifest.json").read_bytes())
    artifact = (root / "web" / "model.onnx").read_bytes()
    encoder = RecordEncoder(manifest.schema)

    def python(records: list[dict[str, Any]]) -> Any:
        return onnx_predict(artifact, encoder.encode(records))[:, 1].astype(np.float64)

    records = _holdout_records(trained("logreg"), 16)
    with browsing(browser) as (context, page, log):
        page.goto(f"{base_url}/demo?fleet={site.fleet}")
        wait_until(page, "() => document.body.dataset.state !== undefined")
        assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#status")
        assert page.inner_text("#status").startswith("Verified: churn 1.0.0")
        assert "churn 1.0.0" in page.inner_text("#model")  # stable, not the canary
        checks = page.inner_text("#checks")
        assert "signed by publisher key" in checks
        assert "verified with WebCrypto" in checks
        assert f"{len(manifest.golden)} golden vectors agree" in checks
        assert page.locator("#checks li.failed").count() == 0

        # Through the form, field by field, as a person would.
        for record in records[:4]:
            _fill(page, manifest, record)
            want = float(python([record])[0])
            wait_for_probability(page, want)
            shown = float(page.get_attribute("#probability", "data-value"))
            assert abs(shown - want) <= BROWSER_VS_PYTHON
            assert page.inner_text("#probability") == f"{shown * 100:.1f} %"
        # And a batch through the page's own bundle.
        got = np.array(page.evaluate("(r) => window.edgefleetDemo.score(r)", records))
        assert float(np.max(np.abs(got - python(records)))) <= BROWSER_VS_PYTHON

        # The network goes away; the page keeps scoring every change.
        requests_before = len(log.requests)
        context.set_offline(True)
        context.route("**/*", lambda route: route.abort())
        for contract in ("two-year", "one-year"):
            page.select_option("#form [name='contract']", value=contract)
            record = page.evaluate("window.edgefleetDemo.readRecord()")
            assert record["contract"] == contract
            wait_for_probability(page, float(python([record])[0]))
        assert len(log.requests) == requests_before  # scored with no request at all
        screenshot(page, "demo")
        log.check()


def _assert_inert(page: Any) -> None:
    """Nothing of the hostile strings became markup or ran."""
    assert page.evaluate("window.__pwned === undefined")
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    assert page.locator(INJECTED).count() == 0


def test_hostile_strings_render_as_text(
    browser: Any,  # noqa: F811
    site: Site,
    base_url: str,
) -> None:
    lab = f"{base_url}/fleets/{site.lab}"
    with browsing(browser) as (_, page, log):
        page.goto(f"{lab}/")
        page.wait_for_selector("#overview-drift[data-rendered]")
        _assert_inert(page)
        assert HOSTILE_SUBJECT in page.inner_text("main")

        page.goto(f"{lab}/drift")
        page.wait_for_selector("#drift-app[data-rendered=true]")
        _assert_inert(page)
        table = page.inner_text("#features")
        assert LAB_NUMERIC in table
        assert LAB_CATEGORICAL in table
        legend = page.evaluate(
            "[...document.querySelectorAll('#timeline-chart svg title')].map(t => t.textContent)"
        )
        assert LAB_NUMERIC in legend
        drift = api(page, f"{base_url}/api/fleets/{site.lab}/drift")
        index = next(i for i, f in enumerate(drift["features"]) if f["name"] == LAB_CATEGORICAL)
        page.click(f"#features tr[data-index='{index}']")
        assert page.inner_text("#histogram-title") == LAB_CATEGORICAL
        titles = page.evaluate(
            "[...document.querySelectorAll('#histogram-chart svg title')].map(t => t.textContent)"
        )
        for value in LAB_VALUES:
            assert value in titles
        _assert_inert(page)
        screenshot(page, "hostile-drift")

        page.goto(f"{lab}/devices")
        _assert_inert(page)
        assert HOSTILE_PAYLOAD in page.inner_text("#refused")
        page.goto(f"{lab}/devices/lab-0")
        page.wait_for_selector("#device-app[data-rendered=true]")
        _assert_inert(page)
        assert HOSTILE_SUBJECT in page.inner_text("main")

        page.goto(f"{lab}/rollouts")
        for details in page.locator("details.evidence summary").all():
            details.click()
        _assert_inert(page)
        history = page.inner_text("#history")
        for text in (HOSTILE_REASON, HOSTILE_KEY, LAB_CATEGORICAL, LAB_NUMERIC):
            assert text in history
        screenshot(page, "hostile-rollouts")

        page.goto(f"{base_url}/demo?fleet={site.lab}")
        wait_until(page, "() => document.body.dataset.state !== undefined")
        assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#status")
        _assert_inert(page)
        names = page.evaluate(
            "[...document.querySelectorAll('#form input, #form select')].map(e => e.name)"
        )
        assert names == [LAB_NUMERIC, LAB_CATEGORICAL, "tenure"]
        options = page.evaluate(
            "[...document.querySelectorAll('#form option')].map(o => o.textContent)"
        )
        assert options[:4] == list(LAB_VALUES)
        screenshot(page, "hostile-demo")
        log.check()


def test_promote_and_roll_back_from_the_page(
    browser: Any,  # noqa: F811
    site: Site,
    base_url: str,
) -> None:
    """Last: it changes the fleet's rollout for real."""

    def state() -> Any:
        current = rollout_status(site.fleet, site.broker.address, site.trusted)
        assert current is not None
        return current

    before = state()
    open_alerts = site.store.alerts(site.fleet, open_only=True)
    assert open_alerts
    assert {a.evidence["model_version"] for a in open_alerts} == {"1.0.0"}
    assert before.canary is not None
    assert before.canary.version == "1.1.0"
    with browsing(browser) as (_, page, log):
        page.goto(f"{base_url}/fleets/{site.fleet}/rollouts")
        dialog = page.locator("#promote-dialog")
        # Cancel: nothing is posted.
        page.click("#promote-button")
        assert dialog.is_visible()
        assert "Promote churn 1.1.0 to stable?" in dialog.inner_text()
        page.fill("#promote-dialog input[name=token]", TOKEN)
        page.screenshot(path=str(ARTIFACTS / "dashboard-rollouts-confirm.png"))
        page.click("#promote-dialog [data-closes]")
        assert not dialog.is_visible()
        assert state().sequence == before.sequence

        # A wrong token: refused, nothing changes.
        page.click("#promote-button")
        page.fill("#promote-dialog input[name=token]", "not-the-token-but-long")
        with page.expect_navigation():
            page.click("#promote-dialog button[type=submit]")
        assert "wrong or missing write token" in page.inner_text("#write-error")
        assert state().sequence == before.sequence
        # The refused POST itself is the one console error (its 403 status).
        assert [e for e in log.console_errors if "403" not in e] == []
        log.console_errors.clear()

        # The token: promoted on every device.
        page.click("#promote-button")
        page.fill("#promote-dialog input[name=token]", TOKEN)
        with page.expect_navigation():
            page.click("#promote-dialog button[type=submit]")
        assert "churn 1.1.0 promoted from 50% canary to stable" in page.inner_text(".notice.ok")
        promoted = state()
        assert promoted.sequence == before.sequence + 1
        assert promoted.stable is not None
        assert (promoted.stable.version, promoted.canary) == ("1.1.0", None)
        assert "churn 1.1.0" in page.inner_text("#state-stable")
        decision = site.store.decisions(site.fleet)[-1]
        assert (decision.action, decision.model_version) == ("promoted", "1.1.0")
        assert decision.evidence["by"] == "dashboard"
        assert decision.evidence["before"]["canary"] == "1.1.0"
        # The alerts about the replaced 1.0.0 were answered, as the closed loop does.
        assert sorted(decision.evidence["closed_alerts"]) == sorted(a.id or 0 for a in open_alerts)
        assert site.store.alerts(site.fleet, open_only=True) == []

        # Roll back stable to the version before, from its own dialog.
        page.click("#rollback-button")
        assert page.locator(
            "#rollback-dialog select[name=to_version] option"
        ).all_inner_texts() == ["churn 1.0.0"]
        page.fill("#rollback-dialog input[name=token]", TOKEN)
        with page.expect_navigation():
            page.click("#rollback-dialog button[type=submit]")
        assert "re-pointed from churn 1.1.0 to churn 1.0.0" in page.inner_text(".notice.ok")
        back = state()
        assert back.stable is not None
        assert (back.stable.version, back.rollback) == ("1.0.0", True)
        assert back.sequence == before.sequence + 2
        actions = [d.action for d in site.store.decisions(site.fleet)]
        assert actions[-2:] == ["promoted", "rolled_back"]
        assert page.locator("#history li.decision").nth(0).get_attribute("data-action") == (
            "rolled_back"
        )
        overview = json.loads(
            page.request.get(f"{base_url}/api/fleets/{site.fleet}/overview").text()
        )
        assert overview["rollout"]["state"]["stable"]["version"] == "1.0.0"
        page.locator("#history li.decision").nth(0).locator("summary").click()
        screenshot(page, "rollouts-after")
        log.check()

"""The web bundle in a real browser: Debian's chromium, driven by Playwright, loads a bundle
exported with the "web" format from a static server on loopback, verifies it, self-tests
it, and scores records exactly as Python's onnxruntime does. No request may leave loopback.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from edgefleet.central.export import export_bundle
from edgefleet.central.registry import Registry
from edgefleet.central.trainer import TrainedModel
from edgefleet.converters.onnx_export import predict as onnx_predict
from edgefleet.edge.encoding import RecordEncoder
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.schema import CategoricalFeature, FeatureSchema, NumericFeature
from edgefleet.edge.signing import load_private_key
from edgefleet.errors import RecordError

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOOPBACK = {"127.0.0.1", "localhost"}
REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "test-artifacts" / "web-bundle.png"
FAMILIES = ("rf", "logreg", "hgb")
EXTRA_HOLDOUT_ROWS = 12
BROWSER_VS_PYTHON = 1e-6
PAGE_TIMEOUT_MS = 30_000


class _BundleHandler(SimpleHTTPRequestHandler):
    # .mjs must be JavaScript or the browser refuses the dynamic import() of ort's loader.
    extensions_map = {  # noqa: RUF012 (overrides the base class attribute)
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
    }

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """A static server of ``root`` on 127.0.0.1 (a free port), in a thread."""
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_BundleHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class PageLog:
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def check(self) -> None:
        off_loopback = [
            u
            for u in self.requests
            if urlsplit(u).scheme != "data" and urlsplit(u).hostname not in LOOPBACK
        ]
        assert not off_loopback, f"requests left loopback: {off_loopback}"
        assert not self.blocked, f"requests were blocked: {self.blocked}"
        assert not self.console_errors, f"console errors: {self.console_errors}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup (it installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@contextmanager
def open_page(browser: Any, root: Path) -> Iterator[tuple[Any, PageLog]]:
    """Serve the bundle at ``root`` and open its demo page; any request that is not for
    loopback is aborted and recorded."""
    log = PageLog()
    with serve(root) as base:
        context = browser.new_context(viewport={"width": 1280, "height": 820})

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
        page.on(
            "console",
            lambda message: message.type == "error" and log.console_errors.append(message.text),
        )
        page.on("pageerror", lambda error: log.console_errors.append(f"uncaught: {error}"))
        try:
            page.goto(f"{base}/web/index.html")
            page.wait_for_function("document.body.dataset.state !== 'loading'")
            yield page, log
        finally:
            context.close()


@pytest.fixture(scope="module")
def bundle_for(
    trained: Callable[[str], TrainedModel],
    keypair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], Path]:
    """``bundle_for("rf")`` -> a signed bundle with the web format, exported once."""
    cache: dict[str, Path] = {}
    key = load_private_key(keypair[0])

    def get(family: str) -> Path:
        if family not in cache:
            home = tmp_path_factory.mktemp(f"web-{family}")
            version = Registry(home / "registry").register(trained(family), data_sha256="x")
            cache[family] = export_bundle(version, ["web"], home / "bundle", key).bundle
        return cache[family]

    return get


def _holdout_records(model: TrainedModel, count: int) -> list[dict[str, Any]]:
    """Holdout rows (encoded) decoded back to records, as an app would send them."""
    records = []
    for row in model.holdout_inputs[-count:]:
        record: dict[str, Any] = {}
        for feature, value in zip(model.schema.features, row.tolist(), strict=True):
            if isinstance(feature, CategoricalFeature):
                record[feature.name] = feature.vocabulary[int(value)] if value >= 0 else "<unseen>"
            else:
                record[feature.name] = None if math.isnan(value) else value
        records.append(record)
    return records


@pytest.mark.parametrize("family", FAMILIES)
def test_browser_scores_like_python(
    family: str,
    browser: Any,
    bundle_for: Callable[[str], Path],
    trained: Callable[[str], TrainedModel],
) -> None:
    root = bundle_for(family)
    manifest = Manifest.from_bytes((root / "manifest.json").read_bytes())
    records = [dict(g.record) for g in manifest.golden]
    records += _holdout_records(trained(family), EXTRA_HOLDOUT_ROWS)
    expected = onnx_predict(
        (root / "web" / "model.onnx").read_bytes(), RecordEncoder(manifest.schema).encode(records)
    ).astype(np.float64)

    with open_page(browser, root) as (page, log):
        assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#status")
        status = page.inner_text("#status")
        assert status.startswith("Verified"), status
        assert f"{len(manifest.golden)} golden vectors" in status
        assert f"{manifest.name} {manifest.version}" in page.inner_text("#model")
        result = page.evaluate(
            """async (records) => {
                 const ef = await import('./edgefleet.js');
                 const bundle = window.edgefleetDemo.bundle;
                 return { test: await ef.selfTest(bundle),
                          proba: await ef.predictProba(bundle, records),
                          scores: await ef.score(bundle, records) };
               }""",
            records,
        )
        log.check()

    assert result["test"]["vectors"] == len(manifest.golden)
    assert result["test"]["worst"] <= manifest.tolerance
    proba = np.array(result["proba"], dtype=np.float64)
    assert proba.shape == expected.shape == (len(records), 2)
    difference = float(np.max(np.abs(proba - expected)))
    print(
        f"{family}: browser vs Python onnxruntime, {len(records)} records: max |diff| "
        f"{difference:.3g}"
    )
    assert difference <= BROWSER_VS_PYTHON
    np.testing.assert_array_equal(np.array(result["scores"]), proba[:, 1])


def test_form_updates_the_probability(browser: Any, bundle_for: Callable[[str], Path]) -> None:
    # Logistic regression: every field moves its score (a small forest may ignore a field).
    root = bundle_for("logreg")
    manifest = Manifest.from_bytes((root / "manifest.json").read_bytes())
    artifact = (root / "web" / "model.onnx").read_bytes()
    encoder = RecordEncoder(manifest.schema)

    def python_score(record: dict[str, Any]) -> float:
        return float(onnx_predict(artifact, encoder.encode(record))[0, 1])

    def shown(page: Any) -> tuple[dict[str, Any], float]:
        record = page.evaluate("window.edgefleetDemo.readRecord()")
        value = float(page.get_attribute("#probability", "data-value"))
        assert value == pytest.approx(python_score(record), abs=BROWSER_VS_PYTHON), record
        assert page.inner_text("#probability") == f"{value * 100:.1f} %"
        return record, value

    def change(page: Any, selector: str, options: list[str], label: bool = False) -> None:
        """Set the field to the first option that changes Python's score, and wait for the
        page to show that score."""
        record, before = shown(page)
        name = selector.split("=")[1].rstrip("]")
        for option in options:
            value = option if label or not selector.startswith("input") else float(option)
            if label:  # "other / unknown": any text outside the vocabulary
                value = "<unseen>"
            want = python_score({**record, name: value})
            if want != before:
                break
        else:
            pytest.fail(f"no option of {name} changes the score of {record}")
        if selector.startswith("select"):
            page.select_option(selector, **({"label": option} if label else {"value": option}))
        else:
            page.fill(selector, option)
        page.wait_for_function(
            "(want) => Math.abs(Number(document.getElementById('probability').dataset.value)"
            " - want) <= 1e-6",
            arg=want,
        )
        assert shown(page)[0][name] != record[name]

    with open_page(browser, root) as (page, log):
        record, _ = shown(page)
        assert record == dict(manifest.golden[0].record)
        change(page, "select[name=contract]", ["two-year", "one-year", "month-to-month"])
        change(page, "input[name=tenure_months]", ["70", "1", "30", "55"])
        # "other / unknown" scores as an unseen category, as on a device.
        change(page, "select[name=payment_method]", ["other / unknown"], label=True)
        payment = manifest.schema.feature("payment_method")
        assert isinstance(payment, CategoricalFeature)
        assert page.evaluate("window.edgefleetDemo.readRecord().payment_method") not in (
            payment.vocabulary
        )
        # An empty required field is a record error naming the field; no stale score shows.
        page.fill("input[name=monthly_charges]", "")
        page.wait_for_selector("#record-error:not([hidden])")
        assert "monthly_charges" in page.inner_text("#record-error")
        assert page.inner_text("#probability") == "–"
        page.fill("input[name=monthly_charges]", "55")
        page.wait_for_selector("#record-error", state="hidden")
        shown(page)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        log.check()


def test_tampered_model_is_refused(
    browser: Any, bundle_for: Callable[[str], Path], tmp_path: Path
) -> None:
    root = tmp_path / "tampered"
    shutil.copytree(bundle_for("rf"), root)
    model = root / "web" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    artifact = Manifest.from_bytes((root / "manifest.json").read_bytes()).artifact("web")
    actual = hashlib.sha256(data).hexdigest()

    with open_page(browser, root) as (page, log):
        assert page.evaluate("document.body.dataset.state") == "refused"
        status = page.inner_text("#status")
        assert "sha256 mismatch" in status
        assert artifact.sha256 in status
        assert actual in status
        assert page.evaluate("window.edgefleetDemo") is None
        assert page.locator("#form select, #form input").count() == 0
        # ort is never even loaded for a model that failed its hash.
        assert not any("/ort/" in url for url in log.requests)
        log.check()


# A schema that exercises every rule of edgefleet/edge/encoding.py.
POLICY_SCHEMA = FeatureSchema(
    features=(
        NumericFeature("strict", minimum=0, maximum=10),
        NumericFeature("clipped", minimum=0, maximum=10, out_of_range="clip"),
        NumericFeature("accepted", minimum=0, maximum=10, out_of_range="accept"),
        NumericFeature("optional", allow_missing=True),
        NumericFeature("free"),
        CategoricalFeature("plan", ("a", "b", "c")),
        CategoricalFeature("maybe", ("x", "y"), allow_missing=True),
    ),
    target="t",
    classes=("no", "yes"),
)
_BASE = {
    "strict": 1,
    "clipped": 2.5,
    "accepted": 3,
    "optional": 4,
    "free": -7.25,
    "plan": "b",
    "maybe": "y",
}
POLICY_CASES: list[Any] = [
    _BASE,
    {**_BASE, "extra": "ignored", "id": 12},
    {**_BASE, "strict": 0, "clipped": 10},
    {**_BASE, "strict": 11},
    {**_BASE, "strict": -0.5},
    {**_BASE, "clipped": -5},
    {**_BASE, "clipped": 15},
    {**_BASE, "accepted": 99},
    {**_BASE, "optional": None},
    {k: v for k, v in _BASE.items() if k != "optional"},
    {**_BASE, "optional": math.nan},
    {k: v for k, v in _BASE.items() if k != "strict"},
    {**_BASE, "strict": None},
    {**_BASE, "strict": math.nan},
    {**_BASE, "strict": "3"},
    {**_BASE, "strict": True},
    {**_BASE, "strict": [1]},
    {**_BASE, "strict": math.inf},
    {**_BASE, "clipped": -math.inf},
    {**_BASE, "free": math.inf},
    {**_BASE, "free": 1e300},
    {**_BASE, "plan": "zzz"},
    {**_BASE, "plan": "constructor"},
    {**_BASE, "plan": ""},
    {**_BASE, "plan": None},
    {k: v for k, v in _BASE.items() if k != "plan"},
    {**_BASE, "plan": 1},
    {**_BASE, "plan": math.nan},
    {**_BASE, "maybe": None},
    {**_BASE, "maybe": math.nan},
    {k: v for k, v in _BASE.items() if k != "maybe"},
    {**_BASE, "maybe": False},
    [1, 2, 3],
    "not a record",
]


_REASONS = (
    "missing",
    "infinite",
    "outside the allowed range",
    "expected a number, got text",
    "expected a number, got",
    "expected text",
    "expected a mapping",
)


def _reason(message: str) -> str:
    """The rule an encoding error comes from (the wording of values differs: repr vs JSON)."""
    return next((reason for reason in _REASONS if reason in message), message)


def _python_encoding(record: Any) -> dict[str, Any]:
    try:
        row = RecordEncoder(POLICY_SCHEMA).encode_row(record, 5)
    except RecordError as error:
        return {
            "error": True,
            "record": error.record,
            "field": error.field,
            "reason": _reason(str(error)),
        }
    with np.errstate(over="ignore"):  # 1e300 is inf in float32, in numpy as in JS
        values = np.array(row, dtype=np.float32).astype(np.float64)
    return {"error": False, "row": [None if math.isnan(v) else v for v in values]}


def test_encoding_matches_python_policy(browser: Any, bundle_for: Callable[[str], Path]) -> None:
    schema = json.loads(json.dumps(POLICY_SCHEMA.to_dict()))
    with open_page(browser, bundle_for("rf")) as (page, log):
        got = page.evaluate(
            """async ([schema, cases]) => {
                 const ef = await import('./edgefleet.js');
                 return cases.map((record) => {
                   try {
                     const row = ef.encodeRecord(schema, record, 5).map(Math.fround);
                     return { error: false, row: row.map((v) => (Number.isNaN(v) ? null : v)) };
                   } catch (error) {
                     if (!(error instanceof ef.RecordError)) throw error;
                     return { error: true, record: error.record, field: error.field ?? null,
                              message: error.message };
                   }
                 });
               }""",
            [schema, POLICY_CASES],
        )
        log.check()
    for case, browser_result in zip(POLICY_CASES, got, strict=True):
        message = browser_result.pop("message", None)
        if message is not None:
            browser_result["reason"] = _reason(message)
            if browser_result["field"] is not None:
                assert f'field "{browser_result["field"]}"' in message
        assert browser_result == _python_encoding(case), (case, message)

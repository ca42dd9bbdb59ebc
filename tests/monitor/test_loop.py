"""The closed loop against a real Mosquitto: a simulated fleet drifts, the monitor alerts,
the loop retrains, publishes a canary that the canary cohort's devices run, judges it on
their reports and promotes it; a candidate that does not help is rejected before it ships
and escalated to a person (no retry until the data changes), or rolled back when its canary
reports show it is worse. Every decision is recorded with its evidence."""

from __future__ import annotations

import doctest
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import encode_features, write_table
from edgefleet.central.export import export_bundle
from edgefleet.central.monitor import benefit as benefit_module
from edgefleet.central.monitor import canary as canary_module
from edgefleet.central.monitor.alerts import AlertRules
from edgefleet.central.monitor.ingest import Monitor
from edgefleet.central.monitor.loop import (
    RetrainLoop,
    auroc_standard_error,
    judge_canary,
    read_labelled,
)
from edgefleet.central.monitor.quality import rate
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.publish import publish, rollout_status, state_file_for
from edgefleet.central.registry import Registry
from edgefleet.central.simulator import Simulation, SimulationConfig
from edgefleet.central.trainer import TrainedModel
from edgefleet.cli.main import main
from edgefleet.converters.registry import DEFAULT_FORMATS
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.report import Report
from edgefleet.edge.signing import TrustedKey, load_private_key, load_public_key
from edgefleet.edge.sketch_builder import SketchBuilder
from edgefleet.edge.topics import Topics
from edgefleet.errors import DataError, InputError
from tests.fleet.kit import wait_for
from tests.monitor.test_measures import Served, make_reports, measured, served  # noqa: F401

# Rows for the "module:function" data source.
NEWEST = generate(600, seed=41, scenario="price_increase").frame


def newest_rows() -> pd.DataFrame:
    return NEWEST


# ------------------------------------------------------------------------- the data source


def test_a_folder_source_reads_the_newest_files_first(tmp_path: Path) -> None:
    frames = [generate(300, seed=s).frame for s in (1, 2, 3)]
    for i, frame in enumerate(frames):
        path = tmp_path / f"part-{i}.{'parquet' if i == 1 else 'csv'}"
        write_table(frame, path)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))  # part-2 is the newest
    (tmp_path / "notes.txt").write_text("not data")
    data = read_labelled(tmp_path, max_rows=500)
    assert len(data.frame) == 500
    assert [Path(f).name for f in data.files] == ["part-2.csv", "part-1.parquet"]
    # All of the newest file, then the newest (last) rows of the one before it.
    expected = pd.concat([frames[1].tail(200), frames[2]], ignore_index=True)
    assert data.frame["tenure_months"].tolist() == expected["tenure_months"].tolist()
    assert len(read_labelled(tmp_path, max_rows=10_000).frame) == 900


def test_callable_and_module_function_sources() -> None:
    data = read_labelled(f"{__name__}:newest_rows", max_rows=100)
    assert data.source == f"{__name__}:newest_rows"
    assert data.frame.equals(NEWEST.tail(100).reset_index(drop=True))
    assert len(read_labelled(newest_rows).frame) == 600


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        ("no/such/folder", InputError, "no such folder or file"),
        (f"{__name__}:absent", InputError, "not a function"),
        ("no_such_module_xyz:f", InputError, "cannot import"),
        (lambda: "rows", InputError, "not a DataFrame"),
        (pd.DataFrame, DataError, "no rows"),
    ],
)
def test_bad_sources_say_what_is_wrong(source: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        read_labelled(source)


def test_an_empty_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no \.csv or \.parquet"):
        read_labelled(tmp_path)


# ------------------------------------------------------------------------- judging a canary


@pytest.mark.parametrize("module", [canary_module, benefit_module])
def test_docstring_examples_run(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0


def test_auroc_standard_error_shrinks_with_labels() -> None:
    assert auroc_standard_error(0.85, 1000, 3000) < auroc_standard_error(0.85, 100, 300)
    assert auroc_standard_error(0.85, 0, 10) == float("inf")


def test_judge_canary(served: Served) -> None:  # noqa: F811
    base = measured(served, make_reports(served, seed=31, reports=4))
    rules = AlertRules(min_labels=500)
    assert judge_canary(None, base).verdict == "insufficient"
    good = judge_canary(base, base, rules=rules, min_reports=4)
    assert good.verdict == "good"
    assert good.evidence["auroc"]["difference"] == 0.0
    assert judge_canary(base, base, rules=rules, min_reports=5).verdict == "insufficient"
    erring = replace(base, errors=rate(200, 4200))
    worse = judge_canary(erring, base, rules=rules, min_reports=1)
    assert worse.verdict == "worse"
    assert "error rate" in worse.reasons[0]
    assert base.performance is not None
    weak = replace(base, performance=replace(base.performance, auroc=base.performance.auroc - 0.1))
    worse = judge_canary(weak, base, rules=rules, min_reports=1)
    assert worse.verdict == "worse"
    assert "AUROC" in worse.reasons[0]
    # Within noise of the stable cohort: not worse.
    close = replace(
        base, performance=replace(base.performance, auroc=base.performance.auroc - 0.025)
    )
    assert judge_canary(close, base, rules=rules, min_reports=1).verdict == "good"
    # A canary whose inputs do not look like its training data, where stable's do.
    drifted = measured(served, make_reports(served, scenario="price_increase", seed=32))
    worse = judge_canary(drifted, base, rules=rules, min_reports=1)
    assert worse.verdict == "worse"
    assert any("inputs drift" in reason for reason in worse.reasons)


# ------------------------------------------------------------------------- end to end


@dataclass
class Published:
    home: Path
    key: Ed25519PrivateKey
    key_path: Path
    trusted: tuple[TrustedKey, ...]
    store: MonitorStore
    url: str
    fleet: str
    running: Manifest


@pytest.fixture
def published(
    tmp_path: Path,
    trained: Callable[[str], TrainedModel],
    keypair: tuple[Path, Path],
    broker: MosquittoBroker,
    unique: str,
) -> Published:
    """A home with churn 1.0.0 (logreg on no-drift data) published stable to a fresh fleet."""
    home = tmp_path / "home"
    key = load_private_key(keypair[0])
    version = Registry(home).register(trained("logreg"), data_sha256="0" * 64)
    bundle = export_bundle(version, ["onnx"], home / "bundles" / "churn-1.0.0", key).bundle
    publish(bundle, unique, broker.address, key, state_file=state_file_for(home, unique))
    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    return Published(
        home=home,
        key=key,
        key_path=keypair[0],
        trusted=(load_public_key(keypair[1]),),
        store=MonitorStore(url),
        url=url,
        fleet=unique,
        running=Manifest.from_bytes((bundle / "manifest.json").read_bytes()),
    )


def actions(published: Published) -> list[str]:
    return [d.action for d in published.store.decisions(published.fleet)]


@pytest.fixture
def feeding() -> Iterator[Callable[[Simulation], None]]:
    """Runs a simulation's feed in the background until the test ends."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(sim: Simulation) -> None:
        thread = threading.Thread(
            target=sim.run_for, args=(600.0,), kwargs={"step": 0.5, "until": stop.is_set}
        )
        thread.start()
        threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=10)


def test_drift_alert_retrain_canary_promote(
    published: Published,
    broker: MosquittoBroker,
    tmp_path: Path,
    feeding: Callable[[Simulation], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Concept drift: long-tenure fiber customers now churn. Only labels show it (a
    # calibration alert), and a model retrained on the newest rows is better with confidence.
    data = tmp_path / "labelled"
    write_table(generate(4000, seed=11, scenario="competitor_offer").frame, data / "week-1.csv")
    config = SimulationConfig(
        fleet=published.fleet,
        devices=10,
        broker=broker.address,
        trusted_keys=published.trusted,
        state_root=tmp_path / "devices",
        scenario="competitor_offer",
        drift_share=1.0,
        drift_at=0.0,
        records_per_second=40.0,
        label_share=0.5,
        report_seconds=1.0,
        groups=2,
        seed=1,
    )
    loop = RetrainLoop(
        published.fleet,
        published.home,
        published.store,
        broker.address,
        published.key,
        data,
        canary_percent=50,
        canary_windows=2,
        max_canary_windows=10,
        min_canary_reports=4,
        window_seconds=3.0,
        rules=AlertRules(min_labels=200),
    )
    with (
        Monitor(published.fleet, broker.address, published.store),
        Simulation(config) as sim,
    ):
        wait_for(lambda: sim.models() == {"1.0.0": 10}, 30, "every device on 1.0.0")
        feeding(sim)
        time.sleep(loop.window_seconds)

        # (a)-(d): the drifted window raises alerts; retrain, compare, export, canary.
        result = loop.step()
        assert result.action == "canary", result.message
        assert result.model_version == "1.1.0"
        assert actions(published) == ["check", "retrained", "accepted", "canary"]
        state = rollout_status(published.fleet, broker.address, list(published.trusted))
        assert state is not None
        assert state.canary is not None
        assert (state.canary.version, state.canary_percent) == ("1.1.0", 50)
        assert set(state.canary.artifacts) == set(DEFAULT_FORMATS)

        # The canary cohort runs the candidate, the rest stays on stable.
        def cohorts_settled() -> bool:
            statuses = [a.status() for a in sim.agents]
            return all(
                s["model_version"] == ("1.1.0" if s["cohort"] == "canary" else "1.0.0")
                and s["rollout_sequence"] == state.sequence
                for s in statuses
            )

        wait_for(cohorts_settled, 30, "canary devices on 1.1.0, the others on 1.0.0")
        canary_devices = sum(1 for a in sim.agents if a.status()["cohort"] == "canary")
        assert 0 < sim.models().get("1.1.0", 0) == canary_devices

        # (e): judged window after window until promoted.
        deadline = time.monotonic() + 45
        while True:
            time.sleep(loop.window_seconds / 2)
            result = loop.step()
            if result.action != "wait" or time.monotonic() > deadline:
                break
        assert result.action == "promoted", result.message
        wait_for(lambda: sim.models() == {"1.1.0": 10}, 30, "every device on 1.1.0")

    decisions = published.store.decisions(published.fleet)
    assert [d.action for d in decisions] == ["check", "retrained", "accepted", "canary", "promoted"]
    check, retrained, accepted, canary, promoted = decisions
    assert check.model_version == "1.0.0"
    assert "calibration_gap" in {a["rule"] for a in check.evidence["alerts"]}
    assert retrained.evidence["rows"] == 3000  # a quarter held out for the comparison
    assert retrained.evidence["family"] == "logreg"
    assert retrained.evidence["window"]["chosen"] == "newest"  # no reference data given
    assert accepted.evidence["rows"] == 1000
    benefit = accepted.evidence["benefit"]
    assert benefit["metric"] == "auroc"
    assert benefit["gain"]["low"] > 0  # better with confidence, not merely "no worse"
    assert accepted.evidence["candidate"]["auroc"] > accepted.evidence["running"]["auroc"]
    for fmt in DEFAULT_FORMATS:
        assert canary.evidence["formats"][fmt]["max_abs_diff"] <= canary.evidence["tolerance"]
    evidence = promoted.evidence
    assert evidence["canary"]["model_version"] == "1.1.0"
    assert evidence["stable"]["model_version"] == "1.0.0"
    assert evidence["canary"]["reports"] >= 4
    assert evidence["windows"] >= 2
    # On the devices' own labelled reports, the old model under-predicts churn (the
    # calibration alert) and the new one does not. The old model is measured on everything
    # it scored in the drifted run (the judged window may hold few stable labels).
    assert evidence["max_feature_js"]["canary"] < 0.1
    stable_run = published.store.aggregate(published.fleet, model_version="1.0.0")
    canary_run = published.store.aggregate(published.fleet, model_version="1.1.0")
    assert stable_run is not None
    assert canary_run is not None
    old = loop.measure(stable_run, state.stable).performance
    new = loop.measure(canary_run, state.canary).performance
    assert old is not None
    assert new is not None
    assert abs(new.calibration_gap) < abs(old.calibration_gap) - 0.05
    # The alerts about the replaced model were answered.
    assert published.store.alerts(published.fleet, open_only=True) == []
    assert published.store.alerts(published.fleet)

    assert main(["decisions", "--fleet", published.fleet, "--db", published.url, "--brief"]) == 0
    out = capsys.readouterr().out
    assert "promoted      1.1.0" in out
    assert main(["decisions", "--fleet", published.fleet, "--db", published.url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[-1]["evidence"]["canary"]["model_version"] == "1.1.0"


def shuffled_labels() -> pd.DataFrame:
    frame = generate(3000, seed=12, scenario="price_increase").frame
    frame["churn"] = np.random.default_rng(0).permutation(frame["churn"].to_numpy())
    return frame


def shuffled_labels_of_other_customers() -> pd.DataFrame:
    frame = generate(3000, seed=14, scenario="price_increase").frame
    frame["churn"] = np.random.default_rng(1).permutation(frame["churn"].to_numpy())
    return frame


def honest_labels() -> pd.DataFrame:
    return generate(2000, seed=13, scenario="price_increase").frame


def reports_of(
    manifest: Manifest, pipeline: Any, fleet: str, *, cohort: str, devices: int, rows: int
) -> list[tuple[str, bytes]]:
    """One report per device of ``rows`` drifted records, all labelled, as agents would."""
    items = []
    topics = Topics(fleet)
    for d in range(devices):
        device = f"{cohort}-{d}"
        frame = generate(rows, seed=100 + d, scenario="price_increase").frame
        inputs = encode_features(frame[list(manifest.schema.names)], manifest.schema)
        scores = pipeline.predict_proba(inputs)[:, 1]
        builder = SketchBuilder.from_manifest(manifest)
        builder.add(inputs, scores, 0.001)
        builder.add_outcomes(scores, (frame["churn"] == "Yes").to_numpy().astype(int))
        report = Report.from_body(
            builder.roll(),
            fleet=fleet,
            device_id=device,
            sequence=1,
            cohort="canary" if cohort == "canary" else "stable",
            device_group="default",
        )
        items.append((topics.report(device), report.encode()))
    return items


def cli(published: Published, broker: MosquittoBroker, command: str, *options: str) -> int:
    return main(
        [
            "--home",
            str(published.home),
            command,
            "--fleet",
            published.fleet,
            "--db",
            published.url,
            "--broker",
            broker.url,
            "--key",
            str(published.key_path),
            *options,
        ]
    )


def test_a_candidate_that_does_not_help_is_escalated_not_shipped(
    published: Published,
    broker: MosquittoBroker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # On demand, from the command line; the training feed's labels are garbage.
    code = cli(
        published,
        broker,
        "retrain",
        "--data",
        f"{__name__}:shuffled_labels",
        "--compare-data",
        f"{__name__}:honest_labels",
    )
    assert code == 0
    assert capsys.readouterr().out.startswith("escalated: retraining does not help 1.0.0")
    assert actions(published) == ["check", "retrained", "rejected", "escalated"]
    rejected, escalated = published.store.decisions(published.fleet)[-2:]
    assert rejected.model_version == "1.1.0"
    assert rejected.reason.startswith("churn 1.1.0 vs running 1.0.0: retraining does not help")
    assert rejected.evidence["benefit"]["gain"]["high"] < 0  # worse, with confidence
    assert rejected.evidence["candidate"]["auroc"] < 0.65
    assert rejected.evidence["running"]["auroc"] > 0.8
    assert rejected.evidence["compared_on"].endswith("honest_labels")
    state = rollout_status(published.fleet, broker.address, list(published.trusted))
    assert state is not None
    assert state.canary is None
    assert state.stable is not None
    assert state.stable.version == "1.0.0"

    # An escalation alert for a person, listed by `edgefleet alerts --open`.
    (alert,) = published.store.alerts(published.fleet, open_only=True)
    assert alert.rule == "retraining_no_benefit"
    assert alert.evidence["model_version"] == "1.0.0"
    assert alert.evidence["candidate_version"] == "1.1.0"
    assert escalated.evidence["alert_id"] == alert.id
    assert main(["alerts", "--fleet", published.fleet, "--db", published.url, "--open"]) == 0
    listed = capsys.readouterr().out
    assert f"#{alert.id} " in listed
    assert "retraining_no_benefit retraining at fleet (1.0.0): escalated to a person" in listed

    # The fleet drifts: an alert, but the same data already showed retraining does not help.
    loop = RetrainLoop(
        published.fleet,
        published.home,
        published.store,
        broker.address,
        published.key,
        shuffled_labels,
    )
    pipeline = Registry(published.home).get("1.0.0").load_pipeline()
    counts = published.store.ingest_many(
        reports_of(
            published.running, pipeline, published.fleet, cohort="stable", devices=2, rows=500
        )
    )
    assert counts.stored == 2
    step = loop.step()
    assert step.action == "held", step.message
    assert f"alert #{alert.id}" in step.message
    assert any(a.rule == "feature_drift" for a in step.alerts)
    assert actions(published) == ["check", "retrained", "rejected", "escalated"]

    # New labelled data: the loop tries again (and, on these labels, escalates again).
    loop.data_source = shuffled_labels_of_other_customers
    step = loop.step()
    assert step.action == "escalated", step.message
    assert actions(published)[-4:] == ["check", "retrained", "rejected", "escalated"]
    assert published.store.decisions(published.fleet)[-3].model_version == "1.2.0"


def test_a_canary_worse_in_the_field_is_rolled_back(
    published: Published,
    broker: MosquittoBroker,
) -> None:
    # A minimum gain that lets anything through: the canary's own reports must stop it.
    loop = RetrainLoop(
        published.fleet,
        published.home,
        published.store,
        broker.address,
        published.key,
        shuffled_labels,
        compare_source=honest_labels,
        min_gain=-0.99,
        formats=["onnx"],
        canary_percent=30,
        window_seconds=30.0,
        rules=AlertRules(min_labels=500),
    )
    assert loop.run(force=True).action == "canary"
    assert loop.evaluate_canary().action == "wait"  # no canary report yet
    candidate = Registry(published.home).get("1.1.0")
    old = Registry(published.home).get("1.0.0")
    canary_manifest = Manifest.from_bytes(
        (published.home / "bundles" / "churn-1.1.0" / "manifest.json").read_bytes()
    )
    items = reports_of(
        canary_manifest,
        candidate.load_pipeline(),
        published.fleet,
        cohort="canary",
        devices=3,
        rows=400,
    ) + reports_of(
        published.running,
        old.load_pipeline(),
        published.fleet,
        cohort="stable",
        devices=3,
        rows=400,
    )
    assert published.store.ingest_many(items).stored == 6

    result = loop.evaluate_canary()
    assert result.action == "rolled_back", result.message
    assert actions(published) == ["check", "retrained", "accepted", "canary", "rolled_back"]
    rolled = published.store.decisions(published.fleet)[-1]
    auroc = rolled.evidence["auroc"]
    assert auroc["canary"] < 0.65 < 0.8 < auroc["stable"]
    assert auroc["difference"] > 2 * auroc["standard_error"]
    state = rollout_status(published.fleet, broker.address, list(published.trusted))
    assert state is not None
    assert state.canary is None
    assert state.rollback
    assert state.stable is not None
    assert state.stable.version == "1.0.0"


def test_watch_runs_window_after_window(
    published: Published,
    broker: MosquittoBroker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = f"{__name__}:honest_labels"
    code = cli(published, broker, "watch", "--data", data, "--window", "0.2", "--steps", "2")
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert all("none: no reports of 1.0.0 in the window" in line for line in lines)
    assert actions(published) == []

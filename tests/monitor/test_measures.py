"""Measures on aggregates of real reports: devices' sketches (SketchBuilder over a real
manifest's reference profile) of generated data, merged, and measured against the manifest.
AUROC and AP from the merged labelled histograms are checked against scikit-learn's exact
values on the raw rows behind them."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import encode_features
from edgefleet.central.export import export_bundle
from edgefleet.central.monitor.drift import DriftDetector
from edgefleet.central.monitor.measures import (
    Measures,
    labelled_performance,
    measure,
    scopes,
)
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.registry import Registry
from edgefleet.central.trainer import TrainedModel
from edgefleet.edge.aggregate import merge_all
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.report import Report
from edgefleet.edge.signing import load_private_key
from edgefleet.edge.sketch import LATENCY_RELATIVE_ERROR
from edgefleet.edge.sketch_builder import SketchBuilder
from edgefleet.edge.topics import Topics
from edgefleet.errors import InputError

FLEET = "measured"


@dataclass(frozen=True)
class Served:
    """A manifest as devices get it, and the pipeline that scores for them."""

    manifest: Manifest
    model: TrainedModel


@pytest.fixture(scope="module")
def served(
    trained: Callable[[str], TrainedModel],
    keypair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Served:
    home = tmp_path_factory.mktemp("measures-home")
    model = trained("logreg")
    version = Registry(home).register(model, data_sha256="0" * 64)
    result = export_bundle(version, ["onnx"], home / "bundle", load_private_key(keypair[0]))
    manifest = Manifest.from_bytes((result.bundle / "manifest.json").read_bytes())
    return Served(manifest, model)


@dataclass
class Fleet:
    """Reports of simulated devices and the raw rows behind their labelled outcomes."""

    reports: list[Report] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    failed: int = 0
    latencies: list[float] = field(default_factory=list)


def make_reports(
    served: Served,
    *,
    scenario: str = "none",
    reports: int = 4,
    rows: int = 1000,
    seed: int = 0,
    label_share: float = 0.5,
    devices: int = 2,
    groups: int = 2,
    failed_per_report: int = 0,
    fleet: Fleet | None = None,
    start: float = 1_700_000_000.0,
) -> Fleet:
    """``reports`` reports of ``rows`` rows each, round-robin over ``devices`` devices; each
    report is a SketchBuilder window of its own, as an agent would send it."""
    fleet = fleet if fleet is not None else Fleet()
    rng = np.random.default_rng(seed)
    manifest, pipeline = served.manifest, served.model.pipeline
    clock = iter(start + 10.0 * k for k in range(10 * reports + 10))
    builder = SketchBuilder.from_manifest(manifest, clock=lambda: next(clock))
    sequences: dict[str, int] = {}
    for k in range(reports):
        data = generate(rows, seed=seed * 1000 + k, scenario=scenario).frame
        inputs = encode_features(data[list(manifest.schema.names)], manifest.schema)
        scores = pipeline.predict_proba(inputs)[:, 1]
        labels = (data["churn"] == "Yes").to_numpy().astype(int)
        # A few calls per report, each timed, as an agent scores in batches.
        for batch in np.array_split(np.arange(rows), 10):
            latency = float(rng.uniform(0.0005, 0.004))
            fleet.latencies.append(latency)
            builder.add(inputs[batch], scores[batch], latency)
        builder.add(np.zeros((0, inputs.shape[1])), np.zeros(0), None, n_failed=failed_per_report)
        fleet.failed += failed_per_report
        chosen = rng.random(rows) < label_share
        builder.add_outcomes(scores[chosen], labels[chosen])
        fleet.labels.extend(labels[chosen].tolist())
        fleet.scores.extend(scores[chosen].tolist())
        device = f"dev-{k % devices}"
        sequences[device] = sequences.get(device, 0) + 1
        fleet.reports.append(
            Report.from_body(
                builder.roll(),
                fleet=FLEET,
                device_id=device,
                sequence=sequences[device] + 100 * seed,
                cohort="canary" if k % devices == 0 else "stable",
                device_group=f"group-{k % groups}",
            )
        )
    return fleet


def measured(served: Served, fleet: Fleet, **options: Any) -> Measures:
    return measure(merge_all(fleet.reports), served.manifest, **options)


def test_no_drift_measures_flag_nothing(served: Served) -> None:
    fleet = make_reports(served, scenario="none", seed=1)
    measures = measured(served, fleet)
    assert (measures.reports, measures.devices, measures.scored) == (4, 2, 4000)
    assert [f.verdict for f in measures.features] == ["no_drift"] * len(measures.features)
    assert measures.score is not None
    assert measures.score.verdict == "no_drift"
    assert measures.performance is not None
    # Healthy data: the live AUROC is near the holdout's, the expected one near its baseline.
    assert abs(measures.performance.auroc - measures.reference_auroc) < 0.05
    assert measures.expected is not None
    assert measures.reference_expected is not None
    assert abs(measures.expected.auroc - measures.reference_expected.auroc) < 0.03
    # The holdout's own histograms: its binned AUROC is the manifest's within the bound,
    # and the live calibration matches the holdout's.
    reference = measures.reference_performance
    assert reference is not None
    assert abs(reference.auroc - measures.reference_auroc) <= reference.auroc_bound
    assert abs(measures.performance.calibration_gap - reference.calibration_gap) < 0.03


def test_price_increase_flags_the_charges_and_the_scores(served: Served) -> None:
    fleet = make_reports(served, scenario="price_increase", seed=2)
    measures = measured(served, fleet)
    drifted = {f.feature for f in measures.drifted_features}
    # total_charges (tenure x price) sits near the threshold, JS about 0.1.
    assert "monthly_charges" in drifted
    assert drifted <= {"monthly_charges", "total_charges"}
    assert measures.feature("monthly_charges").js > 0.2
    # Charges drive churn, so the model's scores move with them, far more than by chance.
    none = measured(served, make_reports(served, scenario="none", seed=2))
    assert measures.score is not None
    assert none.score is not None
    assert measures.score.js > 2 * none.score.js


def test_new_segment_is_drift_of_the_unknown_category(served: Served) -> None:
    measures = measured(served, make_reports(served, scenario="new_segment", seed=3))
    device = measures.feature("device_type")
    assert device.drifted
    assert device.extra.reference == 0.0
    assert device.extra.current == pytest.approx(0.25, abs=0.03)


def test_auroc_and_ap_of_merged_histograms_match_the_raw_rows(served: Served) -> None:
    fleet = make_reports(served, scenario="none", seed=4, reports=6, devices=3)
    measures = measured(served, fleet)
    performance = measures.performance
    assert performance is not None
    labels, scores = np.array(fleet.labels), np.array(fleet.scores)
    assert (performance.labelled, performance.positives) == (len(labels), labels.sum())
    exact_auroc = roc_auc_score(labels, scores)
    exact_ap = average_precision_score(labels, scores)
    # The documented guarantees, and how tight they are in practice on 100 score bins.
    assert abs(performance.auroc - exact_auroc) <= performance.auroc_bound
    assert performance.auroc_bound < 0.01
    assert performance.average_precision_low <= exact_ap <= performance.average_precision_high
    assert abs(performance.average_precision - exact_ap) < 0.01


def test_errors_latency_and_counts(served: Served) -> None:
    fleet = make_reports(served, seed=5, reports=3, rows=500, failed_per_report=20)
    measures = measured(served, fleet)
    assert (measures.failed, measures.scored) == (60, 1500)
    assert measures.errors.value == pytest.approx(60 / 1560)
    assert measures.errors.low < measures.errors.value < measures.errors.high
    assert measures.latency.calls == len(fleet.latencies)
    for q, value in ((0.5, measures.latency.p50_ms), (0.95, measures.latency.p95_ms)):
        exact = sorted(fleet.latencies)[math.floor(q * (len(fleet.latencies) - 1))] * 1000
        assert abs(value - exact) <= LATENCY_RELATIVE_ERROR * exact + 1e-9


def test_min_count_turns_small_windows_into_no_verdict(served: Served) -> None:
    fleet = make_reports(served, scenario="price_increase", seed=6, reports=1, rows=300)
    measures = measured(served, fleet, detector=DriftDetector(min_count=500))
    assert {f.verdict for f in measures.features} == {"insufficient_data"}
    assert measures.drifted_features == ()
    # Fewer labels than the floor: no AUROC rather than a noisy one.
    assert measured(served, fleet, min_labels=1000).performance is None


def test_to_dict_is_json(served: Served) -> None:
    fleet = make_reports(served, seed=7, reports=1, rows=200, label_share=0.0)
    measures = measured(served, fleet)
    assert measures.performance is None  # no labels came back
    data = measures.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["features"][0]["feature"] == "tenure_months"
    assert data["performance"] is None
    json.dumps(measures.summary(), allow_nan=False)


def test_measure_refuses_another_models_aggregate(served: Served) -> None:
    fleet = make_reports(served, seed=8, reports=1, rows=100)
    aggregate = merge_all(fleet.reports)
    other = replace(aggregate, model_version="9.9.9")
    with pytest.raises(InputError, match=r"9\.9\.9"):
        measure(other, served.manifest)


def test_labelled_performance_needs_both_classes() -> None:
    assert labelled_performance([0, 500], [0, 0]) is None
    assert labelled_performance([10, 0], [0, 10], min_labels=100) is None
    result = labelled_performance([60, 0], [0, 60], min_labels=100)
    assert result is not None
    assert (result.auroc, result.auroc_bound) == (1.0, 0.0)


def test_scopes_from_the_store_add_up(served: Served, tmp_path: Path) -> None:
    fleet = make_reports(served, seed=9, reports=6, rows=300, devices=3, groups=2)
    store = MonitorStore(f"sqlite:///{tmp_path / 'monitor.db'}")
    topics = Topics(FLEET)
    store.ingest_many([(topics.report(r.device_id), r.encode()) for r in fleet.reports])
    found = dict(scopes(store, FLEET, served.manifest.version))
    assert set(found) == {
        "fleet",
        "cohort:canary",
        "cohort:stable",
        "group:group-0",
        "group:group-1",
        "device:dev-0",
        "device:dev-1",
        "device:dev-2",
    }
    assert found["fleet"].scored == 1800
    # Every level partitions the fleet: its parts add up to the whole.
    for level in ("cohort", "group", "device"):
        parts = [a for scope, a in found.items() if scope.startswith(level + ":")]
        assert sum(a.scored for a in parts) == 1800
        assert sum(a.reports for a in parts) == 6
    device = measure(found["device:dev-1"], served.manifest)
    assert (device.reports, device.devices) == (2, 1)
    only = dict(scopes(store, FLEET, served.manifest.version, levels=("fleet",)))
    assert list(only) == ["fleet"]
    assert list(scopes(store, FLEET, "7.7.7")) == []
    with pytest.raises(InputError, match="planet"):
        list(scopes(store, FLEET, served.manifest.version, levels=("planet",)))

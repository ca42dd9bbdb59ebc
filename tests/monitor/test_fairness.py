"""Fairness from aggregates: segment features marked in the schema, per-level histograms in
version 2 reports (through the wire, the store and its checks), and the measures computed
from them agreeing with fairlearn's MetricFrame on the very same rows."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import encode_features, load_training_table
from edgefleet.central.export import export_bundle
from edgefleet.central.monitor.alerts import AlertRules, describe, evaluate
from edgefleet.central.monitor.fairness import FeatureFairness, fairness_of, threshold_bin
from edgefleet.central.monitor.ingest import Monitor
from edgefleet.central.monitor.measures import measure
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.monitor.validation import (
    CachedProfiles,
    VersionProfile,
    layout_of,
    profiles_of_registry,
)
from edgefleet.central.publish import publish
from edgefleet.central.registry import Registry
from edgefleet.central.trainer import TrainedModel, train
from edgefleet.edge.aggregate import merge_all
from edgefleet.edge.report import SCHEMA_VERSION, SEGMENTS_VERSION, Report
from edgefleet.edge.schema import FeatureSchema
from edgefleet.edge.signing import load_private_key
from edgefleet.edge.sketch_builder import SketchBuilder
from edgefleet.edge.topics import Topics
from edgefleet.errors import InputError
from edgefleet.web.app import create_app
from edgefleet.web.server import dashboard_server
from tests.fleet.kit import agent_config, running, wait_for

SEGMENTS = ("senior_citizen", "region")


@dataclass(frozen=True)
class Scored:
    schema: FeatureSchema
    model: TrainedModel
    frame: pd.DataFrame
    scores: np.ndarray
    labels: np.ndarray
    reports: list[Report]


@pytest.fixture(scope="module")
def scored() -> Scored:
    """A model trained on a schema with segments; 6000 rows scored on three devices, every
    label back, as agents count them."""
    data = generate(4000, seed=61)
    schema = replace(data.schema, segments=SEGMENTS)
    model = train(load_training_table(data.frame, "churn", schema=schema), "logreg", seed=0)
    frame = generate(6000, seed=62, scenario="network_outage").frame
    inputs = encode_features(frame[list(schema.names)], schema)
    scores = model.pipeline.predict_proba(inputs)[:, 1]
    labels = (frame["churn"] == "Yes").to_numpy().astype(int)
    reports = []
    for device, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        builder = SketchBuilder(schema, model.reference, model_name="churn", model_version="1.0.0")
        builder.add(inputs[rows], scores[rows], 0.001)
        builder.add_outcomes(scores[rows], labels[rows], builder.segment_levels(inputs[rows]))
        report = Report.from_body(
            builder.roll(),
            fleet="shops",
            device_id=f"pos-{device}",
            sequence=1,
            cohort="stable",
            device_group="default",
        )
        reports.append(Report.decode(report.encode()))  # through the wire format
    return Scored(schema, model, frame, scores, labels, reports)


def by_feature(found: tuple[FeatureFairness, ...]) -> dict[str, FeatureFairness]:
    return {f.feature: f for f in found}


def test_the_schema_marks_segments_and_keeps_its_old_form_without() -> None:
    schema = generate(10, seed=1).schema
    assert "segments" not in schema.to_dict()  # old manifests read and hash as before
    marked = replace(schema, segments=SEGMENTS)
    assert FeatureSchema.from_dict(marked.to_dict()) == marked
    with pytest.raises(InputError, match="not a feature"):
        replace(schema, segments=("shoe_size",))
    with pytest.raises(InputError, match="at most 16 whole values"):
        replace(schema, segments=("monthly_charges",))


def test_reports_carry_segments_as_version_2(scored: Scored) -> None:
    report = scored.reports[0]
    assert report.schema_version == SEGMENTS_VERSION
    assert [s.feature for s in report.segments] == list(SEGMENTS)
    assert [s.levels for s in report.segments] == [3, 6]  # 0, 1, other; 5 regions, unknown
    # A model without segments still reports version 1, which older monitors read.
    plain = SketchBuilder(
        replace(scored.schema, segments=()),
        scored.model.reference,
        model_name="churn",
        model_version="1.0.0",
    )
    body = plain.roll()
    old = Report.from_body(
        body, fleet="shops", device_id="pos-9", sequence=1, cohort="stable", device_group="g"
    )
    assert old.schema_version == SCHEMA_VERSION
    assert "segments" not in old.to_dict()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: raw.update(schema_version=1), "unknown field|not expected|segments"),
        (lambda raw: raw.pop("segments"), "segments"),
        (lambda raw: raw["segments"][0]["scores"][0].__setitem__(0, 10**6), "partition"),
        (lambda raw: raw["segments"][1]["positives"][2].__setitem__(99, 10**6), "more outcomes"),
        (lambda raw: raw["segments"][0]["negatives"].append([0] * 99), "100 counts"),
        (lambda raw: raw.update(schema_version=5), "not one of 1, 2, 3, 4"),
    ],
)
def test_a_bad_segment_is_refused(
    scored: Scored, mutate: Callable[[dict[str, object]], None], message: str
) -> None:
    raw = scored.reports[0].to_dict()
    mutate(raw)
    with pytest.raises(InputError, match=message):
        Report.from_dict(raw)


def test_the_version_profile_holds_the_segment_layout(scored: Scored) -> None:
    profile = VersionProfile.of(scored.schema, scored.model.reference, "churn", "1.0.0")
    raw = scored.reports[0].to_dict()
    profile.check(layout_of(raw), raw["window_end"], raw["window_end"])
    other = VersionProfile.of(
        replace(scored.schema, segments=("region",)), scored.model.reference, "churn", "1.0.0"
    )
    with pytest.raises(InputError):
        other.check(layout_of(raw), raw["window_end"], raw["window_end"])


def test_the_store_merges_segments(scored: Scored, tmp_path: Path) -> None:
    store = MonitorStore(f"sqlite:///{tmp_path / 'monitor.db'}")
    topics = Topics("shops")
    items = [(topics.report(r.device_id), r.encode()) for r in scored.reports]
    assert store.ingest_many(items).stored == 3
    aggregate = store.aggregate("shops", model_version="1.0.0")
    assert aggregate is not None
    assert aggregate.segments == merge_all(scored.reports).segments
    assert sum(aggregate.segments[1].score_totals()) == len(scored.frame)


def test_fairness_agrees_with_fairlearn_on_the_same_rows(scored: Scored) -> None:
    found = by_feature(fairness_of(merge_all(scored.reports), scored.schema, min_count=1))
    predicted = (scored.scores >= 0.5).astype(int)
    for feature in SEGMENTS:
        groups = scored.frame[feature].astype(str).str.replace(r"\.0$", "", regex=True)
        frame = MetricFrame(
            metrics={
                "selection_rate": selection_rate,
                "tpr": true_positive_rate,
                "fpr": false_positive_rate,
            },
            y_true=scored.labels,
            y_pred=predicted,
            sensitive_features=groups,
        )
        ours = {m.level: m for m in found[feature].levels if m.scored}
        assert set(ours) == set(frame.by_group.index)
        for level, row in frame.by_group.iterrows():
            assert ours[level].positive_rate == pytest.approx(row["selection_rate"], abs=0.01)
            assert ours[level].tpr == pytest.approx(row["tpr"], abs=0.01)
            assert ours[level].fpr == pytest.approx(row["fpr"], abs=0.01)
            rows = (groups == level).to_numpy()
            exact_gap = scored.labels[rows].mean() - scored.scores[rows].mean()
            assert ours[level].calibration_gap == pytest.approx(exact_gap, abs=0.01)
        dp = demographic_parity_difference(scored.labels, predicted, sensitive_features=groups)
        eo = equalized_odds_difference(scored.labels, predicted, sensitive_features=groups)
        assert found[feature].demographic_parity_difference == pytest.approx(dp, abs=0.01)
        assert found[feature].equalized_odds_difference == pytest.approx(eo, abs=0.01)


def test_fairness_alerts_fire_on_their_thresholds(scored: Scored, tmp_path: Path) -> None:
    aggregate = merge_all(scored.reports)
    manifest = Registry(tmp_path).register(scored.model, data_sha256="0" * 64).manifest()
    measures = measure(aggregate, manifest)
    fairness = by_feature(measures.fairness)
    dp = fairness["senior_citizen"].demographic_parity_difference
    assert dp > 0.05  # seniors churn more, and the model says so
    strict = AlertRules(fairness_dp_difference=dp - 0.01, fairness_eo_difference=1.0)
    loose = AlertRules(fairness_dp_difference=dp + 0.01, fairness_eo_difference=1.0)
    fired = [a for a in evaluate(measures, "fleet", strict) if a.rule == "demographic_parity"]
    alert = next(a for a in fired if a.subject == "senior_citizen")
    assert alert.value == pytest.approx(dp)
    assert len(alert.evidence["levels"]) == 3
    assert "positive rate differs by" in describe(alert)
    assert not [a for a in evaluate(measures, "fleet", loose) if a.subject == "senior_citizen"]


def test_thresholds_must_be_bin_edges() -> None:
    assert threshold_bin(0.5) == 50
    with pytest.raises(InputError, match=r"multiple of 0\.01"):
        threshold_bin(0.505)


def test_a_real_agent_reports_segments_that_a_checking_monitor_stores(
    scored: Scored, broker: MosquittoBroker, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    """The agent remembers each prediction's segment levels and counts the outcome in them;
    the monitor checks the version 2 report against the version's profile and stores it."""
    home = tmp_path / "home"
    key = load_private_key(keypair[0])
    version = Registry(home).register(scored.model, data_sha256="0" * 64)
    bundle = export_bundle(version, ["onnx"], home / "bundles" / "churn-1.0.0", key).bundle
    fleet = f"seg{uuid.uuid4().hex[:8]}"
    publish(bundle, fleet, broker.address, key, state_file=tmp_path / "rollout.json")
    store = MonitorStore(f"sqlite:///{tmp_path / 'monitor.db'}")
    profiles = CachedProfiles(profiles_of_registry(Registry(home).versions))
    records = scored.frame.drop(columns=["churn"]).head(40)
    rows = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        for r in records.to_dict("records")
    ]
    with (
        Monitor(fleet, broker.address, store, known_version=profiles),
        running(agent_config(broker, keypair, fleet, "dev-1", tmp_path / "dev-1")) as agent,
    ):
        wait_for(lambda: agent.model is not None, what="the model with segments")
        predictions = agent.score(rows)
        for prediction, label in zip(predictions, scored.frame["churn"].head(40), strict=True):
            agent.outcome(prediction.id, label)
        assert agent.close_window() == 1
        wait_for(lambda: store.report_count(fleet) == 1, what="the report, stored")
    assert store.quarantine_count(fleet) == 0
    aggregate = store.aggregate(fleet, model_version="1.0.0")
    assert aggregate is not None
    senior = by_feature(fairness_of(aggregate, scored.schema, min_count=1))["senior_citizen"]
    assert sum(level.scored for level in senior.levels) == 40
    assert sum(level.labelled for level in senior.levels) == 40
    expected = scored.frame["senior_citizen"].head(40).value_counts()
    assert {m.level: m.labelled for m in senior.levels if m.labelled} == {
        str(int(k)): int(v) for k, v in expected.items()
    }

    # The dashboard's drift page shows the segments' measures.
    app = create_app({"home": home, "db": store.url, "broker": broker.address})
    server = dashboard_server(app, "127.0.0.1", 0).start()
    try:
        with urllib.request.urlopen(f"{server.url}/fleets/{fleet}/drift", timeout=60) as page:
            html = page.read().decode()
    finally:
        server.stop()
    assert "Fairness across segments" in html
    assert "senior_citizen: demographic-parity difference" in html


def test_train_marks_segments_from_the_command_line(tmp_path: Path) -> None:
    from edgefleet.central.data.loader import write_table
    from edgefleet.cli.main import main

    write_table(generate(2000, seed=63).frame, tmp_path / "churn.csv")
    home = str(tmp_path / "home")
    base = ["--home", home, "train", "--data", str(tmp_path / "churn.csv"), "--target", "churn"]
    assert (
        main([*base, "--model", "logreg", "--segment", "senior_citizen", "--segment", "region"])
        == 0
    )
    schema = Registry(home).get("latest").manifest().schema
    assert schema.segments == SEGMENTS
    # Inferred without bounds, a 0/1 flag gets them from its values.
    assert schema.feature("senior_citizen").maximum == 1.0
    assert main([*base, "--segment", "monthly_charges"]) != 0

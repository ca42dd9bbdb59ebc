"""Alert rules: defaults, TOML files, what a healthy and a drifted fleet raise, the evidence
each alert carries, and ``edgefleet alerts``."""

from __future__ import annotations

import doctest
import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgefleet.central.monitor import alerts as alerts_module
from edgefleet.central.monitor.alerts import (
    EXAMPLE_FILE,
    RETRAIN_RULES,
    RULES,
    AlertRules,
    describe,
    evaluate,
    evaluate_all,
)
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.cli.main import main
from edgefleet.errors import InputError
from tests.monitor.test_measures import Served, make_reports, measured, served  # noqa: F401

NOW = 1_800_000_000.0


def test_docstring_examples_run() -> None:
    result = doctest.testmod(alerts_module)
    assert result.attempted > 0
    assert result.failed == 0


def test_defaults_are_effect_sizes_with_minimum_counts() -> None:
    rules = AlertRules()
    assert (rules.feature_js, rules.feature_psi, rules.feature_min_count) == (0.1, 0.2, 500)
    assert (rules.score_js, rules.score_psi, rules.score_min_count) == (0.1, 0.2, 500)
    assert (rules.auroc_drop, rules.calibration_gap, rules.min_labels) == (0.05, 0.05, 1000)
    assert rules.expected_auroc_drop == 0.05
    assert (rules.max_error_rate, rules.error_min_records) == (0.02, 200)
    assert (rules.latency_p95_ms, rules.latency_min_calls) == (100.0, 100)
    assert rules.levels == ("fleet", "cohort", "group", "device")
    assert set(RULES) > RETRAIN_RULES


def test_the_example_file_spells_out_the_defaults() -> None:
    assert AlertRules.from_toml(EXAMPLE_FILE) == AlertRules()
    assert AlertRules.from_dict(AlertRules().to_dict()) == AlertRules()


def test_a_toml_file_overrides_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        "[feature_drift]\njs = 0.15\nmin_count = 2000\n"
        "[errors]\nmax_rate = 0.05\n"
        '[scopes]\nlevels = ["fleet", "group"]\n'
    )
    rules = AlertRules.from_toml(path)
    assert (rules.feature_js, rules.feature_min_count, rules.max_error_rate) == (0.15, 2000, 0.05)
    assert rules.feature_psi == 0.2  # untouched keys keep their defaults
    assert rules.levels == ("fleet", "group")
    assert rules.feature_detector().js_threshold == 0.15


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[feature_drift]\njss = 0.1\n", "unknown setting feature_drift.jss"),
        ("[feature_drift]\njs = 0\n", "feature_js must be a finite number > 0"),
        ("[feature_drift]\njs = 1.5\n", "feature_js is at most 1"),
        ("[feature_drift]\nmin_count = 0.5\n", "feature_min_count must be a whole number"),
        ('[errors]\nmax_rate = "high"\n', "max_error_rate must be a number"),
        ('[scopes]\nlevels = ["planet"]\n', "choose among fleet"),
        ("feature_drift = 3\n", "must be a table"),
        ("[feature_drift\n", "not a valid TOML file"),
    ],
)
def test_bad_rules_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as caught:
        AlertRules.from_toml(path)
    assert str(path) in str(caught.value)


def test_a_missing_rules_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such alert rules file"):
        AlertRules.from_toml(tmp_path / "absent.toml")


def test_a_healthy_fleet_raises_nothing(served: Served) -> None:  # noqa: F811
    measures = measured(served, make_reports(served, scenario="none", seed=21, reports=6))
    assert evaluate(measures, "fleet", AlertRules(min_labels=500)) == []


def test_drift_alerts_carry_their_numbers(served: Served) -> None:  # noqa: F811
    fleet = make_reports(served, scenario="price_increase", seed=22)
    measures = measured(served, fleet)
    raised = evaluate(measures, "group:group-1", AlertRules(), now=NOW)
    by_subject = {a.subject: a for a in raised if a.rule == "feature_drift"}
    assert "monthly_charges" in by_subject
    alert = by_subject["monthly_charges"]
    drift = measures.feature("monthly_charges")
    assert alert.id is None
    assert (alert.fleet, alert.scope, alert.created, alert.status) == (
        "measured",
        "group:group-1",
        NOW,
        "open",
    )
    assert (alert.value, alert.threshold) == (drift.js, 0.1)
    evidence = alert.evidence
    assert (evidence["js"], evidence["psi"], evidence["statistic"]) == (drift.js, drift.psi, "js")
    assert evidence["current_n"] == 4000
    assert evidence["model_version"] == served.manifest.version
    json.dumps(dict(evidence), allow_nan=False)
    assert "monthly_charges at group:group-1" in describe(alert)
    # Raising the bar past the measured effect silences it: thresholds, not verdicts.
    quiet = AlertRules(feature_js=0.9, feature_psi=5.0, score_js=0.9, score_psi=5.0)
    assert [a for a in evaluate(measures, "fleet", quiet) if a.rule == "feature_drift"] == []


def test_too_few_values_raise_no_drift_alert(served: Served) -> None:  # noqa: F811
    measures = measured(served, make_reports(served, scenario="new_segment", seed=23, reports=1))
    assert measures.feature("device_type").js > 0.3  # plain drift, on only 1000 values
    assert evaluate(measures, "fleet", AlertRules(feature_min_count=5000)) == []
    raised = evaluate(measures, "fleet", AlertRules(feature_min_count=500))
    assert ("feature_drift", "device_type") in {(a.rule, a.subject) for a in raised}


def test_concept_drift_shows_only_in_the_labels(served: Served) -> None:  # noqa: F811
    fleet = make_reports(
        served, scenario="competitor_offer", seed=24, reports=6, rows=1000, label_share=1.0
    )
    measures = measured(served, fleet)
    raised = {a.rule: a for a in evaluate(measures, "fleet", AlertRules())}
    # Inputs and scores are as before: no drift rule fires, only the label rules can.
    assert set(raised) <= {"auroc_drop", "calibration_gap"}
    calibration = raised["calibration_gap"]
    performance = measures.performance
    assert performance is not None
    # Long-tenure fiber customers now churn: far more positives than the model predicts.
    assert performance.positive_rate - performance.mean_score > 0.1
    assert calibration.value == pytest.approx(
        calibration.evidence["gap"] - calibration.evidence["reference_gap"]
    )
    assert calibration.evidence["labelled"] == 6000
    assert "predicted" in describe(calibration)
    drop = evaluate(measures, "fleet", AlertRules(auroc_drop=0.01))
    (auroc,) = [a for a in drop if a.rule == "auroc_drop"]
    assert auroc.value == pytest.approx(measures.reference_auroc - auroc.evidence["auroc"])
    assert "AUROC" in describe(auroc)
    # Too few labels to trust either: silent.
    assert evaluate(measures, "fleet", AlertRules(min_labels=10_000)) == []


def test_error_rate_alerts_only_beyond_noise(served: Served) -> None:  # noqa: F811
    failing = measured(served, make_reports(served, seed=25, reports=2, failed_per_report=60))
    (alert,) = [
        a for a in evaluate(failing, "device:dev-0", AlertRules()) if a.rule == "error_rate"
    ]
    assert alert.value == pytest.approx(120 / 2120)
    assert alert.evidence["low"] > 0.02
    assert "failed" in describe(alert)
    # 3 % of 200 records: above 2 %, but not beyond the noise of so few.
    few = measured(served, make_reports(served, seed=26, reports=1, rows=194, failed_per_report=6))
    assert few.errors.value > 0.02
    assert [a for a in evaluate(few, "fleet", AlertRules()) if a.rule == "error_rate"] == []


def test_latency_alert(served: Served) -> None:  # noqa: F811
    measures = measured(served, make_reports(served, seed=27, reports=12, rows=200))
    assert measures.latency.calls == 120
    raised = evaluate(measures, "fleet", AlertRules(latency_p95_ms=1.0))
    (alert,) = [a for a in raised if a.rule == "latency"]
    assert alert.value == measures.latency.p95_ms
    assert "p95" in describe(alert)
    assert [a for a in evaluate(measures, "fleet", AlertRules()) if a.rule == "latency"] == []


def test_evaluate_all_keeps_to_the_configured_levels(served: Served) -> None:  # noqa: F811
    measures = measured(served, make_reports(served, scenario="price_increase", seed=28))
    pairs = [("fleet", measures), ("device:dev-0", measures)]
    scopes_raised = {a.scope for a in evaluate_all(pairs, AlertRules(levels=("device",)))}
    assert scopes_raised == {"device:dev-0"}


def test_cli_lists_alerts_with_their_numbers(
    served: Served,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    store = MonitorStore(url)
    measures = measured(served, make_reports(served, scenario="price_increase", seed=29))
    raised = evaluate(measures, "fleet", AlertRules(), now=NOW)
    drift = next(a for a in raised if a.subject == "monthly_charges")
    first = store.add_alert(drift)
    store.add_alert(replace(drift, subject="total_charges", value=0.12))
    store.close_alert(first)

    assert main(["alerts", "--fleet", "measured", "--db", url]) == 0
    out = capsys.readouterr().out
    assert f"#{first} " in out
    assert "[closed] feature_drift monthly_charges at fleet" in out
    assert f"JS {drift.value:.3f}" in out
    assert "[open] feature_drift total_charges" in out

    assert main(["alerts", "--fleet", "measured", "--db", url, "--open"]) == 0
    out = capsys.readouterr().out
    assert "monthly_charges" not in out
    assert "total_charges" in out

    assert main(["alerts", "--fleet", "measured", "--db", url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [a["subject"] for a in listed] == ["monthly_charges", "total_charges"]
    assert listed[0]["evidence"]["js"] == pytest.approx(drift.value)

    assert main(["alerts", "--fleet", "other", "--db", url]) == 0
    assert "no alerts for fleet other" in capsys.readouterr().out

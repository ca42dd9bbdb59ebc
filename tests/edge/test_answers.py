"""What a device answers per task and what it takes as an outcome (edge/agent/answers.py);
the agent's real HTTP API per task is exercised by tests/fleet/test_byo_fleet.py."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.edge.agent.answers import answers, label_index, outcome_value
from edgefleet.edge.agent.counting import outcome_of, window_scores
from edgefleet.edge.schema import FeatureSchema, NumericFeature
from edgefleet.errors import InputError

FEATURES = (NumericFeature("x"),)
BINARY = FeatureSchema(FEATURES, "churn", ("No", "Yes"))
MULTI = FeatureSchema(FEATURES, "species", ("setosa", "versicolor", "virginica"), task="multiclass")
REGRESSION = FeatureSchema(FEATURES, "progression", (), task="regression")


def test_binary_answers_keep_their_form() -> None:
    outputs = np.array([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]], dtype=np.float32)
    got = [p.to_dict() for p in answers(BINARY, "1.0.0", outputs, ["a", "b", "c"])]
    assert [list(d) for d in got] == [["id", "probability", "label", "model_version"]] * 3
    assert [d["label"] for d in got] == ["Yes", "Yes", "No"]  # 0.5 decides for classes[1]
    assert got[0]["probability"] == pytest.approx(0.8)


def test_multiclass_answers_give_every_class() -> None:
    outputs = np.array([[0.1, 0.7, 0.2], [0.4, 0.2, 0.4]], dtype=np.float32)
    got = [p.to_dict() for p in answers(MULTI, "2.0.0", outputs, ["a", "b"])]
    assert list(got[0]) == ["id", "probabilities", "label", "model_version"]
    assert got[0]["label"] == "versicolor"
    assert list(got[0]["probabilities"]) == list(MULTI.classes)
    assert got[0]["probabilities"]["virginica"] == pytest.approx(0.2)
    assert got[1]["label"] == "setosa"  # a tie goes to the first class, as scikit-learn


def test_regression_answers_give_the_value() -> None:
    outputs = np.array([[183.25], [-2.5]], dtype=np.float32)
    got = [p.to_dict() for p in answers(REGRESSION, "3.0.0", outputs, ["a", "b"])]
    assert got == [
        {"id": "a", "value": 183.25, "model_version": "3.0.0"},
        {"id": "b", "value": -2.5, "model_version": "3.0.0"},
    ]


def test_outcomes_per_task() -> None:
    assert label_index("Yes", BINARY.classes) == 1
    assert label_index(0, BINARY.classes) == 0
    assert label_index(True, BINARY.classes) == 1
    assert label_index("virginica", MULTI.classes) == 2
    with pytest.raises(InputError, match=r"label 1 is not one of \['setosa'"):
        label_index(1, MULTI.classes)  # indices are ambiguous beyond binary: labels only
    with pytest.raises(InputError, match=r"\(or 0/1\)"):
        label_index("maybe", BINARY.classes)
    assert outcome_value(151.5, REGRESSION) == 151.5
    assert outcome_value("151.5", REGRESSION) == 151.5
    for bad in (float("nan"), float("inf"), "high", True, None):
        with pytest.raises(InputError, match=r"regression model is a number|finite number"):
            outcome_value(bad, REGRESSION)  # type: ignore[arg-type]


def test_the_binary_sketches_get_what_they_count() -> None:
    outputs = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    assert window_scores(MULTI, outputs)[0] == pytest.approx(0.7)
    assert window_scores(BINARY, np.array([[0.3, 0.7]]))[0] == pytest.approx(0.7)
    assert window_scores(REGRESSION, np.array([[5.0]])).tolist() == [0.0]
    assert outcome_of(BINARY, "Yes") == 1
    assert outcome_of(MULTI, "setosa") is None
    assert outcome_of(REGRESSION, 3.5) is None
    with pytest.raises(InputError):
        outcome_of(MULTI, "daisy")
    with pytest.raises(InputError):
        outcome_of(REGRESSION, "x")

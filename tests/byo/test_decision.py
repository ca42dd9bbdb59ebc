"""Decision-function classifiers (docs/architecture.md §2, "Decision-function models"):
LinearSVC and SGDClassifier without probabilities export in every device format with
parity against the contract's map of scikit-learn's own ``decision_function`` (binary
``[1 - sigmoid(d), sigmoid(d)]``, multi-class the softmax), their schema says the outputs are
scores, their card has no calibration measures, and devices answer "score"."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, softmax
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import roc_auc_score
from sklearn.svm import LinearSVC

from edgefleet.central.byo.register import Card, prepare
from edgefleet.central.byo.source import LoadedModel
from edgefleet.cli.main import main
from edgefleet.converters.parity import measure_parity
from edgefleet.converters.registry import export_format
from edgefleet.converters.source import ConversionSource
from edgefleet.edge.agent.answers import answers
from edgefleet.edge.schema import FeatureSchema
from tests.byo import grid

FORMATS = ("onnx", "tflite", "coreml", "web")
MODELS: dict[str, Callable[[], Any]] = {
    "linsvc": lambda: LinearSVC(),
    "hinge": lambda: SGDClassifier(loss="hinge", random_state=0),
    "perceptron": lambda: SGDClassifier(loss="perceptron", random_state=0),
}
# (task, data set, preprocessing, model): each model, task and preprocessing at least once.
CELLS = [
    ("binary", "iris", "standard+onehot", "linsvc"),
    ("multiclass", "wine", "infrequent", "linsvc"),
    ("binary", "wine", "passthrough+drop", "hinge"),
    ("multiclass", "iris", "onehot-first+minmax", "perceptron"),
]
Cell = tuple[str, str, str, str]


def _map(decision: Any) -> Any:
    """The contract's map, written out here independently of the code under test."""
    d = np.asarray(decision, dtype=np.float64)
    return np.column_stack([1 - expit(d), expit(d)]) if d.ndim == 1 else softmax(d, axis=1)


@pytest.fixture(scope="module")
def made() -> Callable[[Cell], tuple[Any, pd.DataFrame, Card]]:
    cache: dict[Cell, tuple[Any, pd.DataFrame, Card]] = {}

    def get(cell: Cell) -> tuple[Any, pd.DataFrame, Card]:
        if cell not in cache:
            task, data, prep, model = cell
            frame = grid.frames(task)[data]
            user = grid.fit(frame, prep, MODELS[model]())
            cache[cell] = (user, frame, prepare(LoadedModel(user, "test"), frame, grid.TARGET))
        return cache[cell]

    return get


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cell", CELLS, ids="-".join)
def test_decision_model_exports_with_parity_to_its_decision_function(
    made: Callable[[Cell], tuple[Any, pd.DataFrame, Card]], cell: Cell, fmt: str
) -> None:
    user, frame, card = made(cell)
    model = card.model
    assert (model.schema.task, model.schema.outputs) == (cell[0], "decision")
    assert card.agreement.rows_over == 0
    expected = _map(user.decision_function(frame.drop(columns=[grid.TARGET])))
    inputs = model.holdout_inputs  # every reference row, in order (fewer than 5000)
    exporter = export_format(fmt)
    source = ConversionSource(model.pipeline, model.schema, model.family, inputs[:16])
    got = exporter.predict(exporter.convert(source), inputs)
    assert measure_parity(fmt, got, expected, cell[0]).max_abs_diff <= 1e-5
    assert (got.argmax(axis=1) == np.searchsorted(user.classes_, user.predict(frame))).all()


@pytest.mark.parametrize("cell", CELLS[:2], ids="-".join)
def test_card_ranks_by_the_decision_function_and_has_no_calibration(
    made: Callable[[Cell], tuple[Any, pd.DataFrame, Card]], cell: Cell
) -> None:
    user, frame, card = made(cell)
    metrics = card.model.metrics
    assert not {"log_loss", "brier", "calibration_error"} & set(metrics)
    decision = user.decision_function(frame.drop(columns=[grid.TARGET]))
    if cell[0] == "binary":
        labels = frame[grid.TARGET] == user.classes_[1]
        assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, decision), abs=1e-12)
    else:
        right = user.predict(frame) == frame[grid.TARGET]
        assert metrics["accuracy"] == pytest.approx(right.mean())


def test_schema_says_scores_only_when_it_must(
    made: Callable[[Cell], tuple[Any, pd.DataFrame, Card]],
) -> None:
    schema = made(CELLS[0])[2].model.schema
    data = schema.to_dict()
    assert data["outputs"] == "decision"
    assert FeatureSchema.from_dict(data) == schema
    del data["outputs"]  # a probabilistic schema is byte-identical to before: no key
    assert "outputs" not in FeatureSchema.from_dict(data).to_dict()
    for bad, why in (
        ({**data, "outputs": "logits"}, "'outputs' must be one of probabilities, decision"),
        ({**data, "outputs": "decision", "classes": [], "task": "regression"}, "classifiers"),
    ):
        with pytest.raises(Exception, match=why):
            FeatureSchema.from_dict(bad)


def test_answers_say_score_not_probability(
    made: Callable[[Cell], tuple[Any, pd.DataFrame, Card]],
) -> None:
    binary = made(CELLS[0])[2].model.schema
    first = answers(binary, "1.0.0", np.array([[0.3, 0.7]]), ["a"])[0].to_dict()
    assert first == {"id": "a", "score": 0.7, "label": binary.classes[1], "model_version": "1.0.0"}
    multi = made(CELLS[1])[2].model.schema
    row = np.array([[0.2, 0.5, 0.3]])
    answer = answers(multi, "1.0.0", row, ["b"])[0].to_dict()
    assert answer["scores"] == dict(zip(multi.classes, [0.2, 0.5, 0.3], strict=True))
    assert "probabilities" not in answer
    assert answer["label"] == multi.classes[1]


def test_a_registered_linear_svc_scores_on_a_device_as_a_score(
    tmp_path: Path, keypair: tuple[Path, Path], capsys: Any
) -> None:
    frame = grid.frames("binary")["iris"]
    user = grid.fit(frame, "standard+onehot", LinearSVC())
    joblib.dump(user, tmp_path / "svc.joblib")
    frame.to_csv(tmp_path / "ref.csv", index=False)
    home = ["--home", str(tmp_path / "home")]
    register = ["register", str(tmp_path / "svc.joblib"), "--reference", str(tmp_path / "ref.csv")]
    assert main([*home, *register, "--target", grid.TARGET]) == 0
    export = ["export", "svc@1.0.0", "--out", str(tmp_path / "b"), "--key", str(keypair[0])]
    assert main([*home, *export, "--formats", "onnx"]) == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["schema"]["outputs"] == "decision"
    assert "brier" not in manifest["metrics"]
    records = frame.drop(columns=[grid.TARGET]).head(5)
    records.to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    capsys.readouterr()
    score = ["score", str(tmp_path / "b"), "--input", str(tmp_path / "in.jsonl")]
    assert main([*score, "--key", str(keypair[1])]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = expit(user.decision_function(records))
    assert [set(line) for line in lines] == [{"row", "score", "label"}] * 5
    assert np.abs([line["score"] for line in lines] - expected).max() <= 1e-5


def test_retraining_refits_the_user_s_kind_of_model(
    made: Callable[[Cell], tuple[Any, pd.DataFrame, Card]],
) -> None:
    """Retraining fits a clone of the registered pipeline (central/monitor/refit.py): a
    LinearSVC with the user's settings, still scored by its decision function."""
    from edgefleet.central.data.loader import load_training_table
    from edgefleet.central.monitor.refit import refit

    user, frame, card = made(CELLS[1])
    schema = card.model.schema
    table = load_training_table(frame[[*schema.names, schema.target]], schema.target, schema=schema)
    retrained = refit(table, card.model.pipeline, card.model.family, card.model.params)
    inner = retrained.pipeline.steps[-1][1].estimator
    assert type(inner) is LinearSVC
    assert inner.get_params() == user.steps[-1][1].get_params()
    assert inner is not card.model.pipeline.steps[-1][1].estimator
    inputs = retrained.holdout_inputs
    got = retrained.pipeline.predict_proba(inputs)
    decision = retrained.pipeline[:-1].transform(inputs) @ inner.coef_.T + inner.intercept_
    assert np.abs(got - _map(decision)).max() <= 1e-12
    assert retrained.schema.outputs == "decision"
    assert "log_loss" not in retrained.metrics

"""edgefleet register / edgefleet.register: a user's joblib pipeline and an MLflow sklearn
folder register, export in every format with parity; what is not covered is refused with the
step's name before anything is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, PolynomialFeatures

import edgefleet
from edgefleet.central.registry import Registry
from edgefleet.cli.main import main
from edgefleet.edge.schema import CategoricalFeature
from tests.byo import grid


@pytest.fixture(scope="session")
def iris() -> pd.DataFrame:
    return grid.binary_sets()["iris"]


def _features(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[grid.TARGET])


def test_cli_registers_a_joblib_pipeline_and_exports_every_format(
    tmp_path: Path, iris: pd.DataFrame, keypair: tuple[Path, Path], capsys: Any
) -> None:
    pipeline = grid.fit(iris, "onehot-first+minmax", grid.ESTIMATORS["gb"]())
    joblib.dump(pipeline, tmp_path / "churn_model.joblib")
    iris.to_csv(tmp_path / "reference.csv", index=False)
    home = tmp_path / "home"
    argv = ["--home", str(home), "register", str(tmp_path / "churn_model.joblib")]
    argv += ["--reference", str(tmp_path / "reference.csv"), "--target", grid.TARGET]
    assert main([*argv, "--version", "3.1.0"]) == 0
    assert capsys.readouterr().out.strip() == "3.1.0"
    version = Registry(home).get("latest", name="churn_model")
    card = version.load_card()
    assert card.schema.names == ("f0", "f1", "f2", "f3", grid.CATEGORY)
    assert card.schema.classes == ("other", "versicolor")  # the estimator's classes_ order
    colour = card.schema.feature(grid.CATEGORY)
    assert isinstance(colour, CategoricalFeature)
    assert colour.vocabulary == ("blue", "green", "red")
    expected = pipeline.predict_proba(_features(iris))[:, 1]
    from sklearn.metrics import roc_auc_score

    labels = (iris[grid.TARGET] == "versicolor").to_numpy()
    assert version.metrics["auroc"] == pytest.approx(roc_auc_score(labels, expected), abs=1e-9)
    private = keypair[0]
    code = main(
        [
            "--home",
            str(home),
            "export",
            "churn_model@3.1.0",
            "--out",
            str(tmp_path / "b"),
            "--key",
            str(private),
        ]
    )
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert set(manifest["parity"]) == {"onnx", "tflite", "web", "coreml"}
    assert max(manifest["parity"].values()) <= 1e-5
    from edgefleet.edge.scorer import Scorer

    scorer = Scorer.from_bundle(tmp_path / "b", trusted_keys=keypair[1])
    records = [
        {str(k): v for k, v in r.items()} for r in _features(iris).head(20).to_dict("records")
    ]
    got = scorer.positive(records)
    assert np.abs(np.asarray(got) - expected[:20]).max() <= 1e-5


def test_python_api_registers_an_mlflow_folder_with_its_signature(
    tmp_path: Path, iris: pd.DataFrame
) -> None:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    features = _features(iris)
    pipeline = grid.fit(iris, "robust+ordinal", grid.ESTIMATORS["hgb"]())
    folder = tmp_path / "mlflow-model"
    mlflow.sklearn.save_model(
        pipeline,
        str(folder),
        signature=infer_signature(features, pipeline.predict(features)),
        serialization_format="cloudpickle",
    )
    version = edgefleet.register(
        folder, reference=iris, target=grid.TARGET, name="iris", home=tmp_path / "home"
    )
    assert (version.name, version.version, version.family) == ("iris", "1.0.0", "hgb")
    card = version.load_card()
    assert card.schema.names == ("f0", "f1", "f2", "f3", grid.CATEGORY)
    ours = version.load_pipeline().predict_proba(card.holdout_inputs)
    theirs = pipeline.predict_proba(features)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_an_array_fitted_pipeline_takes_its_column_names_from_the_mlflow_signature(
    tmp_path: Path, iris: pd.DataFrame
) -> None:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    numeric = iris[["f0", "f1", "f2", "f3"]]
    model = LogisticRegression(max_iter=1000).fit(numeric.to_numpy(), iris[grid.TARGET])
    folder = tmp_path / "m"
    mlflow.sklearn.save_model(
        model, str(folder), signature=infer_signature(numeric), serialization_format="pickle"
    )
    version = edgefleet.register(folder, reference=iris, target=grid.TARGET, home=tmp_path / "h")
    assert version.load_card().schema.names == ("f0", "f1", "f2", "f3")
    with pytest.raises(edgefleet.errors.UnsupportedModelError, match="without column names"):
        edgefleet.register(model, reference=iris, target=grid.TARGET, home=tmp_path / "h")


def _refused(tmp_path: Path, model: Any, frame: pd.DataFrame, capsys: Any) -> str:
    joblib.dump(model, tmp_path / "model.joblib")
    frame.to_csv(tmp_path / "ref.csv", index=False)
    home = tmp_path / "home"
    code = main(
        [
            "--home",
            str(home),
            "register",
            str(tmp_path / "model.joblib"),
            "--reference",
            str(tmp_path / "ref.csv"),
            "--target",
            grid.TARGET,
        ]
    )
    assert code == 2
    assert not (home / "models").exists()  # nothing written
    assert Registry(home).versions() == []
    return str(capsys.readouterr().err)


def test_an_uncovered_step_is_named_with_what_is_covered(
    tmp_path: Path, iris: pd.DataFrame, capsys: Any
) -> None:
    prep = ColumnTransformer(
        [("poly", PolynomialFeatures(), ["f0", "f1"]), ("cat", OneHotEncoder(), [grid.CATEGORY])]
    )
    model = Pipeline([("prep", prep), ("clf", LogisticRegression())]).fit(
        _features(iris), iris[grid.TARGET]
    )
    err = _refused(tmp_path, model, iris, capsys)
    assert "step 'poly' (PolynomialFeatures) is not converted" in err
    assert "StandardScaler" in err
    assert "HistGradientBoostingClassifier" in err


@pytest.mark.parametrize("unknown", ["ignore", "infrequent_if_exist"])
@pytest.mark.parametrize("fmt", ["tflite", "coreml"])
def test_infrequent_categories_in_front_of_trees_convert(
    iris: pd.DataFrame, unknown: str, fmt: str
) -> None:
    """Two columns, each with two categories merged into its infrequent column; an unknown
    category scores as the user's encoder does (all zeros, or the infrequent column)."""
    from edgefleet.central.byo.register import prepare
    from edgefleet.central.byo.source import LoadedModel
    from edgefleet.converters.ir import read_pipeline
    from edgefleet.converters.registry import export_format
    from edgefleet.converters.source import ConversionSource

    size = pd.cut(iris["f2"], [0, 1.7, 3.5, 5.0, 9.0], labels=["xs", "s", "m", "l"])
    frame = iris.assign(size=size.astype(str))
    encoder = OneHotEncoder(max_categories=2, handle_unknown=unknown)
    prep = ColumnTransformer([("cat", encoder, [grid.CATEGORY, "size"])], remainder="passthrough")
    model = Pipeline([("prep", prep), ("clf", grid.ESTIMATORS["gb"]())])
    model.fit(_features(frame), frame[grid.TARGET])
    card = prepare(LoadedModel(model, "test"), frame, grid.TARGET)
    assert card.agreement.rows_over == 0
    trained = card.model
    inputs = np.concatenate([trained.holdout_inputs, trained.golden_inputs()])
    unseen = inputs[:20].copy()
    unseen[:10, trained.schema.names.index("size")] = -1.0
    unseen[10:, trained.schema.names.index(grid.CATEGORY)] = -1.0
    inputs = np.concatenate([inputs, unseen])
    expected = trained.pipeline.predict_proba(inputs)
    theirs = model.predict_proba(  # the user's model on the same rows, unseen ones as "?"
        pd.DataFrame(
            {
                name: [
                    "?"
                    if code < 0
                    else trained.schema.feature(name).vocabulary[int(code)]  # type: ignore[union-attr]
                    if name in (grid.CATEGORY, "size")
                    else code
                    for code in inputs[:, i]
                ]
                for i, name in enumerate(trained.schema.names)
            }
        )[list(_features(frame).columns)]
    )
    assert np.abs(expected - theirs).max() <= 1e-6
    # The user's trees split on merged columns (what this test is about).
    names = model.named_steps["prep"].get_feature_names_out()
    merged = {i for i, name in enumerate(names) if "infrequent" in name}
    trees = [t.tree_ for t in model.named_steps["clf"].estimators_.ravel()]
    assert sum(int(np.isin(t.feature, list(merged)).sum()) for t in trees) > 0
    assert np.abs(read_pipeline(trained.pipeline).predict_proba(inputs) - expected).max() < 1e-12
    exporter = export_format(fmt)
    source = ConversionSource(trained.pipeline, trained.schema, trained.family, inputs[:16])
    got = exporter.predict(exporter.convert(source), inputs)
    assert np.abs(got - expected).max() <= 1e-5


@pytest.mark.parametrize("drop", ["first", "if_binary"])
@pytest.mark.parametrize("fmt", ["onnx", "tflite", "coreml"])
def test_a_linear_model_behind_a_dropping_encoder_converts(
    iris: pd.DataFrame, drop: str, fmt: str
) -> None:
    from edgefleet.central.byo.register import prepare
    from edgefleet.central.byo.source import LoadedModel
    from edgefleet.converters.registry import export_format
    from edgefleet.converters.source import ConversionSource

    frame = iris.assign(flag=np.where(iris["f0"] > 5.8, "big", "small"))
    encoder = OneHotEncoder(drop=drop, handle_unknown="ignore")
    prep = ColumnTransformer([("cat", encoder, [grid.CATEGORY, "flag"])], remainder="passthrough")
    model = Pipeline([("prep", prep), ("clf", LogisticRegression(max_iter=2000))])
    model.fit(_features(frame), frame[grid.TARGET])
    card = prepare(LoadedModel(model, "test"), frame, grid.TARGET)
    assert card.agreement.max_abs_diff <= 1e-5
    trained = card.model
    inputs = np.concatenate([trained.holdout_inputs, trained.golden_inputs()])
    exporter = export_format(fmt)
    source = ConversionSource(trained.pipeline, trained.schema, trained.family, inputs[:16])
    got = exporter.predict(exporter.convert(source), inputs)
    assert np.abs(got - trained.pipeline.predict_proba(inputs)).max() <= 1e-5


def test_reference_data_that_does_not_fit_the_schema_is_refused(
    tmp_path: Path, iris: pd.DataFrame, capsys: Any
) -> None:
    model = grid.fit(iris, "standard+onehot", grid.ESTIMATORS["logreg"]())
    assert "lacks the column(s) 'f2'" in _refused(
        tmp_path, model, iris.drop(columns=["f2"]), capsys
    )
    other = iris.assign(target=np.where(iris[grid.TARGET] == "other", "no", "yes"))
    assert "schema's classes are 'other' and 'versicolor'" in _refused(
        tmp_path, model, other, capsys
    )


def test_float64_histogram_boosting_is_read_to_agree_on_float32_input(iris: pd.DataFrame) -> None:
    """HGB thresholds can equal training values; the contract's float32 input would round
    some of them across. The reading moves thresholds so the rebuilt model agrees."""
    from sklearn.datasets import load_breast_cancer

    from edgefleet.central.byo.register import prepare
    from edgefleet.central.byo.source import LoadedModel

    data = load_breast_cancer(as_frame=True)
    frame = data.data.iloc[:, :8].set_axis([f"c{i}" for i in range(8)], axis=1)
    frame[grid.TARGET] = data.target
    model = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(
        frame.drop(columns=[grid.TARGET]), frame[grid.TARGET]
    )
    raw = model.predict_proba(frame.drop(columns=[grid.TARGET]).to_numpy(np.float32))
    naive = np.abs(raw - model.predict_proba(frame.drop(columns=[grid.TARGET]))).max()
    assert naive > 1e-3  # the problem is real on this data
    card = prepare(LoadedModel(model, "test"), frame, grid.TARGET)
    assert card.agreement.max_abs_diff <= 1e-5


def test_help_warns_that_loading_a_pickle_runs_code(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["register", "--help"])
    text = capsys.readouterr().out
    assert "WARNING: loading a pickle or joblib file runs code" in text
    assert "edgefleet register churn_pipeline.joblib --reference" in text


def test_bad_model_paths_get_one_clear_line(
    tmp_path: Path, iris: pd.DataFrame, capsys: Any
) -> None:
    iris.to_csv(tmp_path / "ref.csv", index=False)
    base = ["--home", str(tmp_path / "home"), "register"]
    tail = ["--reference", str(tmp_path / "ref.csv"), "--target", grid.TARGET]
    assert main([*base, str(tmp_path / "absent.joblib"), *tail]) == 2
    assert "neither a joblib/pickle file nor an MLflow model folder" in capsys.readouterr().err
    (tmp_path / "not-a-model.joblib").write_bytes(b"certainly not a pickle")
    assert main([*base, str(tmp_path / "not-a-model.joblib"), *tail]) == 2
    assert "cannot load" in capsys.readouterr().err  # not a pickle: no misleading hint
    folder = tmp_path / "keras-model"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors:\n  keras:\n    data: model.keras\n")
    assert main([*base, str(folder), *tail]) == 2
    assert "has no sklearn flavour (flavours: keras)" in capsys.readouterr().err
    (folder / "MLmodel").write_text(
        "flavors:\n  sklearn:\n    pickled_model: ../../etc/passwd\n"
        "    serialization_format: cloudpickle\n"
    )
    assert main([*base, str(folder), *tail]) == 2
    assert "is outside the folder" in capsys.readouterr().err
    assert not (tmp_path / "home" / "models").exists()


def test_formats_prints_the_matrix_from_the_registry(capsys: Any) -> None:
    from edgefleet.central.byo.reading import COVERED_STEPS
    from edgefleet.converters.ir import ESTIMATOR_FAMILIES
    from edgefleet.converters.registry import EXPORT_FORMATS

    assert main(["formats"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[3:] == list(EXPORT_FORMATS)  # every registered format is a column
    # One row per estimator and task it converts for, until the notes (indented).
    table = [line.split() for line in lines[1:] if line and not line.startswith(" ")]
    table = table[: next(i for i, row in enumerate(table) if row[0] in EXPORT_FORMATS)]
    rows = {(row[0], row[2]): row for row in table}
    assert {estimator for estimator, _ in rows} == set(ESTIMATOR_FAMILIES)
    assert rows[("SGDClassifier", "binary")][1] == "sgd"
    assert rows[("Ridge", "regression")][3:] == ["yes"] * 5
    assert rows[("SGDClassifier", "multiclass")][3:] == ["yes", "yes", "yes", "yes", "[1]"]
    assert rows[("LinearSVC", "multiclass")][1:] == ["linsvc", "multiclass", *["yes"] * 5]
    assert any(line.startswith("  decision scores: LinearSVC") for line in lines)
    for step_name in COVERED_STEPS:
        assert any(line.strip().startswith(step_name) for line in lines)

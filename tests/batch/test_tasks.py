"""``edgefleet batch score`` per task (docs/architecture.md §11): a user's multi-class
pipeline gets its predicted class and that class's probability, a regressor its value and
no label, each equal to the registered pipeline's (serve-model per task:
tests/serving/test_tasks.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from edgefleet.central.byo.register import Registered, register_model
from edgefleet.central.export import export_bundle
from edgefleet.edge.signing import load_private_key
from edgefleet.web.app import create_app
from edgefleet.web.config import WebConfig
from tests.serving.conftest import task_records

CLI = [sys.executable, "-m", "edgefleet.cli.main"]


def _bundle(registered: Registered, keypair: tuple[Path, Path], out: Path) -> Path:
    private = load_private_key(keypair[0])
    return export_bundle(registered.version, ["onnx"], out, private).bundle


def _score(bundle: Path, frame: pd.DataFrame, keypair: tuple[Path, Path], at: Path) -> pd.DataFrame:
    frame.insert(0, "row_id", [f"r{i}" for i in range(len(frame))])
    frame.to_csv(at / "in.csv", index=False)
    result = subprocess.run(
        [*CLI, "batch", "score", str(bundle), "--input", "in.csv", "--key", "row_id",
         "--out", "out.parquet", "--public-key", str(keypair[1])],
        cwd=at, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return pd.read_parquet(at / "out.parquet").set_index("key").loc[frame["row_id"]]


def test_a_multiclass_pipeline_scores_its_class_and_probability(
    keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    iris = load_iris(as_frame=True)
    frame = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    species = iris.target.map(dict(enumerate(iris.target_names)))
    forest = RandomForestClassifier(n_estimators=10, random_state=0)
    user = make_pipeline(StandardScaler(), forest).fit(frame, species)
    registered = register_model(user, frame.assign(species=species), "species", home=tmp_path)
    bundle = _bundle(registered, keypair, tmp_path / "bundle")
    scored = _score(bundle, frame.copy(), keypair, tmp_path)
    expected = registered.model.pipeline.predict_proba(frame.to_numpy(np.float32))
    classes = np.array(registered.model.schema.classes)
    assert list(scored["label"]) == list(classes[expected.argmax(axis=1)])
    np.testing.assert_allclose(scored["score"], expected.max(axis=1), atol=1e-5)


def test_a_regressor_scores_its_value_without_a_label(
    keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    data = load_diabetes(as_frame=True)
    user = make_pipeline(StandardScaler(), Ridge()).fit(data.data, data.target)
    reference = data.data.assign(progression=data.target)
    registered = register_model(user, reference, "progression", home=tmp_path)
    bundle = _bundle(registered, keypair, tmp_path / "bundle")
    scored = _score(bundle, data.data.copy(), keypair, tmp_path)
    expected = user.predict(data.data)
    assert scored["label"].isna().all()
    np.testing.assert_allclose(scored["score"], expected, rtol=1e-4)


@pytest.fixture(autouse=True)
def _quiet_sklearn_feature_names() -> None:
    """The pipelines are fitted on frames and asked on arrays in the comparisons."""
    import warnings

    warnings.filterwarnings("ignore", message="X does not have valid feature names")


def test_the_call_centre_looks_up_a_regressors_value(
    task_bundles: dict[str, tuple[Path, Any]], keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    """``batch score --db`` writes a regressor's rows with no label, and
    ``GET /api/predictions/KEY`` answers its value."""
    bundle, user = task_bundles["regression"]
    frame = task_records("regression", 20)
    frame.insert(0, "row_id", [f"r{i}" for i in range(len(frame))])
    frame.to_csv(tmp_path / "in.csv", index=False)
    result = subprocess.run(
        [*CLI, "batch", "score", str(bundle), "--input", "in.csv", "--key", "row_id",
         "--db", "sqlite:///ops.db", "--table", "values", "--public-key", str(keypair[1])],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = WebConfig(
        home=tmp_path,
        db=f"sqlite:///{tmp_path / 'monitor.db'}",
        predictions_db=f"sqlite:///{tmp_path / 'ops.db'}",
        predictions_table="values",
        write_token=None,
    )
    found = create_app(config).test_client().get("/api/predictions/r3")
    assert found.status_code == 200
    body = found.get_json()
    assert set(body) == {"key", "model", "version", "value", "scored_at", "scored_at_iso"}
    expected = user.predict(frame.drop(columns=["row_id"]))[3]
    assert body["value"] == pytest.approx(expected, rel=1e-4)

"""The scoring service over real HTTP: the Open Inference Protocol, V1 predict, errors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgefleet.central.serving.service import ScoringService
from edgefleet.edge.scorer import Scorer
from tests.serving.conftest import golden_records


def call(url: str, body: Any = None, method: str | None = None) -> tuple[int, dict[str, Any], Any]:
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def columns(records: list[dict[str, Any]], schema: Any) -> list[dict[str, Any]]:
    tensors = []
    for feature in schema.features:
        values = [r[feature.name] for r in records]
        text = feature.kind == "categorical"
        tensors.append(
            {
                "name": feature.name,
                "shape": [len(values)],
                "datatype": "BYTES" if text else "FP64",
                "data": values,
            }
        )
    return tensors


def test_health_and_metadata(static_service: ScoringService) -> None:
    url = static_service.url
    assert call(f"{url}/v2/health/live")[:2] == (200, {"live": True})
    assert call(f"{url}/v2/health/ready")[:2] == (200, {"ready": True})
    status, meta, _ = call(f"{url}/v2/models/churn")
    assert status == 200
    assert meta["name"] == "churn"
    assert meta["versions"] == ["1.0.0"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert {"name": "contract", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label", "prediction_id"]
    assert call(f"{url}/v2/models/churn/ready")[:2] == (200, {"name": "churn", "ready": True})
    assert call(f"{url}/v2/models/nope")[0] == 404
    assert call(f"{url}/v2/models/churn/versions/9.9.9")[0] == 404


def test_infer_matches_the_verified_scorer(
    static_service: ScoringService, service_bundles: list[Path], keypair: tuple[Path, Path]
) -> None:
    scorer = Scorer.from_bundle(service_bundles[0], keypair[1])
    records = golden_records(service_bundles[0], 8)
    expected = scorer.score(records)
    body = {"id": "req-1", "inputs": columns(records, scorer.manifest.schema)}
    status, answer, _ = call(f"{static_service.url}/v2/models/churn/infer", body)
    assert status == 200, answer
    assert answer["id"] == "req-1"
    assert answer["model_version"] == "1.0.0"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["probabilities"]["shape"] == [8, 2]
    got = np.array(outputs["probabilities"]["data"], dtype=np.float32).reshape(8, 2)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert len(set(outputs["prediction_id"]["data"])) == 8

    # One row per record, and the model contract's matrix: the same scores.
    as_rows = {
        "inputs": [
            {
                "name": "records",
                "shape": [8],
                "datatype": "BYTES",
                "data": [json.dumps(r) for r in records],
            }
        ],
        "outputs": [{"name": "probabilities"}],
    }
    status, answer, _ = call(f"{static_service.url}/v2/models/churn/infer", as_rows)
    assert status == 200
    assert [o["name"] for o in answer["outputs"]] == ["probabilities"]
    np.testing.assert_allclose(
        np.reshape(answer["outputs"][0]["data"], (8, 2)), expected, atol=1e-6
    )
    matrix = scorer.encode(records)
    as_matrix = {
        "inputs": [
            {
                "name": "input",
                "shape": list(matrix.shape),
                "datatype": "FP32",
                "data": matrix.tolist(),
            }
        ]
    }
    status, answer, _ = call(f"{static_service.url}/v2/models/churn/infer", as_matrix)
    assert status == 200
    np.testing.assert_allclose(
        np.reshape(answer["outputs"][0]["data"], (8, 2)), expected, atol=1e-6
    )


def test_v1_predict(static_service: ScoringService, service_bundles: list[Path]) -> None:
    records = golden_records(service_bundles[0], 3)
    status, answer, _ = call(
        f"{static_service.url}/v1/models/churn:predict", {"instances": records}
    )
    assert status == 200
    assert [p["model_version"] for p in answer["predictions"]] == ["1.0.0"] * 3
    assert all(0 <= p["probability"] <= 1 for p in answer["predictions"])


def test_bad_requests_are_answered_with_what_is_wrong(
    static_service: ScoringService, service_bundles: list[Path]
) -> None:
    url = static_service.url
    record = dict(golden_records(service_bundles[0], 1)[0])
    record["tenure_months"] = "three"
    status, answer, _ = call(f"{url}/v1/models/churn:predict", {"instances": [record]})
    assert status == 400
    assert "record 0" in answer["error"]
    assert "tenure_months" in answer["error"]
    assert answer["status"] == 400
    cases = [
        ({"inputs": []}, "'inputs'"),
        (
            {"inputs": [{"name": "contract", "shape": [2], "datatype": "BYTES", "data": ["a"]}]},
            "needs 2 values",
        ),
        (
            {"inputs": [{"name": "contract", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
            "categorical",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "WORDS", "data": [1]}]}, "datatype"),
        (
            {"inputs": [{"name": "zzz", "shape": [1], "datatype": "FP32", "data": [1]}]},
            "no input names a feature",
        ),
    ]
    for body, words in cases:
        status, answer, _ = call(f"{url}/v2/models/churn/infer", body)
        assert status == 400, (body, answer)
        assert words in answer["error"], (body, answer)
    assert call(f"{url}/v2/models/churn/infer", b"{not json")[0] == 400
    status, answer, headers = call(f"{url}/v2/models/churn/infer", method="GET")
    assert status == 405
    assert headers["Allow"] == "POST"
    too_many = {"instances": [golden_records(service_bundles[0], 1)[0]] * 1001}
    assert call(f"{url}/v1/models/churn:predict", too_many)[0] == 413
    assert call(f"{url}/v1/outcome", {"id": "x", "label": 1})[0] == 409  # not a fleet member


def test_v1_predict_calls_a_decision_function_model_s_output_a_score(
    keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    """A LinearSVC's output is a score, not a probability (docs/architecture.md §2)."""
    from scipy.special import expit
    from sklearn.svm import LinearSVC

    from edgefleet.central.byo.register import register_model
    from edgefleet.central.export import export_bundle
    from edgefleet.edge.signing import load_private_key
    from tests.byo import grid
    from tests.serving.conftest import make_spec

    frame = grid.binary_sets()["iris"]
    user = grid.fit(frame, "standard+onehot", LinearSVC())
    version = register_model(user, frame, grid.TARGET, home=tmp_path / "h", name="svc").version
    bundle = export_bundle(version, ["onnx"], tmp_path / "b", load_private_key(keypair[0])).bundle
    service = ScoringService(make_spec(keypair, bundles=(str(bundle),)), workers=1).start()
    try:
        records = golden_records(bundle, 3)
        status, answer, _ = call(f"{service.url}/v1/models/svc:predict", {"instances": records})
    finally:
        service.stop()
    assert status == 200, answer
    columns = list(frame.drop(columns=[grid.TARGET]).columns)
    expected = expit(user.decision_function(pd.DataFrame(records)[columns]))
    got = [p["score"] for p in answer["predictions"]]
    assert all("probability" not in p for p in answer["predictions"])
    assert np.abs(np.array(got) - expected).max() <= 1e-5

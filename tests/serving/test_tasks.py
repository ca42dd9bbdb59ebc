"""``serve-model`` per task (docs/architecture.md §12): a brought multi-class pipeline
answers ``probabilities`` [N, K] and ``label``, a brought regressor ``value`` [N], each
equal to the user's own pipeline; labels posted back by prediction id are checked and
handed on per task, a multi-class id carrying every class's probability."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.publish import publish
from edgefleet.central.serving.app import ServiceApp, ServiceLimits
from edgefleet.central.serving.batcher import BatchLimits
from edgefleet.central.serving.member import FleetMember
from edgefleet.central.serving.models import Catalog
from edgefleet.central.serving.predid import PredictionIds, PredictionRef
from edgefleet.central.serving.service import ScoringService
from edgefleet.edge.agent.agent import Agent
from edgefleet.edge.agent.answers import Outcome
from edgefleet.edge.scorer import Scorer
from edgefleet.edge.signing import load_private_key
from tests.fleet.kit import agent_config, collecting, wait_for
from tests.monitor import brought
from tests.serving.conftest import TASKS, make_spec, task_records
from tests.serving.test_service import call


@pytest.fixture(scope="module")
def task_service(
    task_bundles: dict[str, tuple[Path, Any]], keypair: tuple[Path, Path]
) -> Iterator[ScoringService]:
    bundles = tuple(str(task_bundles[t][0]) for t in TASKS)
    service = ScoringService(make_spec(keypair, bundles=bundles), workers=1).start()
    try:
        yield service
    finally:
        service.stop()


def _columns(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "shape": [len(frame)],
            "datatype": "BYTES" if name == "colour" else "FP64",
            "data": frame[name].tolist(),
        }
        for name in frame.columns
    ]


def _outputs(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in answer["outputs"]}


def test_metadata_describes_the_outputs_of_each_task(task_service: ScoringService) -> None:
    status, meta, _ = call(f"{task_service.url}/v2/models/multiclass")
    assert status == 200
    assert meta["outputs"][:2] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]
    assert meta["parameters"] == {
        "classes": list(brought.CLASSES),
        "target": brought.TARGET,
        "task": "multiclass",
    }
    status, meta, _ = call(f"{task_service.url}/v2/models/regression")
    assert status == 200
    assert [o["name"] for o in meta["outputs"]] == ["value", "prediction_id"]
    assert meta["outputs"][0] == {"name": "value", "datatype": "FP32", "shape": [-1]}
    assert meta["parameters"]["task"] == "regression"
    assert meta["parameters"]["classes"] == []


def test_a_multiclass_model_answers_every_class_and_the_label(
    task_service: ScoringService, task_bundles: dict[str, tuple[Path, Any]]
) -> None:
    frame = task_records("multiclass")
    expected = task_bundles["multiclass"][1].predict_proba(frame)
    body = {"id": "m-1", "inputs": _columns(frame)}
    status, answer, _ = call(f"{task_service.url}/v2/models/multiclass/infer", body)
    assert status == 200, answer
    outputs = _outputs(answer)
    assert [o["name"] for o in answer["outputs"]] == ["probabilities", "label", "prediction_id"]
    assert outputs["probabilities"]["shape"] == [7, 3]
    got = np.reshape(outputs["probabilities"]["data"], (7, 3))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert outputs["label"]["data"] == list(brought.CLASSES[expected.argmax(axis=1)])
    assert len(set(outputs["prediction_id"]["data"])) == 7

    status, answer, _ = call(
        f"{task_service.url}/v1/models/multiclass:predict",
        {"instances": frame.to_dict(orient="records")},
    )
    assert status == 200, answer
    first = answer["predictions"][0]
    assert set(first) == {"id", "label", "probabilities", "model_version"}
    assert list(first["probabilities"]) == list(brought.CLASSES)
    np.testing.assert_allclose(list(first["probabilities"].values()), expected[0], atol=1e-5)


def test_a_regressor_answers_its_value(
    task_service: ScoringService, task_bundles: dict[str, tuple[Path, Any]]
) -> None:
    frame = task_records("regression")
    expected = task_bundles["regression"][1].predict(frame)
    url = f"{task_service.url}/v2/models/regression/infer"
    status, answer, _ = call(url, {"inputs": _columns(frame)})
    assert status == 200, answer
    assert [o["name"] for o in answer["outputs"]] == ["value", "prediction_id"]
    value = _outputs(answer)["value"]
    assert value["shape"] == [7]
    assert value["datatype"] == "FP32"
    np.testing.assert_allclose(value["data"], expected, rtol=1e-4)

    status, answer, _ = call(url, {"inputs": _columns(frame), "outputs": [{"name": "label"}]})
    assert status == 400
    assert "unknown output 'label': this model has value, prediction_id" in answer["error"]
    status, answer, _ = call(
        f"{task_service.url}/v1/models/regression:predict",
        {"instances": frame.to_dict(orient="records")[:2]},
    )
    assert status == 200, answer
    assert [set(p) for p in answer["predictions"]] == [{"id", "value", "model_version"}] * 2
    np.testing.assert_allclose([p["value"] for p in answer["predictions"]], expected[:2], rtol=1e-4)


def _wsgi(app: ServiceApp, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    environ = {
        "PATH_INFO": path,
        "REQUEST_METHOD": "POST",
        "CONTENT_LENGTH": str(len(data)),
        "wsgi.input": io.BytesIO(data),
    }
    status: list[str] = []
    chunks = app(environ, lambda s, headers: status.append(s))
    return int(status[0].split()[0]), json.loads(b"".join(chunks))


def _member_app(bundle: Path, key: Path) -> tuple[ServiceApp, list[tuple[PredictionRef, Outcome]]]:
    """A fleet member's worker app over ``bundle`` (a member serves one model), and what
    it hands its agent."""
    catalog = Catalog(BatchLimits(), reporting=True)
    catalog.install(Scorer.from_bundle(bundle, key))
    handed: list[tuple[PredictionRef, Outcome]] = []
    ids = PredictionIds(b"k" * 32)
    return ServiceApp(catalog, ServiceLimits(), ids, lambda r, v: handed.append((r, v))), handed


def test_outcomes_are_checked_and_carried_per_task(
    task_bundles: dict[str, tuple[Path, Any]], keypair: tuple[Path, Path]
) -> None:
    """What a fleet member's worker hands its agent for a label posted back: a multi-class
    prediction's every class probability and the class label, a regressor's value and
    the true number; a label the task cannot take is a 400."""
    app, handed = _member_app(task_bundles["multiclass"][0], keypair[1])
    try:
        records = task_records("multiclass", 2).to_dict(orient="records")
        status, answer = _wsgi(app, "/v1/models/multiclass:predict", {"instances": records})
        assert status == 200, answer
        first = answer["predictions"][0]
        assert _wsgi(app, "/v1/outcome", {"id": first["id"], "label": "mid"})[0] == 202
        ref, label = handed[-1]
        assert label == "mid"
        assert ref.outputs is not None
        np.testing.assert_allclose(ref.outputs, list(first["probabilities"].values()), atol=1e-7)
        status, refused = _wsgi(app, "/v1/outcome", {"id": first["id"], "label": 1})
        assert status == 400
        assert "is not one of" in refused["error"]
        assert len(handed) == 1
    finally:
        app.catalog.stop()

    app, handed = _member_app(task_bundles["regression"][0], keypair[1])
    try:
        records = task_records("regression", 1).to_dict(orient="records")
        status, answer = _wsgi(app, "/v1/models/regression:predict", {"instances": records})
        value = answer["predictions"][0]
        assert _wsgi(app, "/v1/outcome", {"id": value["id"], "label": 48.5})[0] == 202
        ref, label = handed[-1]
        assert (ref.outputs, label) == (None, 48.5)
        assert ref.remembered == pytest.approx(value["value"], rel=1e-6)
        status, refused = _wsgi(app, "/v1/outcome", {"id": value["id"], "label": "high"})
        assert status == 400
        assert "is a number" in refused["error"]
        assert len(handed) == 1
    finally:
        app.catalog.stop()


def test_a_multiclass_id_cannot_be_altered() -> None:
    ids = PredictionIds(b"k" * 32)
    outputs = np.array([[0.25, 0.5, 0.25]], dtype=np.float32)
    (identifier,) = ids.make([0.5], "1.0.0", outputs)
    ref = ids.read(identifier)
    assert (ref.version, ref.outputs, ref.score) == ("1.0.0", (0.25, 0.5, 0.25), 0.5)
    raw = bytearray(identifier.encode())
    raw[30] = ord("A") if raw[30] != ord("A") else ord("B")
    with pytest.raises(Exception, match="no recent prediction"):
        ids.read(raw.decode())


def test_a_fleet_member_counts_a_multiclass_models_labels(
    broker: MosquittoBroker,
    task_bundles: dict[str, tuple[Path, Any]],
    keypair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """Over real Mosquitto: the member installs the brought multi-class model the rollout
    names, scores over HTTP, and counts labels posted back by prediction id in its report
    (each id carries every class's probability, what the agent's task sketch counts)."""
    fleet = f"f{uuid.uuid4().hex[:8]}"
    publish(task_bundles["multiclass"][0], fleet, broker.address, load_private_key(keypair[0]))
    agent = Agent(agent_config(broker, keypair, fleet, "scoring-mc", tmp_path / "member"))
    member = FleetMember(agent)
    service = ScoringService(
        make_spec(keypair, reporting=True),
        workers=1,
        on_message=member.on_message,
        welcome=member.welcome,
    ).start()
    member.follow(service.broadcast)
    agent.start()
    with collecting(broker, fleet, f"collector-{fleet}") as collector:
        try:
            url = service.url
            wait_for(lambda: call(f"{url}/v2/health/ready")[0] == 200, what="the model")
            records = task_records("multiclass", 5).to_dict(orient="records")
            status, answer, _ = call(f"{url}/v1/models/multiclass:predict", {"instances": records})
            assert status == 200, answer
            for prediction in answer["predictions"][:3]:
                outcome = {"id": prediction["id"], "label": prediction["label"]}
                assert call(f"{url}/v1/outcome", outcome)[0] == 202
            wait_for(lambda: member.labels_counted == 3, what="3 labels")

            def reported() -> tuple[int, int]:
                agent.close_window()
                return collector.scored_and_labelled()

            wait_for(lambda: reported() == (5, 3), what="5 scored and 3 labelled reported")
        finally:
            service.stop()
            agent.stop(flush_timeout=2.0)

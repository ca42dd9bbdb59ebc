"""The dashboard shows a multi-class or regression model's own metrics (docs/architecture.md
§7c): the drift page and its JSON API carry accuracy, log loss and OvR AUROC, or MAE, RMSE
and R², each beside its holdout value, with prediction drift and the predicted classes or
values against the holdout's; a binary model's page is as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.central.monitor.store import MonitorStore
from edgefleet.edge.report import Report
from edgefleet.edge.topics import Topics
from edgefleet.web.app import create_app
from tests.monitor import tasks
from tests.monitor.test_task_measures import manifest

FLEET = "shops"


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_the_drift_page_shows_the_task_metrics(tmp_path: Path, task: str) -> None:
    served = manifest(task)
    bundle = tmp_path / "bundles" / f"iris-{served.version}"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_bytes(served.to_bytes())
    db = f"sqlite:///{tmp_path / 'monitor.db'}"
    store = MonitorStore(db)
    topics = Topics(FLEET)
    payloads = [
        Report.from_dict({**Report.decode(p).to_dict(), "fleet": FLEET}).encode()
        for p in tasks.reports(tasks.rows(task))
    ]
    store.ingest_many([(topics.report(Report.decode(p).device_id), p) for p in payloads])
    store.close()
    app = create_app({"home": tmp_path, "db": db, "fleets": (FLEET,)})
    client = app.test_client()
    document = client.get(f"/api/fleets/{FLEET}/drift").get_json()
    measures = document["measures"]
    assert measures["task"] == task
    names = [m["name"] for m in measures["metrics"]]
    if task == "multiclass":
        assert names == ["accuracy", "log_loss", "auroc_macro", "auroc_weighted"]
        assert document["prediction"]["labels"] == list(tasks.CLASSES)
    else:
        assert names == ["mae", "rmse", "r2"]
        assert document["score"] is None  # a regressor has no probability to chart
        assert len(document["prediction"]["labels"]) == len(document["prediction"]["current"])
    assert all(m["value"] is not None for m in measures["metrics"])
    assert measures["prediction_drift"]["verdict"] == "no_drift"
    page = client.get(f"/fleets/{FLEET}/drift").get_data(as_text=True)
    assert 'id="task-metrics"' in page
    assert 'id="predictions"' in page
    for metric in measures["metrics"]:
        assert f'data-metric="{metric["name"]}"' in page
    label = "macro OvR AUROC" if task == "multiclass" else "RMSE"
    assert label in page

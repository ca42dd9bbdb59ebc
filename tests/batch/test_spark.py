"""Scoring on a real Spark (local[2]): mapInArrow, the bundle broadcast and
verified on the executors; results equal the Scorer's, with the same counts."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from edgefleet.central.batch.scoring import ChunkScorer
from edgefleet.central.batch.spark import score_dataframe
from edgefleet.central.batch.spark_run import run_spark_batch
from edgefleet.central.predictions import PredictionStore
from edgefleet.edge.scorer import Scorer
from edgefleet.errors import SignatureError
from tests.batch.conftest import customers_frame
from tests.monitor.conftest import db_url, postgres_server  # noqa: F401
from tests.serving.conftest import task_records


def _with_bad_rows(rows: int, seed: int) -> pd.DataFrame:
    frame = customers_frame(rows, seed=seed).astype({"tenure_months": object})
    frame.loc[2, "tenure_months"] = "ten"
    frame.loc[5, "contract"] = None
    return frame


def test_score_dataframe_equals_the_scorer(
    spark: Any, batch_bundle: Path, keypair: tuple[Path, Path]
) -> None:
    frame = _with_bad_rows(1200, seed=8)
    scored = score_dataframe(
        spark.createDataFrame(frame.astype({"tenure_months": str})).repartition(3),
        batch_bundle,
        keypair[1],
        key_column="customer_id",
    ).toPandas()
    assert len(scored) == len(frame)
    refused = scored[scored.reason.notna()].set_index("key").reason
    assert refused.to_dict() == {
        frame.customer_id[2]: "field 'tenure_months': expected a number, got text 'ten'",
        frame.customer_id[5]: "field 'contract': value is missing and this feature requires one",
    }
    good = frame.drop(index=[2, 5])
    expected = Scorer.from_bundle(batch_bundle, keypair[1]).positive(
        good.drop(columns=["customer_id"]).astype({"tenure_months": float}).to_dict("records")
    )
    got = scored[scored.reason.isna()].set_index("key").score.loc[good.customer_id]
    assert np.abs(got.to_numpy() - expected).max() <= 1e-6


def test_the_spark_engine_upserts_from_the_executors(
    spark: Any,
    batch_bundle: Path,
    keypair: tuple[Path, Path],
    tmp_path: Path,
    db_url: str,  # noqa: F811
) -> None:
    frame = _with_bad_rows(400, seed=9)
    frame.to_csv(tmp_path / "in.csv", index=False)
    args = argparse.Namespace(
        master="local[2]", chunk_rows=128, input=tmp_path / "in.csv", bundle=batch_bundle,
        key="customer_id", format=None, db=db_url, table="nightly", out=None,
    )  # fmt: skip
    summary = run_spark_batch(args, keypair[1], tmp_path / "rejects.csv")
    assert (summary.scored, summary.rejected) == (398, 2)
    assert len(pd.read_csv(tmp_path / "rejects.csv")) == 2
    with PredictionStore(db_url, "nightly") as store:
        assert store.count() == 398
        row = store.get(frame.customer_id[10])
    assert row is not None
    assert row.version == "1.0.0"


def test_executors_refuse_a_bundle_the_key_does_not_sign(
    spark: Any, batch_bundle: Path, tmp_path: Path
) -> None:
    from edgefleet.central.keys import generate_keys

    _, stranger, _ = generate_keys(tmp_path / "other")
    with pytest.raises(SignatureError):
        score_dataframe(
            spark.createDataFrame(customers_frame(10)), batch_bundle, stranger,
            key_column="customer_id",
        )  # fmt: skip


def test_spark_writes_each_tasks_columns_as_the_local_engine(
    spark: Any,
    task_bundles: dict[str, tuple[Path, Any]],
    keypair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """A brought multi-class model and regressor (docs/architecture.md §11): the Spark
    engine's label, score and probabilities equal the local engine's chunk scorer's on the
    same rows, and a regressor's rows (no label) go into the prediction table."""
    for task in ("multiclass", "regression"):
        bundle = task_bundles[task][0]
        frame = task_records(task, 60)
        frame.insert(0, "row_id", [f"r{i}" for i in range(len(frame))])
        scored = score_dataframe(
            spark.createDataFrame(frame).repartition(2), bundle, keypair[1], key_column="row_id"
        ).toPandas()
        chunk = ChunkScorer.load(bundle, keypair[1], "row_id", datetime.now(UTC))
        local, _ = chunk.score(pa.Table.from_pandas(frame, preserve_index=False), 0)
        expected = local.to_pandas().set_index("key")
        got = scored.set_index("key").loc[expected.index]
        assert got.reason.isna().all()
        assert got.label.tolist() == expected.label.tolist()
        np.testing.assert_allclose(got.score, expected.score, rtol=1e-6)
        np.testing.assert_allclose(
            np.stack(got.probabilities), np.stack(expected.probabilities), rtol=1e-6
        )
    assert expected.label.isna().all()  # the regressor's
    frame.to_csv(tmp_path / "in.csv", index=False)
    args = argparse.Namespace(
        master="local[2]", chunk_rows=32, input=tmp_path / "in.csv", bundle=bundle,
        key="row_id", format=None, db=f"sqlite:///{tmp_path / 'ops.db'}", table="values",
        out=None,
    )  # fmt: skip
    assert run_spark_batch(args, keypair[1], tmp_path / "rejects.csv").scored == 60
    with PredictionStore(args.db, "values") as store:
        row = store.get("r7")
    assert row is not None
    assert row.label is None
    assert row.to_json()["value"] == pytest.approx(expected.score["r7"], rel=1e-6)

"""Scoring on a real Spark (local[2]): mapInArrow, the bundle broadcast and
verified on the executors; results equal the Scorer's, with the same counts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from edgefleet.central.batch.spark import score_dataframe
from edgefleet.central.batch.spark_run import run_spark_batch
from edgefleet.central.predictions import PredictionStore
from edgefleet.edge.scorer import Scorer
from edgefleet.errors import SignatureError
from tests.batch.conftest import customers_frame
from tests.monitor.conftest import db_url, postgres_server  # noqa: F401


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

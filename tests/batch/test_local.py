"""Batch scoring on this machine: a real pool of scoring threads, real Parquet and CSV
files, and upserts into a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgefleet.central.batch.local import BatchJob, score_source
from edgefleet.central.batch.sinks import DatabaseSink, prediction_file, rejects_file
from edgefleet.central.batch.sources import open_input
from edgefleet.central.predictions import PredictionStore
from edgefleet.edge.scorer import Scorer
from edgefleet.errors import InputError, SignatureError
from tests.batch.conftest import customers_frame
from tests.monitor.conftest import db_url, postgres_server  # noqa: F401


def _scorer_scores(bundle: Path, public: Path, frame: pd.DataFrame) -> np.ndarray:
    scorer = Scorer.from_bundle(bundle, public)
    records = frame.drop(columns=["customer_id"]).to_dict("records")
    return np.asarray(scorer.positive(records), dtype=np.float64)


def test_a_parquet_folder_on_two_workers_equals_the_scorer(
    batch_bundle: Path, keypair: tuple[Path, Path], customers: pd.DataFrame, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    half = len(customers) // 2
    customers.iloc[:half].to_parquet(folder / "part-1.parquet", row_group_size=500)
    customers.iloc[half:].to_parquet(folder / "part-2.parquet", row_group_size=500)
    job = BatchJob(batch_bundle, keypair[1], "customer_id", workers=2, chunk_rows=400)
    seen: list[int] = []
    summary = score_source(
        job,
        open_input(folder),
        prediction_file(tmp_path / "out.parquet"),
        rejects_file(tmp_path / "rejects.csv"),
        lambda state: seen.append(state.rows),
    )
    assert (summary.scored, summary.rejected, summary.workers) == (len(customers), 0, 2)
    assert not (tmp_path / "rejects.csv").exists()  # nothing refused: no rejects file
    assert seen == sorted(seen)
    assert seen[-1] == len(customers)
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == ["key", "model", "version", "label", "score", "scored_at"]
    assert list(out.key) == list(customers.customer_id)  # input order kept
    expected = _scorer_scores(batch_bundle, keypair[1], customers)
    assert np.abs(out.score.to_numpy() - expected).max() <= 1e-6
    assert set(out.version) == {"1.0.0"}
    assert (out.label == np.where(expected >= 0.5, "Yes", "No")).all()


def test_bad_rows_are_rejected_with_their_reason_and_the_rest_scored(
    batch_bundle: Path, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    frame = customers_frame(200, seed=5).astype({"tenure_months": object})
    frame.loc[3, "tenure_months"] = "ten"
    frame.loc[7, "customer_id"] = None
    frame.loc[9, "contract"] = None
    frame.to_csv(tmp_path / "in.csv", index=False)
    with (tmp_path / "in.csv").open("a") as handle:
        handle.write("C-broken,1,2\n")  # a line with too few fields
    summary = score_source(
        BatchJob(batch_bundle, keypair[1], "customer_id", workers=1),
        open_input(tmp_path / "in.csv"),
        prediction_file(tmp_path / "out.csv"),
        rejects_file(tmp_path / "rejects.csv"),
    )
    assert (summary.scored, summary.rejected, len(summary.malformed)) == (197, 3, 1)
    rejects = pd.read_csv(tmp_path / "rejects.csv")
    reasons = dict(zip(rejects.row.fillna(-1).astype(int), rejects.reason, strict=True))
    assert reasons[3] == "field 'tenure_months': expected a number, got text 'ten'"
    assert reasons[7] == "key 'customer_id': the key is missing"
    assert reasons[9] == "field 'contract': value is missing and this feature requires one"
    assert "line 202 has 3 fields, the header 18" in reasons[-1]
    assert len(pd.read_csv(tmp_path / "out.csv")) == 197


def test_nightly_runs_upsert_by_key(
    batch_bundle: Path,
    keypair: tuple[Path, Path],
    tmp_path: Path,
    db_url: str,  # noqa: F811
) -> None:
    monday = customers_frame(300, seed=1)
    tuesday = monday.iloc[100:].copy()  # the first 100 customers left
    tuesday["monthly_charges"] = tuesday["monthly_charges"] * 1.5
    for night, frame in (("mon", monday), ("tue", tuesday)):
        frame.to_parquet(tmp_path / f"{night}.parquet")
        summary = score_source(
            BatchJob(batch_bundle, keypair[1], "customer_id", workers=1, chunk_rows=128),
            open_input(tmp_path / f"{night}.parquet"),
            DatabaseSink(db_url, "churn_scores"),
            rejects_file(tmp_path / f"{night}.rejects.csv"),
        )
        assert summary.scored == len(frame)
    with PredictionStore(db_url, "churn_scores") as store:
        assert store.count() == 300
        kept, replaced = store.get(monday.customer_id[0]), store.get(monday.customer_id[150])
    expected = _scorer_scores(batch_bundle, keypair[1], tuesday.loc[[150]])
    assert kept is not None
    assert replaced is not None
    assert kept.scored_at < replaced.scored_at
    assert replaced.score == pytest.approx(float(expected[0]), abs=1e-6)
    assert replaced.probabilities[1] == pytest.approx(replaced.score)


def test_a_bundle_signed_by_another_key_scores_nothing(
    batch_bundle: Path, customers: pd.DataFrame, tmp_path: Path
) -> None:
    from edgefleet.central.keys import generate_keys

    _, stranger, _ = generate_keys(tmp_path / "other")
    customers.to_parquet(tmp_path / "in.parquet")
    with pytest.raises(SignatureError):
        score_source(
            BatchJob(batch_bundle, stranger, "customer_id"),
            open_input(tmp_path / "in.parquet"),
            prediction_file(tmp_path / "out.parquet"),
            rejects_file(tmp_path / "rejects.csv"),
        )
    assert not (tmp_path / "out.parquet").exists()


def test_inputs_are_checked_before_scoring(
    batch_bundle: Path, keypair: tuple[Path, Path], customers: pd.DataFrame, tmp_path: Path
) -> None:
    customers.drop(columns=["contract"]).to_parquet(tmp_path / "no-contract.parquet")
    job = BatchJob(batch_bundle, keypair[1], "customer_id")
    with pytest.raises(InputError, match="lacks the column"):
        score_source(
            job,
            open_input(tmp_path / "no-contract.parquet"),
            prediction_file(tmp_path / "o.parquet"),
            rejects_file(tmp_path / "r.csv"),
        )
    with pytest.raises(InputError, match="does not exist"):
        open_input(tmp_path / "nothing-here")
    with pytest.raises(InputError, match=r"\.parquet or \.csv"):
        prediction_file(tmp_path / "out.json")

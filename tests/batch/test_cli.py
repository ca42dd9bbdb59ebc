"""``edgefleet batch score`` as a user runs it (real subprocesses, two scoring threads)
and the call centre's lookup, ``GET /api/predictions/KEY``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from edgefleet.web.app import create_app
from edgefleet.web.config import WebConfig

CLI = [sys.executable, "-m", "edgefleet.cli.main"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def scored_db(
    batch_bundle: Path, keypair: tuple[Path, Path], customers: pd.DataFrame, tmp_path: Path
) -> Path:
    customers.to_parquet(tmp_path / "customers.parquet", row_group_size=1000)
    result = run(
        "batch", "score", str(batch_bundle), "--input", "customers.parquet",
        "--key", "customer_id", "--db", "sqlite:///crm.db", "--table", "churn_scores",
        "--public-key", str(keypair[1]), "--workers", "2", "--chunk-rows", "700",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"scored {len(customers):,} rows of churn 1.0.0" in result.stderr
    assert "rejected 0" in result.stderr
    assert "rows/s ETA" in result.stderr  # the progress bar's final line
    return tmp_path / "crm.db"


def test_the_call_centre_looks_a_customer_up(scored_db: Path, tmp_path: Path) -> None:
    config = WebConfig(
        home=tmp_path,
        db=f"sqlite:///{tmp_path / 'monitor.db'}",
        predictions_db=f"sqlite:///{scored_db}",
        predictions_table="churn_scores",
        write_token=None,
    )
    client = create_app(config).test_client()
    found = client.get("/api/predictions/C23-000005")
    assert found.status_code == 200
    body = found.get_json()
    assert (body["key"], body["model"], body["version"]) == ("C23-000005", "churn", "1.0.0")
    assert body["label"] in ("Yes", "No")
    assert 0.0 <= body["score"] <= 1.0
    assert body["scored_at"] > 1.7e9
    assert body["scored_at_iso"].endswith("+00:00")
    missing = client.get("/api/predictions/nobody")
    assert missing.status_code == 404
    assert missing.get_json()["status"] == 404
    assert client.get("/api/predictions/" + "x" * 400).status_code == 400
    empty = create_app(
        WebConfig(home=tmp_path, db=f"sqlite:///{tmp_path / 'monitor.db'}", write_token=None)
    ).test_client()
    assert empty.get("/api/predictions/C23-000005").status_code == 404


def test_rejected_rows_exit_1_and_bad_options_exit_2(
    batch_bundle: Path, keypair: tuple[Path, Path], customers: pd.DataFrame, tmp_path: Path
) -> None:
    frame = customers.head(50).astype({"tenure_months": object})
    frame.loc[4, "tenure_months"] = "ten"
    frame.to_csv(tmp_path / "in.csv", index=False)
    common = [str(batch_bundle), "--input", "in.csv", "--public-key", str(keypair[1])]
    rejected = run("batch", "score", *common, "--key", "customer_id", "--out", "o.csv",
                   "--workers", "1", cwd=tmp_path)  # fmt: skip
    assert rejected.returncode == 1, rejected.stderr
    assert "rejected 1 (reasons in o.rejects.csv)" in rejected.stderr
    assert "expected a number, got text 'ten'" in (tmp_path / "o.rejects.csv").read_text()
    no_key = run("batch", "score", *common, "--db", "sqlite:///x.db", cwd=tmp_path)
    assert no_key.returncode == 2
    assert "--key COLUMN" in no_key.stderr
    wrong_key = run("batch", "score", *common, "--key", "id", "--out", "o.parquet", cwd=tmp_path)
    assert wrong_key.returncode == 2
    assert "the key column 'id' is not in the input" in wrong_key.stderr
    spark_no_key = run("batch", "score", *common, "--out", "o", "--engine", "spark", cwd=tmp_path)
    assert spark_no_key.returncode == 2
    assert "add --key COLUMN" in spark_no_key.stderr
    helped = run("batch", "score", "--help", cwd=tmp_path)
    assert "examples:" in helped.stdout

"""A model trained on one's own file is named after it, and `export latest` exports the
model just trained, saying which (issue 12, point 5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.central.data.generator import generate
from edgefleet.central.registry import Registry
from edgefleet.cli.cmd_train import name_from_path
from edgefleet.errors import InputError, RegistryError

CLI = [sys.executable, "-m", "edgefleet.cli.main"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_name_from_the_data_file_and_export_latest_takes_the_newest(tmp_path: Path) -> None:
    frame = generate(600, seed=3).frame
    frame.to_csv(tmp_path / "churn.csv", index=False)
    frame.to_csv(tmp_path / "Telco Customers.csv", index=False)
    train = ["train", "--target", "churn", "--model", "dt"]
    run(*train, "--data", "churn.csv", cwd=tmp_path)
    trained = run(*train, "--data", "Telco Customers.csv", cwd=tmp_path)
    assert "registered telco-customers 1.0.0" in trained.stderr
    assert "named after the data file" in trained.stderr
    run("keys", "generate", cwd=tmp_path)
    exported = run("export", "latest", "--formats", "onnx", "--out", "bundle", cwd=tmp_path)
    assert "latest: telco-customers 1.0.0" in exported.stderr
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["name"] == "telco-customers"


def test_names_and_references_that_cannot_be_resolved(tmp_path: Path) -> None:
    assert name_from_path(Path("data/My_Data.v2.parquet")) == "my_data-v2"
    with pytest.raises(InputError, match="--name"):
        name_from_path(Path("+++.csv"))
    registry = Registry(tmp_path)
    with pytest.raises(RegistryError, match="no versions of any model"):
        registry.get("latest")

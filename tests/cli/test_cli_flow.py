"""The command line end to end, as a user runs it: real files, real subprocesses."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "edgefleet.cli.main"]


def run(
    *args: str, cwd: Path, ok: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*CLI, *args], cwd=cwd, capture_output=True, text=True, input=stdin, timeout=300
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("cli")
    run("data", "generate", "--rows", "3000", "--seed", "5", "--out", "churn.csv", cwd=work)
    run(
        "train",
        "--data",
        "churn.csv",
        "--target",
        "churn",
        "--model",
        "gb",
        "--param",
        "n_estimators=30",
        cwd=work,
    )
    run("keys", "generate", cwd=work)
    run("export", "latest", "--formats", "onnx", "--out", "bundle", cwd=work)
    return work


def test_models_lists_the_version(workdir: Path) -> None:
    listing = json.loads(run("models", "--json", cwd=workdir).stdout)
    assert [(m["version"], m["family"]) for m in listing] == [("1.0.0", "gb")]
    assert listing[0]["params"]["n_estimators"] == 30


def test_verify_and_inspect(workdir: Path) -> None:
    verify = run("verify", "bundle", cwd=workdir)
    assert verify.stdout.strip() == "OK"
    assert "golden vectors OK" in verify.stderr
    inspect = run("inspect", "bundle", cwd=workdir).stdout
    assert "churn 1.0.0" in inspect
    assert "model.onnx" in inspect


def test_score_csv_streams_one_line_per_row(workdir: Path) -> None:
    result = run("score", "bundle", "--input", "churn.csv", cwd=workdir)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3000
    assert all(0.0 <= line["probability"] <= 1.0 for line in lines)
    assert [line["row"] for line in lines[:3]] == [0, 1, 2]


def test_score_jsonl_reports_bad_records_and_goes_on(workdir: Path) -> None:
    with (workdir / "churn.csv").open(newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if all(r.values()))
    good: dict[str, object] = {
        n: (float(v) if v.replace(".", "", 1).isdigit() else v)
        for n, v in row.items()
        if n != "churn"
    }
    bad = {**good, "tenure_months": "ten"}
    text = "\n".join([json.dumps(good), json.dumps(bad), "{not json", json.dumps(good)])
    result = run("score", "bundle", "--input", "-", cwd=workdir, ok=False, stdin=text)
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert "probability" in lines[0]
    assert "probability" in lines[3]
    assert "record 1, field 'tenure_months': expected a number" in lines[1]["error"]
    assert "line 3 is not JSON" in lines[2]["error"]
    assert lines[0]["probability"] == lines[3]["probability"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "--data", "nope.csv", "--target", "churn"), "nope.csv"),
        (("train", "--data", "churn.csv", "--target", "churned"), "churned"),
        (("export", "9.9.9", "--out", "x"), "has no version '9.9.9'"),
        (("verify", "bundle", "--key", "churn.csv"), "not a PEM public key"),
        (("score", "missing-bundle", "--input", "churn.csv"), "does not exist"),
    ],
)
def test_bad_input_gives_one_clear_line(workdir: Path, args: tuple[str, ...], message: str) -> None:
    result = run(*args, cwd=workdir, ok=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_teaches(workdir: Path) -> None:
    assert "A first run" in run("--help", cwd=workdir).stdout
    assert "examples:" in run("train", "--help", cwd=workdir).stdout

"""``edgefleet serve-model`` and ``edgefleet stream score`` refuse bad input with one clear
line, before starting anything."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgefleet.cli.main import main
from tests.serving.conftest import service_bundles  # noqa: F401


def test_serve_model_errors(
    service_bundles: list[Path],  # noqa: F811
    keypair: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve-model"]) == 2
    assert "give BUNDLE folders to serve, or --identity DIR" in capsys.readouterr().err
    assert main(["serve-model", str(service_bundles[0])]) == 2
    assert "--trust-key" in capsys.readouterr().err
    tampered = tmp_path / "tampered"
    shutil.copytree(service_bundles[0], tampered)
    manifest = tampered / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"1.0.0"', '"9.0.0"', 1))
    assert main(["serve-model", str(tampered), "--trust-key", str(keypair[1])]) == 2
    assert "signature" in capsys.readouterr().err
    twice = [str(service_bundles[0]), str(service_bundles[1]), "--trust-key", str(keypair[1])]
    assert main(["serve-model", *twice]) == 2
    assert "two bundles are named 'churn'" in capsys.readouterr().err


def test_stream_score_errors(
    service_bundles: list[Path],  # noqa: F811
    keypair: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["--db", f"sqlite:///{tmp_path / 'x.db'}", "--table", "t", "--key", "id"]
    bundle = [str(service_bundles[0]), "--trust-key", str(keypair[1])]
    assert main(["stream", "score", *bundle, "--source", "kafka://h/t", *common]) == 2
    assert "--source must be mqtt://HOST[:PORT]/TOPIC" in capsys.readouterr().err
    assert main(["stream", "score", "--source", "mqtt://h/t", *common]) == 2
    assert "give a BUNDLE, or join a fleet" in capsys.readouterr().err
    bad_table = ["--db", "sqlite:///x.db", "--table", "no such", "--key", "id"]
    assert main(["stream", "score", *bundle, "--source", "mqtt://h/t", *bad_table]) == 2
    assert "table name 'no such' is not usable" in capsys.readouterr().err

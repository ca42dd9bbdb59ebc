"""The scoring service's fixtures: signed bundles (the fleet tests' churn 1.0.0 and 1.1.0),
and the service running for real: worker processes on a real port, spoken to over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from edgefleet.central.serving.app import ServiceLimits
from edgefleet.central.serving.batcher import BatchLimits
from edgefleet.central.serving.service import ScoringService
from edgefleet.central.serving.worker import WorkerSpec
from edgefleet.central.trainer import TrainedModel
from tests.fleet.conftest import broker, unique  # noqa: F401
from tests.fleet.kit import export_versions


@pytest.fixture(scope="session")
def service_bundles(
    trained: Callable[[str], TrainedModel],
    keypair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> list[Path]:
    """churn 1.0.0 (decision tree) and 1.1.0 (logistic regression), signed by ``keypair``."""
    return export_versions(trained, keypair, tmp_path_factory.mktemp("serving-home"))


TASKS = ("multiclass", "regression")


@pytest.fixture(scope="session")
def task_bundles(
    keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Any]]:
    """Per task: the signed ONNX bundle of a brought pipeline (tests/monitor/brought.py,
    named after its task, version 1.0.0), and the user's fitted pipeline."""
    from edgefleet.central.export import export_bundle
    from edgefleet.edge.signing import load_private_key
    from tests.monitor import brought

    home = tmp_path_factory.mktemp("task-bundles")
    private = load_private_key(keypair[0])
    bundles = {}
    for task in TASKS:
        frame = brought.rows(task, 400, seed=3)
        user = brought.fitted(task, frame)
        version = brought.edgefleet.register(
            user, reference=frame, target=brought.TARGET, name=task, home=home
        )
        bundle = export_bundle(version, ["onnx"], home / f"{task}-bundle", private).bundle
        bundles[task] = (bundle, user)
    return bundles


def task_records(task: str, count: int = 7, seed: int = 11) -> pd.DataFrame:
    """Records of a brought model's task, without the target."""
    from tests.monitor import brought

    return brought.rows(task, count, seed=seed).drop(columns=[brought.TARGET])


def raw_key(public: Path) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from edgefleet.edge.signing import load_public_key

    return load_public_key(public).public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def make_spec(keypair: tuple[Path, Path], **overrides: Any) -> WorkerSpec:
    settings: dict[str, Any] = {
        "trusted_keys": (raw_key(keypair[1]),),
        "secret": b"s" * 32,
        "limits": ServiceLimits(threads=16, connections=200),
        "batching": BatchLimits(),
        **overrides,
    }
    return WorkerSpec(**settings)


def golden_records(bundle: Path, count: int = 5) -> list[dict[str, Any]]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return [g["record"] for g in manifest["golden"][:count]]


@pytest.fixture(scope="module")
def static_service(
    service_bundles: list[Path], keypair: tuple[Path, Path]
) -> Iterator[ScoringService]:
    """churn 1.0.0 alone, two workers."""
    spec = make_spec(keypair, bundles=(str(service_bundles[0]),))
    service = ScoringService(spec, workers=2).start()
    try:
        yield service
    finally:
        service.stop()

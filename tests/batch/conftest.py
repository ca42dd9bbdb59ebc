"""Fixtures of the batch tests: one signed ONNX bundle of a gradient-boosting churn model,
and generated customers with a key column, made once a session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from edgefleet.central.data.generator import generate
from edgefleet.central.export import export_bundle
from edgefleet.central.registry import Registry
from edgefleet.central.trainer import TrainedModel
from edgefleet.edge.signing import load_private_key
from tests.serving.conftest import task_bundles  # noqa: F401

CUSTOMERS = 3000


@pytest.fixture(scope="session")
def batch_bundle(
    trained: Callable[[str], TrainedModel],
    keypair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    home = tmp_path_factory.mktemp("batch-home")
    version = Registry(home).register(trained("gb"), data_sha256="b" * 64)
    return export_bundle(version, ["onnx"], home / "bundle", load_private_key(keypair[0])).bundle


def customers_frame(rows: int = CUSTOMERS, seed: int = 23) -> pd.DataFrame:
    """Generated customers (the target dropped) with a ``customer_id`` key column first."""
    frame = generate(rows, seed=seed).frame.drop(columns=["churn"])
    frame.insert(0, "customer_id", [f"C{seed:02d}-{i:06d}" for i in range(rows)])
    return frame


@pytest.fixture(scope="session")
def customers() -> pd.DataFrame:
    return customers_frame()


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One real Spark for the session: local[2], two shuffle partitions. Java and pyspark
    are installed by scripts/setup; without them this fails, it never skips."""
    from edgefleet.central.batch.spark import spark_session

    session = spark_session("local[2]", shuffle_partitions=2, app="edgefleet-tests")
    yield session
    session.stop()

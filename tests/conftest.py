"""Shared fixtures: generated data and one trained model per family, made once a session
(the models are produced by the code, never stored in git)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import TrainingTable, load_training_table
from edgefleet.central.trainer import TrainedModel, train

# Hypothesis's per-example deadline is a timing assertion: on a loaded 2-core CI machine a
# slow example is not a bug, so property tests are judged on what they assert, not on speed.
settings.register_profile("edgefleet", deadline=None)
settings.load_profile("edgefleet")

FAMILIES = ("logreg", "rf", "gb", "hgb", "et", "dt")
# Small but real: enough rows for every family to grow deep trees.
TRAIN_ROWS = 4000
# Test-sized parameters keep the suite fast; the defaults are exercised by the CLI tests.
SMALL_PARAMS: dict[str, dict[str, object]] = {
    "rf": {"n_estimators": 20},
    "et": {"n_estimators": 20},
    "gb": {"n_estimators": 40},
    "hgb": {"max_iter": 40},
}


@pytest.fixture(scope="session")
def churn_table() -> TrainingTable:
    data = generate(TRAIN_ROWS, seed=7)
    return load_training_table(data.frame, "churn", schema=data.schema)


@pytest.fixture(scope="session")
def trained(churn_table: TrainingTable) -> Callable[[str], TrainedModel]:
    """``trained("rf")`` -> a TrainedModel of that family, fitted once per session."""
    cache: dict[str, TrainedModel] = {}

    def get(family: str) -> TrainedModel:
        if family not in cache:
            cache[family] = train(churn_table, family, seed=3, params=SMALL_PARAMS.get(family))
        return cache[family]

    return get


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from edgefleet.central.keys import generate_keys

    private, public, _ = generate_keys(tmp_path_factory.mktemp("keys"))
    return private, public


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test never counts as passing: a skip fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if reporter and skipped and exitstatus == 0:
        reporter.write_line(f"{len(skipped)} test(s) skipped: a skip fails this suite", red=True)
        session.exitstatus = 1

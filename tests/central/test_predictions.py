"""The prediction table on a real SQLite file and a real PostgreSQL server: upsert by key
replaces the rows it scores and keeps the others."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from edgefleet.central.predictions import (
    Prediction,
    PredictionStore,
    check_key,
    check_table_name,
    predictions_from_scores,
)
from edgefleet.errors import InputError, StoreError
from tests.monitor.conftest import db_url, postgres_server  # noqa: F401

NIGHT = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


def _rows(keys: list[str], score: float, version: str, when: datetime) -> list[Prediction]:
    probabilities = np.array([[1 - score, score]] * len(keys))
    return predictions_from_scores(
        keys, probabilities, classes=("No", "Yes"), model="churn", version=version, scored_at=when
    )


def test_upsert_replaces_scored_keys_and_keeps_the_others(db_url: str) -> None:  # noqa: F811
    with PredictionStore(db_url, "nightly") as store:
        assert store.upsert(_rows(["a", "b", "c"], 0.2, "1.0.0", NIGHT)) == 3
        later = NIGHT + timedelta(days=1)
        assert store.upsert(_rows(["b", "c", "d"], 0.8, "1.1.0", later)) == 3
        assert store.count() == 4
        a, b = store.get("a"), store.get("b")
        assert a is not None
        assert (a.version, a.label) == ("1.0.0", "No")
        assert a.scored_at == NIGHT
        assert b is not None
        assert (b.version, b.label) == ("1.1.0", "Yes")
        assert b.score == pytest.approx(0.8)
        assert b.probabilities == pytest.approx((0.2, 0.8))
        assert b.scored_at == later
        assert store.get("zzz") is None


def test_a_key_repeated_in_one_batch_keeps_its_last_row(db_url: str) -> None:  # noqa: F811
    with PredictionStore(db_url) as store:
        rows = _rows(["k"], 0.1, "1.0.0", NIGHT) + _rows(["k"], 0.9, "1.0.0", NIGHT)
        assert store.upsert(rows) == 1
        row = store.get("k")
        assert row is not None
        assert row.score == pytest.approx(0.9)


def test_large_batches_are_written_in_chunks(db_url: str) -> None:  # noqa: F811
    keys = [f"c{i:05d}" for i in range(4500)]
    with PredictionStore(db_url) as store:
        assert store.upsert(_rows(keys, 0.3, "1.0.0", NIGHT)) == 4500
        assert store.count() == 4500


def test_bad_names_keys_and_urls_are_refused() -> None:
    with pytest.raises(InputError, match="table name"):
        check_table_name("predictions; DROP TABLE x")
    with pytest.raises(InputError, match="missing"):
        check_key(float("nan"))
    with pytest.raises(InputError, match="characters long"):
        check_key("x" * 300)
    assert check_key(17.0) == "17"
    with pytest.raises(StoreError, match="cannot open") as refused:
        PredictionStore("mysql+nosuchdriver://u:secret@h/db")
    assert "secret" not in str(refused.value)

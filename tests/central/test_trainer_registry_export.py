"""Training, the registry and the export's parity gate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgefleet.central.data.loader import TrainingTable
from edgefleet.central.export import export_bundle
from edgefleet.central.registry import Registry
from edgefleet.central.trainer import UNSEEN_CATEGORY, TrainedModel, train
from edgefleet.edge.profile import NumericProfile, score_histogram
from edgefleet.edge.signing import load_private_key
from edgefleet.errors import InputError, ParityError, RegistryError


def test_metrics_are_holdout_metrics(trained: Callable[[str], TrainedModel]) -> None:
    model = trained("logreg")
    assert set(model.metrics) >= {"auroc", "average_precision", "log_loss", "brier"}
    assert 0.7 < model.metrics["auroc"] < 1.0
    assert model.metrics["rows"] == len(model.holdout_labels)


def test_reference_profile_counts_every_training_row(
    trained: Callable[[str], TrainedModel],
) -> None:
    model = trained("rf")
    reference = model.reference
    assert reference.rows == model.train_rows
    for feature in reference.features:
        extra = feature.missing if isinstance(feature, NumericProfile) else feature.unknown
        assert sum(feature.counts) + extra == model.train_rows
    scores = model.pipeline.predict_proba(model.holdout_inputs)[:, 1]
    assert list(reference.scores.counts) == list(score_histogram(scores))
    assert sum(reference.scores.by_label[1]) == int(model.holdout_labels.sum())


def test_golden_vectors_cover_edge_cases(trained: Callable[[str], TrainedModel]) -> None:
    model = trained("hgb")
    notes = [g.note for g in model.golden]
    assert sum(n.startswith("holdout row") for n in notes) == 24
    assert any(n == "unseen category of region" for n in notes)
    assert any(n == "missing total_charges" for n in notes)
    assert any(n.startswith("maximum of ") for n in notes)
    unseen = next(g for g in model.golden if g.note == "unseen category of region")
    assert unseen.record["region"] == UNSEEN_CATEGORY
    expected = model.pipeline.predict_proba(model.golden_inputs())
    assert np.allclose(expected, [g.probabilities for g in model.golden], atol=0)


def test_unknown_family_lists_choices(churn_table: TrainingTable) -> None:
    with pytest.raises(InputError, match="choose one of: logreg, rf, gb, hgb, et, dt"):
        train(churn_table, "svm")


def test_registry_versions_increase(trained: Callable[[str], TrainedModel], tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    first = registry.register(trained("dt"), data_sha256="a" * 64)
    second = registry.register(trained("logreg"), data_sha256="b" * 64)
    assert (first.version, second.version) == ("1.0.0", "1.1.0")
    assert registry.get("latest").version == "1.1.0"
    assert registry.get("churn@1.0.0").family == "dt"
    reopened = Registry(tmp_path)
    assert [v.version for v in reopened.versions()] == ["1.0.0", "1.1.0"]
    with pytest.raises(RegistryError, match=r"has no version '7.0.0' \(it has: 1.0.0, 1.1.0\)"):
        reopened.get("7.0.0")


def test_export_refuses_parity_failure_and_writes_nothing(
    trained: Callable[[str], TrainedModel], keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    """A real ONNX artifact (max diff ~1e-7) against an impossible tolerance."""
    version = Registry(tmp_path).register(trained("rf"), data_sha256="c" * 64)
    out = tmp_path / "bundle"
    with pytest.raises(ParityError, match=r"onnx artifact of churn 1.0.0 differs .* No bundle"):
        export_bundle(version, ["onnx"], out, load_private_key(keypair[0]), tolerance=1e-15)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export-")] == []


def test_export_refuses_non_empty_destination(
    trained: Callable[[str], TrainedModel], keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    version = Registry(tmp_path).register(trained("dt"), data_sha256="d" * 64)
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        export_bundle(version, ["onnx"], out, load_private_key(keypair[0]))
    assert (out / "precious.txt").read_text() == "keep me"

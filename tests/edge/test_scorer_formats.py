"""The Scorer on a bundle with several formats: same API, same answers, clear refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgefleet.central.export import ExportResult, export_bundle
from edgefleet.central.registry import Registry
from edgefleet.central.trainer import TrainedModel
from edgefleet.edge.scorer import Scorer
from edgefleet.edge.signing import load_private_key
from edgefleet.errors import RuntimeUnavailableError


@pytest.fixture(scope="module")
def two_formats(
    trained: Callable[[str], TrainedModel],
    keypair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> ExportResult:
    home = tmp_path_factory.mktemp("formats")
    version = Registry(home).register(trained("hgb"), data_sha256="e" * 64)
    return export_bundle(version, ["onnx", "tflite"], home / "bundle", load_private_key(keypair[0]))


def test_default_is_the_first_runnable_format(
    two_formats: ExportResult, keypair: tuple[Path, Path]
) -> None:
    assert Scorer.from_bundle(two_formats.bundle, keypair[1]).format == "onnx"


def test_tflite_and_onnx_score_alike(
    two_formats: ExportResult, keypair: tuple[Path, Path], trained: Callable[[str], TrainedModel]
) -> None:
    onnx = Scorer.from_bundle(two_formats.bundle, keypair[1], format="onnx")
    tflite = Scorer.from_bundle(two_formats.bundle, keypair[1], format="tflite")
    assert tflite.format == "tflite"
    records = [g.record for g in tflite.manifest.golden]
    assert np.abs(onnx.score(records) - tflite.score(records)).max() <= 1e-5
    inputs = trained("hgb").holdout_inputs
    expected = trained("hgb").pipeline.predict_proba(inputs)
    assert np.abs(tflite.score(inputs) - expected).max() <= 1e-5
    one = tflite.score(records[0])
    assert one.shape == (1, 2)


def test_asking_for_a_format_the_bundle_lacks(
    trained: Callable[[str], TrainedModel], keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    version = Registry(tmp_path).register(trained("dt"), data_sha256="f" * 64)
    only_onnx = export_bundle(version, ["onnx"], tmp_path / "b", load_private_key(keypair[0]))
    with pytest.raises(RuntimeUnavailableError, match=r"no tflite artifact \(it has: onnx\)"):
        Scorer.from_bundle(only_onnx.bundle, keypair[1], format="tflite")


@pytest.mark.parametrize("fmt", ["coreml", "web"])
def test_formats_the_edge_cannot_run_are_named(
    two_formats: ExportResult, keypair: tuple[Path, Path], fmt: str
) -> None:
    with pytest.raises(RuntimeUnavailableError, match=f"cannot run {fmt} models; it runs: onnx"):
        Scorer.from_bundle(two_formats.bundle, keypair[1], format=fmt)

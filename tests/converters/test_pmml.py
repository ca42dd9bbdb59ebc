"""PMML export: every family's document, run by the real JPMML-Evaluator (Java, through
JPype), reproduces scikit-learn within the parity tolerance; devices never load it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgefleet.central.trainer import TrainedModel
from edgefleet.converters.registry import DEFAULT_FORMATS, export_format, formats_for
from edgefleet.converters.source import ConversionSource
from edgefleet.edge.backends.base import choose_format
from edgefleet.edge.manifest import DEFAULT_TOLERANCE
from edgefleet.errors import RuntimeUnavailableError
from tests.conftest import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_pmml_parity_in_jpmml_evaluator(
    trained: Callable[[str], TrainedModel], family: str
) -> None:
    model = trained(family)
    inputs = np.concatenate([model.holdout_inputs, model.golden_inputs()])
    # The golden vectors hold the edge cases: missing numerics, unknown category codes.
    assert np.isnan(inputs).any()
    pmml = export_format("pmml")
    artifact = pmml.convert(ConversionSource(model.pipeline, model.schema, family, inputs[:4]))
    assert artifact.startswith(b"<?xml")
    got = pmml.predict(artifact, inputs)
    assert got.shape == (len(inputs), 2)
    assert np.abs(got - model.pipeline.predict_proba(inputs)).max() <= DEFAULT_TOLERANCE


def test_pmml_covers_every_family_but_is_not_a_device_format() -> None:
    assert all("pmml" in formats_for(family) for family in FAMILIES)
    assert "pmml" not in DEFAULT_FORMATS
    with pytest.raises(RuntimeUnavailableError, match="cannot run pmml"):
        choose_format(("onnx", "pmml"), "pmml")
    assert choose_format(("pmml", "onnx")) == "onnx"


def test_export_with_pmml_signs_it_and_a_device_scores_onnx(
    trained: Callable[[str], TrainedModel], keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    from edgefleet.central.export import export_bundle
    from edgefleet.central.registry import Registry
    from edgefleet.edge.scorer import Scorer
    from edgefleet.edge.signing import load_private_key

    version = Registry(tmp_path / "home").register(trained("gb"), data_sha256="d" * 64)
    result = export_bundle(
        version, ["onnx", "pmml"], tmp_path / "bundle", load_private_key(keypair[0])
    )
    assert {f.format for f in result.formats} == {"onnx", "pmml"}
    assert (tmp_path / "bundle" / "model.pmml").is_file()
    assert result.manifest.parity["pmml"] <= DEFAULT_TOLERANCE
    scorer = Scorer.from_bundle(tmp_path / "bundle", keypair[1])
    assert scorer.format == "onnx"


def test_formats_command_lists_pmml_and_its_families(capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.cli.main import main

    assert main(["formats"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[-5:] == ["onnx", "tflite", "web", "coreml", "pmml"]
    forest = next(line for line in out.splitlines() if line.startswith("RandomForest"))
    assert forest.split()[-1] == "yes"
    assert "pmml    model.pmml" in out
    assert "central only" in out

"""Bundles a device must refuse, each with a message that says why."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.central.export import ExportResult, export_bundle
from edgefleet.central.keys import generate_keys
from edgefleet.central.registry import Registry
from edgefleet.central.trainer import TrainedModel
from edgefleet.edge.bundle import open_bundle
from edgefleet.edge.scorer import Scorer
from edgefleet.edge.signing import load_private_key, load_public_key, sign
from edgefleet.errors import ArtifactError, ManifestError, SelfTestError, SignatureError


@pytest.fixture(scope="module")
def exported(
    trained: Callable[[str], TrainedModel],
    keypair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> ExportResult:
    home = tmp_path_factory.mktemp("home")
    version = Registry(home).register(trained("rf"), data_sha256="0" * 64)
    return export_bundle(version, ["onnx"], home / "bundle", load_private_key(keypair[0]))


@pytest.fixture
def bundle(exported: ExportResult, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(exported.bundle, copy)
    return copy


def test_good_bundle_verifies_and_scores(bundle: Path, keypair: tuple[Path, Path]) -> None:
    verified = open_bundle(bundle, [load_public_key(keypair[1])])
    assert verified.verified_formats == ("onnx",)
    scorer = Scorer.from_bundle(bundle, keypair[1])
    assert scorer.self_test_error is not None
    assert scorer.self_test_error <= 1e-5


def test_flipped_byte_in_model_is_refused(bundle: Path, keypair: tuple[Path, Path]) -> None:
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.onnx has sha256 .* modified or corrupted"):
        Scorer.from_bundle(bundle, keypair[1])


def test_truncated_model_is_refused_by_size(bundle: Path, keypair: tuple[Path, Path]) -> None:
    model = bundle / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"has 1000 bytes, the manifest says .*truncated"):
        Scorer.from_bundle(bundle, keypair[1])


def test_missing_artifact_is_refused(bundle: Path, keypair: tuple[Path, Path]) -> None:
    (bundle / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"onnx artifact model\.onnx is missing"):
        Scorer.from_bundle(bundle, keypair[1])


def test_edited_manifest_fails_signature(bundle: Path, keypair: tuple[Path, Path]) -> None:
    manifest = bundle / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version": "1.0.0"', '"version": "9.0.0"'))
    with pytest.raises(SignatureError, match="bad signature: the signed bytes were changed"):
        Scorer.from_bundle(bundle, keypair[1])


def test_corrupt_signature_is_refused(bundle: Path, keypair: tuple[Path, Path]) -> None:
    document = json.loads((bundle / "manifest.sig").read_text())
    document["signature"] = "A" * len(document["signature"])
    (bundle / "manifest.sig").write_text(json.dumps(document))
    with pytest.raises(SignatureError, match="bad signature"):
        Scorer.from_bundle(bundle, keypair[1])


def test_wrong_key_is_named(bundle: Path, tmp_path: Path) -> None:
    _, other_public, other_id = generate_keys(tmp_path / "other")
    with pytest.raises(SignatureError, match=rf"not trusted here \(trusted: {other_id}\)"):
        Scorer.from_bundle(bundle, other_public)


def test_unsigned_bundle_is_refused(bundle: Path, keypair: tuple[Path, Path]) -> None:
    (bundle / "manifest.sig").unlink()
    with pytest.raises(SignatureError, match=r"unsigned: manifest\.sig is missing"):
        Scorer.from_bundle(bundle, keypair[1])


def test_truncated_manifest_says_truncated(bundle: Path, keypair: tuple[Path, Path]) -> None:
    manifest = bundle / "manifest.json"
    data = manifest.read_bytes()
    manifest.write_bytes(data[: len(data) // 2])
    with pytest.raises(ManifestError, match=r"not valid JSON .*truncated"):
        Scorer.from_bundle(bundle, keypair[1])


def test_not_a_bundle(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    with pytest.raises(ManifestError, match=r"no manifest\.json"):
        Scorer.from_bundle(tmp_path, keypair[1])


def test_signed_but_wrong_golden_vectors_fail_self_test(
    bundle: Path, keypair: tuple[Path, Path]
) -> None:
    """A publisher bug (not an attack): correctly signed, but the model does not reproduce
    its own golden vectors. The device must refuse it before use."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["golden"][0]["probabilities"] = [0.5, 0.5]
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    (bundle / "manifest.json").write_bytes(data)
    (bundle / "manifest.sig").write_bytes(sign(data, load_private_key(keypair[0])))
    with pytest.raises(SelfTestError, match="fails its self-test: golden vector 0"):
        Scorer.from_bundle(bundle, keypair[1])


def test_path_escaping_artifact_is_refused(bundle: Path, keypair: tuple[Path, Path]) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["artifacts"][0]["path"] = "../../etc/passwd"
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    (bundle / "manifest.json").write_bytes(data)
    (bundle / "manifest.sig").write_bytes(sign(data, load_private_key(keypair[0])))
    with pytest.raises(ManifestError, match="leaves the bundle"):
        Scorer.from_bundle(bundle, keypair[1])


def test_tar_bundle_verifies(bundle: Path, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    archive = shutil.make_archive(str(tmp_path / "bundle"), "tar", bundle.parent, bundle.name)
    scorer = Scorer.from_bundle(archive, keypair[1])
    assert scorer.version == "1.0.0"

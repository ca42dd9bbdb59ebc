"""The device's model store."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.edge.agent.store import ModelStore

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64


def test_relative_state_dir_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: `--state-dir state` (relative) refused every file as escaping."""
    monkeypatch.chdir(tmp_path)
    store = ModelStore(Path("state"))
    written = store.write(SHA_A, "manifest.json", b"{}")
    assert written.read_bytes() == b"{}"
    assert store.has_file(SHA_A, "manifest.json")


@pytest.mark.parametrize("relative", ["../escape", "../../etc/passwd", "/abs/path"])
def test_paths_leaving_the_model_folder_are_refused(tmp_path: Path, relative: str) -> None:
    with pytest.raises(ValueError, match="leaves the model folder"):
        ModelStore(tmp_path).write(SHA_A, relative, b"x")


def test_not_a_sha_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a sha256"):
        ModelStore(tmp_path).folder("../x")


def test_activate_revert_and_prune(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for sha in (SHA_A, SHA_B, SHA_C):
        store.write(sha, "manifest.json", sha.encode())
    store.activate(SHA_A)
    store.activate(SHA_B)
    assert (store.pointer().active, store.pointer().previous) == (SHA_B, SHA_A)
    assert store.activate(SHA_B).previous == SHA_A  # activating the active one again is a no-op
    store.prune()
    assert not store.folder(SHA_C).exists()
    assert store.folder(SHA_A).exists()
    assert store.revert().active == SHA_A
    assert ModelStore(tmp_path).pointer().active == SHA_A  # persisted

"""The device's model store: every installed model in its own folder, and a pointer file
that names the active model and the last good one.

    STATE_DIR/models/<manifest sha256>/manifest.json, manifest.sig, <artifact>
    STATE_DIR/models/pointer.json   {"active": sha, "previous": sha}

Every file is written to a temporary name, fsynced, renamed over its final name, and the
folder fsynced: a crash at any instant leaves either the old file or the new one, never a
torn one. The pointer changes last, so the active model is always one whose files were
complete before it became active.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

_SHA_CHARS = frozenset("0123456789abcdef")


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name per call: two threads saving the same file must not share one.
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class Pointer:
    active: str | None
    previous: str | None


class ModelStore:
    def __init__(self, root: Path):
        # Resolved: the escape check in write() compares resolved paths.
        self.root = Path(root).resolve() / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self._pointer_path = self.root / "pointer.json"

    def folder(self, manifest_sha256: str) -> Path:
        if len(manifest_sha256) != 64 or not set(manifest_sha256) <= _SHA_CHARS:
            raise ValueError(f"not a sha256: {manifest_sha256!r}")
        return self.root / manifest_sha256

    def write(self, manifest_sha256: str, relative: str, data: bytes) -> Path:
        target = self.folder(manifest_sha256) / relative
        if self.folder(manifest_sha256) not in target.resolve().parents:
            raise ValueError(f"{relative!r} leaves the model folder")
        atomic_write(target, data)
        return target

    def has_file(self, manifest_sha256: str, relative: str) -> bool:
        return (self.folder(manifest_sha256) / relative).is_file()

    def pointer(self) -> Pointer:
        try:
            raw = json.loads(self._pointer_path.read_text())
            return Pointer(active=raw.get("active"), previous=raw.get("previous"))
        except FileNotFoundError:
            return Pointer(active=None, previous=None)
        except (json.JSONDecodeError, AttributeError):
            # Cannot happen with atomic writes; a hand-edited file must not brick the device.
            return Pointer(active=None, previous=None)

    def activate(self, manifest_sha256: str) -> Pointer:
        """Make ``manifest_sha256`` active; the model active before becomes ``previous``."""
        current = self.pointer()
        previous = current.previous if current.active == manifest_sha256 else current.active
        pointer = Pointer(active=manifest_sha256, previous=previous)
        atomic_write(self._pointer_path, json.dumps(pointer.__dict__).encode())
        return pointer

    def revert(self) -> Pointer:
        """Make the previous model active again (a failed activation)."""
        current = self.pointer()
        pointer = Pointer(active=current.previous, previous=None)
        atomic_write(self._pointer_path, json.dumps(pointer.__dict__).encode())
        return pointer

    def prune(self, also_keep: set[str] | None = None) -> None:
        """Remove model folders that are neither active nor previous (nor in
        ``also_keep``: a challenger scored in shadow)."""
        keep = {p for p in (self.pointer().active, self.pointer().previous) if p}
        keep |= also_keep or set()
        for child in self.root.iterdir():
            if child.is_dir() and child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)

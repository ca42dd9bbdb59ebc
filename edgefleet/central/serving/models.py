"""The models one worker process serves, each with its batcher and, in a fleet, the
sketches of its report window. A model is replaced without failing a request: requests
already queued finish on the old model's batcher, which then drains and stops; a request
that reaches a retired batcher is encoded again for the new model."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.central.serving.batcher import Batch, Batcher, BatchLimits
from edgefleet.edge.scorer import Scorer
from edgefleet.edge.sketch import ReportBody
from edgefleet.edge.sketch_builder import SketchBuilder
from edgefleet.errors import EdgefleetError


class UnknownModelError(EdgefleetError):
    """No model of that name (or version) is served here."""


class NotLoadedError(EdgefleetError):
    """No model is loaded yet (a fleet member waiting for its first one): retry soon."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    scorer: Scorer
    batcher: Batcher
    builder: SketchBuilder | None
    manifest_sha256: str | None

    @property
    def version(self) -> str:
        return self.scorer.manifest.version

    def count_failed(self, records: int) -> None:
        if self.builder is not None:
            schema = self.scorer.manifest.schema
            empty = np.zeros((0, schema.n_features), dtype=np.float32)
            outputs = np.zeros((0, schema.n_outputs), dtype=np.float32)
            self.builder.add(empty, outputs, None, n_failed=records)


def _run(scorer: Scorer) -> Any:
    def run(rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return scorer.backend.predict_proba(rows)

    return run


def _counter(builder: SketchBuilder | None) -> Any:
    def count(batch: Batch) -> None:
        if builder is not None:
            builder.add(batch.rows, batch.result, batch.latencies)

    return count


class Catalog:
    """Name -> the model served under it. ``reporting``: keep report sketches (a fleet
    member) or not (bundles served on their own)."""

    def __init__(self, limits: BatchLimits, *, reporting: bool) -> None:
        self.limits = limits
        self.reporting = reporting
        self._models: dict[str, ServedModel] = {}
        self._retired: list[ServedModel] = []
        self._lock = threading.Lock()
        self._loaded = threading.Condition(self._lock)

    def install(self, scorer: Scorer, manifest_sha256: str | None = None) -> ServedModel:
        """Serve ``scorer`` under its manifest's name, replacing what was served there."""
        manifest = scorer.manifest
        builder = SketchBuilder.from_manifest(manifest) if self.reporting else None
        batcher = Batcher(
            _run(scorer), self.limits, on_batch=_counter(builder), name=f"batcher-{manifest.name}"
        )
        model = ServedModel(manifest.name, scorer, batcher, builder, manifest_sha256)
        with self._lock:
            old = self._models.get(manifest.name)
            self._models[manifest.name] = model
            self._loaded.notify_all()
        if old is not None:
            self._retired.append(old)
            # Drains what is queued on the old model, off the caller's thread.
            threading.Thread(target=old.batcher.stop, name="retire", daemon=True).start()
        return model

    def get(self, name: str, wait: float = 0.0) -> ServedModel:
        """The model served as ``name``. Before any model is loaded (a fleet member's worker
        just started), wait up to ``wait`` seconds for one rather than refuse at once."""
        with self._lock:
            if not self._models and wait > 0:
                self._loaded.wait_for(lambda: bool(self._models), timeout=wait)
            if not self._models:
                raise NotLoadedError("no model is loaded yet: retry shortly")
        model = self._models.get(name)
        if model is None:
            raise UnknownModelError(
                f"no model named {name!r} is served here"
                + (f" (serving: {', '.join(sorted(self._models))})" if self._models else "")
            )
        return model

    def names(self) -> list[str]:
        return sorted(self._models)

    @property
    def ready(self) -> bool:
        return bool(self._models)

    def roll(self) -> list[ReportBody]:
        """The counts since the last roll, of every model that has any (a retired model's
        last ones included), and forget retired models that are drained."""
        bodies = []
        with self._lock:
            current = list(self._models.values())
            retired, self._retired = self._retired, []
        # Whether a retired batcher still runs is read before its roll: one that stopped
        # by then scores nothing after it.
        draining = [m for m in retired if m.batcher.running]
        for model in current + retired:
            if model.builder is None:
                continue
            body = model.builder.roll()
            if body.scored or body.failed:
                bodies.append(body)
        with self._lock:
            self._retired.extend(draining)
        return bodies

    def stop(self) -> None:
        for model in list(self._models.values()):
            model.batcher.stop()

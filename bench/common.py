"""Helpers shared by the benchmarks: timing by medians, and a trained, exported model."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import data_sha256, load_training_table
from edgefleet.central.export import ExportResult, export_bundle
from edgefleet.central.keys import generate_keys
from edgefleet.central.registry import ModelVersion, Registry
from edgefleet.central.trainer import train
from edgefleet.edge.signing import load_private_key


def median_seconds(function: Callable[[], Any], *, repeat: int, warmup: int = 20) -> float:
    """Median wall time of one call. Medians, not means: these machines are noisy, and a
    median of interleaved runs is what a ratio between two candidates can trust."""
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


@dataclass(frozen=True)
class Exported:
    version: ModelVersion
    result: ExportResult
    public_key: Path
    workdir: Path


def train_and_export(
    family: str, formats: tuple[str, ...], *, rows: int = 20000, seed: int = 0
) -> Exported:
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    data = generate(rows, seed=seed)
    table = load_training_table(data.frame, "churn", schema=data.schema)
    model = train(table, family, seed=seed)
    version = Registry(workdir).register(model, data_sha256=data_sha256(data.frame))
    private, public, _ = generate_keys(workdir / "keys")
    result = export_bundle(version, formats, workdir / "bundle", load_private_key(private))
    return Exported(version, result, public, workdir)

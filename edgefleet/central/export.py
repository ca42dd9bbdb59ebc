"""Export a registered version as a signed bundle: convert to each format, prove parity
with scikit-learn on the holdout and the golden vectors, write the artifacts and the
manifest, sign it.

Everything is written into a staging folder beside the destination and moved into place
only when every format passed, so a failed export leaves no half-written bundle.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.central.registry import ModelVersion
from edgefleet.central.trainer import model_outputs
from edgefleet.converters.parity import ParityResult, measure_parity, require_parity
from edgefleet.converters.registry import export_format
from edgefleet.converters.source import ConversionSource
from edgefleet.edge.bundle import MANIFEST_FILE, SIGNATURE_FILE
from edgefleet.edge.hashing import sha256_bytes
from edgefleet.edge.manifest import DEFAULT_TOLERANCE, Artifact, Manifest, task_tolerance
from edgefleet.edge.signing import sign
from edgefleet.errors import InputError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FormatReport:
    format: str
    path: str
    bytes: int
    seconds: float
    parity: ParityResult


@dataclass(frozen=True)
class ExportResult:
    manifest: Manifest
    bundle: Path
    formats: tuple[FormatReport, ...]


def export_bundle(
    version: ModelVersion,
    formats: Sequence[str],
    out: Path,
    private_key: Ed25519PrivateKey,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
    progress: Progress = lambda _: None,
) -> ExportResult:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} exists and is not empty; choose another --out or pass --force")
    card = version.load_card()
    pipeline = version.load_pipeline()
    check_inputs = np.concatenate([card.holdout_inputs, card.golden_inputs()])
    expected = model_outputs(pipeline, card.schema, check_inputs)
    tolerance = task_tolerance(card.schema.task, expected, tolerance)
    source = ConversionSource(
        pipeline=pipeline,
        schema=card.schema,
        family=version.family,
        sample=card.holdout_inputs[:16],
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        artifacts: list[Artifact] = []
        reports: list[FormatReport] = []
        for name in formats:
            fmt = export_format(name)
            progress(f"{name}: converting")
            started = time.perf_counter()
            data = fmt.convert(source)
            seconds = time.perf_counter() - started
            progress(f"{name}: checking parity on {len(check_inputs)} rows")
            got = fmt.predict(data, check_inputs)
            parity = measure_parity(name, got, expected, card.schema.task)
            require_parity(parity, tolerance, version.label)
            target = staging / fmt.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            for relative, content in fmt.support_files().items():
                support = staging / relative
                support.parent.mkdir(parents=True, exist_ok=True)
                support.write_bytes(content)
            artifacts.append(
                Artifact(
                    format=name,
                    path=fmt.filename,
                    sha256=sha256_bytes(data),
                    bytes=len(data),
                    runtime=fmt.runtime,
                )
            )
            reports.append(FormatReport(name, fmt.filename, len(data), seconds, parity))
            progress(f"{name}: {len(data):,} bytes, max |diff| {parity.max_abs_diff:.2g}")
        manifest = version.manifest(
            card,
            artifacts=tuple(artifacts),
            parity={r.format: r.parity.max_abs_diff for r in reports},
            tolerance=tolerance,
            created=datetime.now(UTC),
        )
        manifest_bytes = manifest.to_bytes()
        (staging / MANIFEST_FILE).write_bytes(manifest_bytes)
        (staging / SIGNATURE_FILE).write_bytes(sign(manifest_bytes, private_key))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(manifest=manifest, bundle=out, formats=tuple(reports))

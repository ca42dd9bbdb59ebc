"""Self-test of a model on its manifest's golden vectors, before it is used."""

from __future__ import annotations

import numpy as np

from edgefleet.edge.backends.base import Backend
from edgefleet.edge.encoding import RecordEncoder
from edgefleet.edge.manifest import REGRESSION_RTOL, Manifest, within_tolerance
from edgefleet.errors import RecordError, SelfTestError


def run_self_test(manifest: Manifest, backend: Backend, encoder: RecordEncoder) -> float:
    """Check that the encoder reproduces each golden input and the backend each golden
    output (probabilities, or a regressor's value) within the manifest's tolerance
    (:func:`~edgefleet.edge.manifest.within_tolerance`). Returns the largest difference
    seen."""
    if not manifest.golden:
        raise SelfTestError(f"{manifest.label} carries no golden vectors to self-test with")
    expected_inputs = np.array([g.input_values() for g in manifest.golden], dtype=np.float32)
    for index, golden in enumerate(manifest.golden):
        try:
            row = np.array(encoder.encode_row(golden.record, index), dtype=np.float32)
        except RecordError as error:
            raise SelfTestError(
                f"golden vector {index} ({golden.note}) cannot be encoded: {error}"
            ) from None
        if not np.array_equal(row, expected_inputs[index], equal_nan=True):
            raise SelfTestError(
                f"golden vector {index} ({golden.note}) encodes differently on this device: "
                f"the feature schema and the encoder disagree"
            )
    expected = np.array([g.probabilities for g in manifest.golden], dtype=np.float64)
    got = backend.predict_proba(expected_inputs).astype(np.float64)
    if got.shape != expected.shape:
        raise SelfTestError(
            f"the {backend.format} model returns shape {list(got.shape)}, the "
            f"golden vectors expect {list(expected.shape)}"
        )
    difference = np.abs(got - expected)
    worst = float(np.nanmax(difference)) if difference.size else 0.0
    task = manifest.schema.task
    agrees = within_tolerance(got, expected, task=task, tolerance=manifest.tolerance)
    if not agrees.all():
        index = int(np.argmin(agrees.all(axis=1)))
        off = float(np.nanmax(difference[index])) if np.isfinite(difference[index]).any() else worst
        relative = f" + {REGRESSION_RTOL:g} x |value|" if task == "regression" else ""
        raise SelfTestError(
            f"the {backend.format} model of {manifest.label} fails its self-test: golden vector "
            f"{index} ({manifest.golden[index].note}) is off by {off:.3g} (tolerance "
            f"{manifest.tolerance:g}{relative})"
        )
    return worst

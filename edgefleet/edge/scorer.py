"""Score records with a verified bundle: the edge's in-process API.

    scorer = Scorer.from_bundle("bundle/", trusted_keys="edgefleet.pub")
    scorer.score({"tenure_months": 3, "contract": "month-to-month", ...})  # -> [[0.71, 0.29]]
    scorer.predict({...})  # -> ["no"] (a class label), or [183.2] for a regressor

``score`` always returns float32 ``[N, n_outputs]`` (docs/architecture.md §2): the class
probabilities in schema class order, or a regressor's value in one column. ``predict`` gives
the label of the most probable class or the value; ``positive`` gives a binary model's
positive class column (the churn probability).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.edge.backends.base import Backend, backend_spec, choose_format
from edgefleet.edge.bundle import VerifiedBundle, open_bundle
from edgefleet.edge.encoding import RecordEncoder
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.schema import FeatureSchema
from edgefleet.edge.selftest import run_self_test
from edgefleet.edge.signing import TrustedKey, load_public_key
from edgefleet.errors import InputError

Records = Mapping[str, Any] | Sequence[Mapping[str, Any]] | npt.NDArray[Any]


def trusted_keys_from(
    keys: TrustedKey | str | Path | Sequence[TrustedKey | str | Path],
) -> list[TrustedKey]:
    items = keys if isinstance(keys, Sequence) and not isinstance(keys, str) else [keys]
    return [k if isinstance(k, TrustedKey) else load_public_key(k) for k in items]


class Scorer:
    """A model ready to score: verified, self-tested, with its record encoder."""

    def __init__(
        self,
        manifest: Manifest,
        backend: Backend,
        *,
        self_test: bool = True,
        bundle: VerifiedBundle | None = None,
    ):
        self.manifest = manifest
        self.backend = backend
        self.bundle = bundle
        self.encoder = RecordEncoder(manifest.schema)
        self.self_test_error = run_self_test(manifest, backend, self.encoder) if self_test else None

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        trusted_keys: TrustedKey | str | Path | Sequence[TrustedKey | str | Path],
        *,
        format: str | None = None,
    ) -> Scorer:
        """Verify the bundle (signature and the chosen artifact), load the runtime for the
        chosen format, and self-test on the golden vectors."""
        signed = open_bundle(path, trusted_keys_from(trusted_keys), formats=())
        chosen = choose_format(signed.manifest.formats(), format)
        bundle = signed.with_verified(chosen)
        backend = backend_spec(chosen).load(bundle.artifact_path(chosen))
        return cls(bundle.manifest, backend, bundle=bundle)

    @property
    def format(self) -> str:
        return self.backend.format

    @property
    def version(self) -> str:
        return self.manifest.version

    def encode(self, records: Records) -> npt.NDArray[np.float32]:
        if isinstance(records, np.ndarray):
            return self.encoder.check_array(records)
        return self.encoder.encode(records)

    @property
    def task(self) -> str:
        return self.manifest.schema.task

    def score(self, records: Records) -> npt.NDArray[np.float32]:
        """Model outputs ``[N, n_outputs]`` for one dict, a sequence of dicts, or an encoded
        array in schema order: class probabilities, or the predicted value of a regressor."""
        return self.backend.predict_proba(self.encode(records))

    def predict(self, records: Records) -> list[str] | list[float]:
        """The prediction of each record: the label of its most probable class (ties go to
        the first class in schema order, as scikit-learn's ``predict``), or a regressor's
        value."""
        return predictions(self.manifest.schema, self.score(records))

    def positive(self, records: Records) -> npt.NDArray[np.float32]:
        """Probability of the positive class (``schema.classes[1]``), shape ``[N]``. Binary
        models only: a multi-class model has no single positive class."""
        schema = self.manifest.schema
        if schema.task != "binary":
            raise InputError(
                f"{self.manifest.label} is a {schema.task} model: it has no positive class. "
                "Use score() for "
                + ("the probability of every class" if schema.is_classifier else "the value")
                + " or predict() for the "
                + ("label" if schema.is_classifier else "value")
            )
        return self.score(records)[:, 1]


def predictions(schema: FeatureSchema, outputs: npt.NDArray[Any]) -> list[str] | list[float]:
    """Model outputs ``[N, n_outputs]`` -> the predicted labels (argmax over the classes in
    schema order) or a regressor's values as Python floats."""
    if not schema.is_classifier:
        return [float(v) for v in outputs[:, 0]]
    return [schema.classes[int(i)] for i in np.argmax(outputs, axis=1)]

"""Score records with a verified bundle: the edge's in-process API.

    scorer = Scorer.from_bundle("bundle/", trusted_keys="edgefleet.pub")
    scorer.score({"tenure_months": 3, "contract": "month-to-month", ...})  # -> [[0.71, 0.29]]

``score`` always returns float32 ``[N, n_classes]``; ``positive`` gives the positive class's
column (the churn probability).
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
from edgefleet.edge.selftest import run_self_test
from edgefleet.edge.signing import TrustedKey, load_public_key

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

    def score(self, records: Records) -> npt.NDArray[np.float32]:
        """Class probabilities ``[N, n_classes]`` for one dict, a sequence of dicts, or an
        encoded array in schema order."""
        return self.backend.predict_proba(self.encode(records))

    def positive(self, records: Records) -> npt.NDArray[np.float32]:
        """Probability of the positive class (``schema.classes[1]``), shape ``[N]``."""
        return self.score(records)[:, 1]

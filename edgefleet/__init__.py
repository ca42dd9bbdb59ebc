"""edgefleet: put scikit-learn models on edge devices and keep them good there."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from edgefleet.central.registry import ModelVersion

__version__ = "0.1.0"


def register(
    model: Any,
    reference: pd.DataFrame | str | Path,
    target: str,
    *,
    name: str | None = None,
    version: str | None = None,
    home: str | Path | None = None,
) -> ModelVersion:
    """Register a fitted scikit-learn estimator or Pipeline (or the path of a joblib/pickle
    file or an MLflow model folder) as a new model version, from a notebook::

        import edgefleet
        edgefleet.register(pipeline, reference=df, target="churn", name="churn")

    The schema comes from the pipeline and is checked against ``reference``, which also gives
    the reference profile, metrics and golden vectors. Loading a pickle runs its code: pass
    only files you trust. ``home`` defaults to ``$EDGEFLEET_HOME`` or ``./.edgefleet``.
    Imported lazily so that ``edgefleet.edge`` on a device never loads scikit-learn.
    """
    import os

    from edgefleet.central.byo.register import register_model

    folder = Path(home or os.environ.get("EDGEFLEET_HOME", ".edgefleet"))
    result = register_model(model, reference, target, home=folder, name=name, version=version)
    return result.version

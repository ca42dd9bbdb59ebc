"""Load a fitted scikit-learn model from a joblib/pickle file or an MLflow model folder.

Loading a pickle runs code: whoever wrote the file can make loading it do anything. So
only the one file a user names is loaded, never one found by searching, and the CLI's help
and the README say so. An MLflow folder is read from its ``MLmodel`` file (YAML): the
``sklearn`` flavour names the pickled model and its serialization, the signature names
the input columns (MLflow's "colspec" schema). No MLflow installation or tracking server
is needed.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import yaml

from edgefleet.errors import InputError

MLMODEL_FILE = "MLmodel"
PICKLE_FORMATS = ("pickle", "cloudpickle")
TEXT_TYPES = ("string",)


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    source: str  # what to say where it came from
    signature: tuple[str, ...] | None = None  # input column names (MLflow)
    text_columns: tuple[str, ...] = ()  # columns the signature types as strings


def load_model(path: Path) -> LoadedModel:
    path = Path(path)
    if path.is_dir():
        return _load_mlflow(path)
    if not path.is_file():
        raise InputError(
            f"{path} is neither a joblib/pickle file nor an MLflow model folder (a folder "
            f"with an {MLMODEL_FILE} file)"
        )
    return LoadedModel(model=_unpickle(path), source=f"file {path}")


def _unpickle(path: Path) -> Any:
    try:
        if path.suffix in (".pkl", ".pickle"):
            with path.open("rb") as handle:
                return pickle.load(handle)
        return joblib.load(path)
    except ModuleNotFoundError as error:
        raise _missing_module(path, error) from None
    except Exception as error:  # unpickling raises anything the file makes it raise
        raise InputError(
            f"cannot load {path} as a joblib or pickle file: {type(error).__name__}: {error}"
        ) from None


def _missing_module(path: Path, error: ModuleNotFoundError) -> InputError:
    # Also what a file that is not a pickle at all can raise: its bytes read as a name.
    return InputError(
        f"cannot load {path}: it needs the Python module {error.name!r}, which is not "
        "installed here (install what the model was saved with), or it is not a joblib or "
        "pickle file"
    )


def _load_mlflow(folder: Path) -> LoadedModel:
    mlmodel = folder / MLMODEL_FILE
    if not mlmodel.is_file():
        raise InputError(
            f"{folder} is a folder without an {MLMODEL_FILE} file: not an MLflow model"
        )
    try:
        spec = yaml.safe_load(mlmodel.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise InputError(f"cannot read {mlmodel}: {error}") from None
    flavors = spec.get("flavors") if isinstance(spec, dict) else None
    if not isinstance(flavors, dict) or not isinstance(flavors.get("sklearn"), dict):
        found = ", ".join(flavors) if isinstance(flavors, dict) else "none"
        raise InputError(
            f"{mlmodel} has no sklearn flavour (flavours: {found}); edgefleet registers "
            "scikit-learn models (mlflow.sklearn.save_model / log_model)"
        )
    model = _flavor_model(folder, flavors["sklearn"])
    names, text = _signature(spec.get("signature"), mlmodel)
    return LoadedModel(
        model=model, source=f"MLflow model {folder}", signature=names, text_columns=text
    )


def _flavor_model(folder: Path, flavor: dict[str, Any]) -> Any:
    serialization = flavor.get("serialization_format", "cloudpickle")
    if serialization not in PICKLE_FORMATS:
        raise InputError(
            f"the sklearn flavour is serialized as {serialization!r}; edgefleet reads "
            f"{' and '.join(PICKLE_FORMATS)}: save it with mlflow.sklearn.save_model(..., "
            "serialization_format='cloudpickle')"
        )
    relative = flavor.get("pickled_model")
    if not isinstance(relative, str):
        raise InputError(f"{folder / MLMODEL_FILE}: the sklearn flavour names no pickled_model")
    target = (folder / relative).resolve()
    if folder.resolve() not in target.parents:
        raise InputError(
            f"{folder / MLMODEL_FILE}: pickled_model {relative!r} is outside the folder"
        )
    try:
        with target.open("rb") as handle:
            return pickle.load(handle)
    except OSError as error:
        raise InputError(f"cannot read {target}: {error}") from None
    except ModuleNotFoundError as error:
        raise _missing_module(target, error) from None
    except Exception as error:  # unpickling raises anything the file makes it raise
        raise InputError(f"cannot unpickle {target}: {type(error).__name__}: {error}") from None


def _signature(signature: Any, where: Path) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """Column names of a colspec input signature; (None, ()) without one."""
    if not isinstance(signature, dict) or signature.get("inputs") is None:
        return None, ()
    try:
        inputs = json.loads(signature["inputs"])
    except (TypeError, ValueError) as error:
        raise InputError(f"{where}: the signature's inputs are not JSON: {error}") from None
    if not isinstance(inputs, list) or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) for c in inputs
    ):
        raise InputError(
            f"{where}: the signature is not a column signature (named columns); tensor "
            "signatures carry no column names"
        )
    names = tuple(c["name"] for c in inputs)
    text = tuple(c["name"] for c in inputs if c.get("type") in TEXT_TYPES)
    return names, text

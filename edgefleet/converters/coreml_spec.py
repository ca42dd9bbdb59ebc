"""Core ML spec plumbing shared by :mod:`edgefleet.converters.coreml`'s emitters: feature
types, a model with declared inputs and outputs, the classifier interface, the imputer
stage and the float32 constants scikit-learn applies to float32 input."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.converters.coreml_proto import FeatureTypes_pb2, Model_pb2
from edgefleet.converters.ir import Preprocessing
from edgefleet.errors import ConversionError

INPUT_NAME = "input"
LABEL_NAME = "classLabel"
PROBABILITY_NAME = "classProbability"
VALUE_NAME = "prediction"  # a regressor's output (double)
# Every model type used here exists since Core ML 1; the lowest version loads everywhere.
SPECIFICATION_VERSION = 1

Float64Array = npt.NDArray[np.float64]
DOUBLE = FeatureTypes_pb2.ArrayFeatureType.DOUBLE

TypeSetter = Callable[[Any], None]


def array(size: int) -> TypeSetter:
    def set_type(feature_type: Any) -> None:
        feature_type.multiArrayType.shape.append(size)
        feature_type.multiArrayType.dataType = DOUBLE

    return set_type


def int64(feature_type: Any) -> None:
    feature_type.int64Type.SetInParent()


def int64_dictionary(feature_type: Any) -> None:
    feature_type.dictionaryType.int64KeyType.SetInParent()


def double(feature_type: Any) -> None:
    feature_type.doubleType.SetInParent()


def classifier_outputs() -> list[tuple[str, TypeSetter]]:
    return [(LABEL_NAME, int64), (PROBABILITY_NAME, int64_dictionary)]


def regressor_outputs() -> list[tuple[str, TypeSetter]]:
    return [(VALUE_NAME, double)]


def new_model(
    inputs: Sequence[tuple[str, TypeSetter]], outputs: Sequence[tuple[str, TypeSetter]]
) -> Model_pb2.Model:
    model = Model_pb2.Model()
    model.specificationVersion = SPECIFICATION_VERSION
    for features, declared in (
        (model.description.input, inputs),
        (model.description.output, outputs),
    ):
        for name, set_type in declared:
            feature = features.add()
            feature.name = name
            set_type(feature.type)
    return model


def classifier_interface(model: Model_pb2.Model) -> None:
    model.description.predictedFeatureName = LABEL_NAME
    model.description.predictedProbabilitiesName = PROBABILITY_NAME


def imputer(values: Sequence[float], width: int) -> Model_pb2.Model:
    model = new_model([(INPUT_NAME, array(width))], [("imputed", array(width))])
    model.imputer.imputedDoubleArray.vector.extend(values)
    model.imputer.replaceDoubleValue = float("nan")
    return model


def float32_constants(prep: Preprocessing) -> tuple[Float64Array, Float64Array, Float64Array]:
    """Offsets, scales and imputed values of the numeric columns as scikit-learn applies them
    to float32 input: rounded to float32 (see ``Preprocessing.transform``)."""
    offsets = as_float32([c.offset for c in prep.numeric])
    scales = as_float32([c.scale for c in prep.numeric])
    imputed = as_float32([c.impute for c in prep.numeric])
    for position, column in enumerate(prep.numeric):
        if not (np.isfinite(offsets[position]) and np.isfinite(imputed[position])):
            raise ConversionError(
                f"input {column.input_index}: the offset {column.offset} or "
                f"imputed value {column.impute} is not a finite float32"
            )
        if not (np.isfinite(scales[position]) and scales[position] > 0):
            raise ConversionError(
                f"input {column.input_index}: a scale of {column.scale} "
                "cannot be inverted or folded (it must be > 0)"
            )
    return offsets, scales, imputed


def as_float32(values: Sequence[float]) -> Float64Array:
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64)

"""The Open Inference Protocol (KServe "V2" REST, also spoken by Triton and MLServer) and the
plain V1 predict body, parsed into the model contract's float32 matrix.

An inference request is ``{"id"?, "parameters"?, "inputs": [...], "outputs"?: [...]}``; each
input is ``{"name", "shape", "datatype", "data", "parameters"?}`` with ``data`` flat
(row-major) or nested. Three layouts are accepted:

- **one tensor per feature** (the layout of MLServer's pandas codec): each input is named
  after a feature, shape ``[N]`` or ``[N, 1]``, ``BYTES`` for categorical text;
- **one row per record**: a single ``BYTES`` input named ``records`` whose elements are
  JSON objects (or JSON text of one), as the device's ``/score`` takes them;
- **the model contract itself**: a single numeric input of shape ``[N, F]``, the features in
  schema order and categoricals as their vocabulary index.

Inputs whose name the schema does not know are ignored, as the device ignores unknown
fields. Every refusal is a :class:`RequestError` naming the input, record and field.

The outputs follow the model's task (docs/architecture.md §12): a classifier answers
``probabilities`` ``[N, K]`` (a decision-function model's scores too, §2), ``label``
(BYTES ``[N]``) and ``prediction_id``; a regressor ``value`` (``[N]``) and
``prediction_id``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.edge.encoding import RecordEncoder
from edgefleet.edge.schema import FeatureSchema
from edgefleet.edge.wirejson import json_type
from edgefleet.errors import RequestError

OUTPUTS = ("probabilities", "label", "prediction_id")
"""What a classifier's inference response holds (a decision-function model's scores keep
the name ``probabilities``); a request's ``outputs`` picks among them (:func:`outputs_of`
gives every task's)."""
RECORDS_INPUT = "records"
_NUMERIC = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64"}
_NUMERIC |= {"UINT8", "UINT16", "UINT32", "UINT64"}
_DATATYPES = _NUMERIC | {"BOOL", "BYTES"}


@dataclass(frozen=True)
class Parsed:
    """A request reduced to what the batcher needs."""

    rows: npt.NDArray[np.float32]
    request_id: str | None
    outputs: tuple[str, ...]


def outputs_of(schema: FeatureSchema) -> tuple[str, ...]:
    """The outputs an inference response of this model can hold, in response order."""
    if not schema.is_classifier:
        return ("value", "prediction_id")
    return OUTPUTS


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError(f"{what} must be a JSON object, not {json_type(body)}")
    return body


def _check_records(count: int, max_records: int) -> None:
    if count > max_records:
        raise RequestError(
            f"{count} records in one request; the limit is {max_records}: send smaller batches",
            status=413,
        )
    if count == 0:
        raise RequestError("the request holds no records")


def parse_v1(body: Any, encoder: RecordEncoder, max_records: int) -> npt.NDArray[np.float32]:
    """``{"instances": [{...}]}`` (KServe V1), ``{"records": [...]}`` or ``{"record": {...}}``."""
    body = _object(body, "the request body")
    for key in ("instances", "records"):
        if key in body:
            records = body[key]
            if not isinstance(records, list):
                raise RequestError(f"'{key}' must be an array of records")
            break
    else:
        if "record" not in body:
            raise RequestError('send {"instances": [{...}, ...]} or {"record": {...}}')
        records = [body["record"]]
    _check_records(len(records), max_records)
    return _encode(encoder, records)


def _encode(encoder: RecordEncoder, records: Sequence[Any]) -> npt.NDArray[np.float32]:
    # A RecordError (an InputError: 400) names the record and the field.
    return encoder.encode(records)


def parse_v2(body: Any, encoder: RecordEncoder, max_records: int) -> Parsed:
    """An Open Inference Protocol inference request."""
    body = _object(body, "the inference request")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("'id' must be a string")
    if not isinstance(body.get("parameters", {}), dict):
        raise RequestError("'parameters' must be an object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("'inputs' must be a non-empty array of tensors")
    tensors = [_tensor(item, i) for i, item in enumerate(inputs)]
    rows = _rows(tensors, encoder, max_records)
    return Parsed(rows, request_id, _requested(body.get("outputs"), outputs_of(encoder.schema)))


def _requested(outputs: Any, known: tuple[str, ...]) -> tuple[str, ...]:
    if outputs is None:
        return known
    if not isinstance(outputs, list):
        raise RequestError("'outputs' must be an array of {\"name\": ...}")
    names = []
    for item in outputs:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in known:
            raise RequestError(f"unknown output {name!r}: this model has {', '.join(known)}")
        names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    datatype: str
    data: list[Any]


def _tensor(item: Any, index: int) -> _Tensor:
    item = _object(item, f"input {index}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError(f"input {index} needs a 'name'")
    shape = item.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise RequestError(f"input {name!r}: 'shape' must be [N] or [N, K] of whole numbers")
    datatype = item.get("datatype")
    if datatype not in _DATATYPES:
        raise RequestError(f"input {name!r}: unknown datatype {datatype!r}")
    data = _flatten(item.get("data"), name)
    if len(data) != math.prod(shape):
        raise RequestError(
            f"input {name!r}: shape {shape} needs {math.prod(shape)} values, 'data' has {len(data)}"
        )
    return _Tensor(name, tuple(shape), datatype, data)


def _flatten(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        raise RequestError(f"input {name!r}: 'data' must be an array")
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:  # iterative: nesting depth is bounded by the body parser already
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _rows(tensors: list[_Tensor], encoder: RecordEncoder, max_records: int) -> npt.NDArray[Any]:
    schema = encoder.schema
    if len(tensors) == 1 and tensors[0].name == RECORDS_INPUT and tensors[0].datatype == "BYTES":
        records = [_record(v, i) for i, v in enumerate(tensors[0].data)]
        _check_records(len(records), max_records)
        return _encode(encoder, records)
    only = tensors[0]
    if len(tensors) == 1 and len(only.shape) == 2 and only.name not in schema.names:
        return _contract(only, encoder, max_records)
    return _columns(tensors, encoder, max_records)


def _record(value: Any, index: int) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise RequestError(f"records[{index}] is not a JSON object") from None
    if not isinstance(value, dict):
        raise RequestError(f"records[{index}] must be a JSON object, not {json_type(value)}")
    return value


def _contract(tensor: _Tensor, encoder: RecordEncoder, max_records: int) -> npt.NDArray[Any]:
    count, width = tensor.shape
    if width != encoder.schema.n_features:
        raise RequestError(
            f"input {tensor.name!r}: shape [N, {width}] is not a feature name nor the model's "
            f"[N, {encoder.schema.n_features}] matrix"
        )
    if tensor.datatype not in _NUMERIC or not all(_is_number(v) for v in tensor.data):
        raise RequestError(f"input {tensor.name!r}: the feature matrix must be numeric")
    _check_records(count, max_records)
    return encoder.check_array(np.asarray(tensor.data, dtype=np.float32).reshape(count, width))


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _columns(tensors: list[_Tensor], encoder: RecordEncoder, max_records: int) -> npt.NDArray[Any]:
    names = set(encoder.schema.names)
    known = [t for t in tensors if t.name in names]
    if not known:
        raise RequestError(
            "no input names a feature of this model; expected tensors named "
            f"{', '.join(sorted(names)[:5])}, ... (GET /v2/models/NAME lists them)"
        )
    counts = {t.shape[0] for t in known}
    if len(counts) != 1:
        raise RequestError(f"the feature tensors disagree on the number of rows: {sorted(counts)}")
    count = counts.pop()
    for tensor in known:
        _check_column(tensor, schema=encoder.schema)
    _check_records(count, max_records)
    columns = {t.name: t.data for t in known}
    records = [{name: values[i] for name, values in columns.items()} for i in range(count)]
    return _encode(encoder, records)


def _check_column(tensor: _Tensor, schema: FeatureSchema) -> None:
    if len(tensor.shape) == 2 and tensor.shape[1] != 1:
        raise RequestError(f"input {tensor.name!r}: a feature tensor has shape [N] or [N, 1]")
    kind = schema.feature(tensor.name).kind
    if kind == "categorical" and tensor.datatype != "BYTES":
        raise RequestError(f"input {tensor.name!r}: a categorical feature is BYTES (text)")
    if kind == "numeric" and tensor.datatype == "BYTES":
        raise RequestError(f"input {tensor.name!r}: a numeric feature needs a numeric datatype")


def metadata(name: str, version: str, schema: FeatureSchema, platform: str) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the feature tensors a client sends and what comes back."""
    inputs = [
        {"name": f.name, "datatype": "BYTES" if f.kind == "categorical" else "FP32", "shape": [-1]}
        for f in schema.features
    ]
    parameters: dict[str, Any] = {"classes": list(schema.classes), "target": schema.target}
    if schema.task != "binary":  # binary metadata stays what it was before tasks
        parameters["task"] = schema.task
    return {
        "name": name,
        "versions": [version],
        "platform": platform,
        "inputs": inputs,
        "outputs": _output_metadata(schema),
        "parameters": parameters,
    }


def _output_metadata(schema: FeatureSchema) -> list[dict[str, Any]]:
    ids = {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]}
    if not schema.is_classifier:
        return [{"name": "value", "datatype": "FP32", "shape": [-1]}, ids]
    return [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(schema.classes)]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ids,
    ]


def infer_response(
    name: str,
    version: str,
    parsed: Parsed,
    outputs: npt.NDArray[np.float32],
    labels: Sequence[str],
    ids: Sequence[str],
) -> dict[str, Any]:
    """The response to ``parsed``: the model's ``outputs`` ``[N, n_outputs]`` as the
    tensors the request asked for (:func:`outputs_of` names each task's)."""
    tensors = [_output_tensor(n, outputs, labels, ids) for n in parsed.outputs]
    response: dict[str, Any] = {
        "model_name": name,
        "model_version": version,
        "outputs": tensors,
    }
    if parsed.request_id is not None:
        response["id"] = parsed.request_id
    return response


def _output_tensor(
    name: str, outputs: npt.NDArray[np.float32], labels: Sequence[str], ids: Sequence[str]
) -> dict[str, Any]:
    count = len(ids)
    if name == "probabilities":
        return {
            "name": name,
            "datatype": "FP32",
            "shape": list(outputs.shape),
            "data": outputs.ravel().tolist(),
        }
    if name == "value":
        return {"name": name, "datatype": "FP32", "shape": [count], "data": outputs[:, 0].tolist()}
    data = list(labels) if name == "label" else list(ids)
    return {"name": name, "datatype": "BYTES", "shape": [count], "data": data}

"""The WSGI app of one worker process: the Open Inference Protocol (V2) and a plain V1
predict, over the worker's :class:`Catalog`.

    GET  /v2/health/live                       200 {"live": true}
    GET  /v2/health/ready                      200 {"ready": true}, 503 before a model is in
    GET  /v2                                   server metadata
    GET  /v2/models/{name}[/versions/{v}]      model metadata (the feature tensors)
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer
    POST /v1/models/{name}:predict             {"instances": [{...}]} -> {"predictions": [...]}
    POST /v1/outcome                           {"id": "<prediction id>", "label": "Yes" | 1 | 7.5}

Every task is served (docs/architecture.md §12): the outputs and answers are the model's,
per task (protocol.py, edge/agent/answers.py).

Every error is JSON ``{"error": "...", "status": N}`` (the protocol's error object, plus the
status): 400 naming the input, record and field; 404 unknown model or path; 413 a body or a
batch over the limit; 503 with ``Retry-After`` when the queue is full; 504 past the request
timeout.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from edgefleet import __version__
from edgefleet.central.serving.batcher import OverloadedError, RequestTimeoutError, RetiredError
from edgefleet.central.serving.models import (
    Catalog,
    NotLoadedError,
    ServedModel,
    UnknownModelError,
)
from edgefleet.central.serving.predid import PredictionIds, PredictionRef
from edgefleet.central.serving.protocol import Parsed, infer_response, metadata, parse_v1, parse_v2
from edgefleet.edge.agent.answers import Outcome, answers, label_index, outcome_value
from edgefleet.edge.httpserver import ServerLimits
from edgefleet.edge.jsonbody import parse_json, read_body
from edgefleet.edge.schema import FeatureSchema
from edgefleet.errors import InputError, RecordError, RequestError

logger = logging.getLogger("edgefleet.serving")

_MODEL = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/infer|/ready)?$")
_PREDICT = re.compile(r"^/v1/models/([^/]+):predict$")
OutcomeSink = Callable[[PredictionRef, Outcome], None]
Answer = tuple[HTTPStatus, dict[str, Any]]


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may carry and what each worker holds open."""

    max_body: int = 4 << 20
    max_depth: int = 16
    max_records: int = 1000
    timeout: int = 30
    connections: int = 1000
    threads: int = 64

    def __post_init__(self) -> None:
        for name in ("max_depth", "max_records"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a whole number >= 1")
        self.server()

    def server(self) -> ServerLimits:
        return ServerLimits(
            max_body=self.max_body,
            timeout=self.timeout,
            connections=self.connections,
            threads=self.threads,
        )


class _AnswerError(Exception):
    def __init__(
        self, status: int, body: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.status, self.body, self.headers = HTTPStatus(status), body, headers


class ServiceApp:
    def __init__(
        self,
        catalog: Catalog,
        limits: ServiceLimits,
        ids: PredictionIds,
        outcomes: OutcomeSink | None = None,
    ) -> None:
        self.catalog = catalog
        self.limits = limits
        self.ids = ids
        self.outcomes = outcomes
        # A request to a worker that has no model yet waits for one this long (a fleet
        # member's worker, just started or restarted, gets its model within a second).
        self.wait_for_model = 10.0

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        try:
            status, body, extra = self._route(environ)
        except _AnswerError as answer:
            status, body, extra = answer.status, answer.body, answer.headers
        if status >= 400:
            body.setdefault("status", int(status))
        data = json.dumps(body).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        start_response(f"{status.value} {status.phrase}", headers + list(extra))
        return [data]

    def _route(self, environ: dict[str, Any]) -> tuple[HTTPStatus, dict[str, Any], tuple[Any, ...]]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        try:
            return (*self._dispatch(path, method, environ), ())
        except RequestError as error:
            return HTTPStatus(error.status), {"error": str(error)}, ()
        except UnknownModelError as error:
            return HTTPStatus.NOT_FOUND, {"error": str(error)}, ()
        except NotLoadedError as error:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(error)}, (("Retry-After", "1"),)
        except OverloadedError as error:
            return (
                HTTPStatus.SERVICE_UNAVAILABLE,
                {"error": str(error)},
                (("Retry-After", str(error.retry_after)),),
            )
        except RequestTimeoutError as error:
            return HTTPStatus.GATEWAY_TIMEOUT, {"error": str(error)}, ()
        except InputError as error:
            return HTTPStatus.BAD_REQUEST, {"error": str(error)}, ()
        except _AnswerError:
            raise
        except Exception:
            logger.exception("the scoring service failed on %s %s", method, path)
            return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error, see the log"}, ()

    def _dispatch(self, path: str, method: str, environ: dict[str, Any]) -> Answer:
        if path == "/v2/health/live":
            _method(method, "GET")
            return HTTPStatus.OK, {"live": True}
        if path == "/v2/health/ready":
            _method(method, "GET")
            if self.catalog.ready:
                return HTTPStatus.OK, {"ready": True}
            return HTTPStatus.SERVICE_UNAVAILABLE, {"ready": False, "error": "no model loaded yet"}
        if path == "/v2":
            _method(method, "GET")
            return HTTPStatus.OK, {"name": "edgefleet", "version": __version__, "extensions": []}
        if path == "/v1/outcome":
            _method(method, "POST")
            return self._outcome(self._body(environ))
        if match := _PREDICT.match(path):
            _method(method, "POST")
            return self._predict(match[1], self._body(environ))
        if match := _MODEL.match(path):
            infer = match[3] == "/infer"
            model = self._model(match[1], match[2], self.wait_for_model if infer else 0.0)
            if infer:
                _method(method, "POST")
                return self._infer(model, self._body(environ))
            _method(method, "GET")
            if match[3] == "/ready":
                return HTTPStatus.OK, {"name": model.name, "ready": True}
            schema = model.scorer.manifest.schema
            return HTTPStatus.OK, metadata(model.name, model.version, schema, _platform(model))
        raise _AnswerError(404, {"error": f"no such path {path[:200]}"})

    def _model(self, name: str, version: str | None, wait: float) -> ServedModel:
        model = self.catalog.get(name, wait=wait)
        if version is not None and version != model.version:
            raise UnknownModelError(
                f"model {name!r} is served at version {model.version}, not {version[:40]!r}"
            )
        return model

    def _body(self, environ: dict[str, Any]) -> Any:
        return parse_json(read_body(environ, self.limits.max_body), self.limits.max_depth)

    def _score(
        self, name: str, parse: Callable[[ServedModel], Any]
    ) -> tuple[ServedModel, Any, Any]:
        """Parse for the model served now and score; if the model is replaced meanwhile,
        parse again for the new one (its schema may differ)."""
        while True:
            model = self.catalog.get(name, wait=self.wait_for_model)
            try:
                parsed = parse(model)
            except RecordError:
                model.count_failed(1)  # a record the model cannot take, as a device counts it
                raise
            rows = parsed.rows if isinstance(parsed, Parsed) else parsed
            try:
                return model, parsed, model.batcher.submit(rows)
            except RetiredError:
                continue

    def _infer(self, model: ServedModel, body: Any) -> Answer:
        limit = self.limits.max_records
        served, parsed, outputs = self._score(
            model.name, lambda m: parse_v2(body, m.scorer.encoder, limit)
        )
        labels, ids = self._labels(served, outputs)
        return HTTPStatus.OK, infer_response(
            served.name, served.version, parsed, outputs, labels, ids
        )

    def _predict(self, name: str, body: Any) -> Answer:
        """The device's answer per task (edge/agent/answers.py): binary ``probability`` and
        ``label``, multi-class ``label`` and ``probabilities`` by class, regression ``value``;
        a decision-function model's ``score`` / ``scores`` (§2)."""
        limit = self.limits.max_records
        served, _, outputs = self._score(name, lambda m: parse_v1(body, m.scorer.encoder, limit))
        _, ids = self._labels(served, outputs)
        schema = served.scorer.manifest.schema
        predictions = [p.to_dict() for p in answers(schema, served.version, outputs, ids)]
        return HTTPStatus.OK, {"model_name": served.name, "predictions": predictions}

    def _labels(self, model: ServedModel, outputs: Any) -> tuple[list[str], list[str]]:
        """Each record's label (none for a regressor) and signed prediction id."""
        schema = model.scorer.manifest.schema
        if schema.task == "regression":
            return [], self.ids.make(outputs[:, 0].tolist(), model.version)
        if schema.task == "multiclass":
            best = outputs.argmax(axis=1)
            labels = [schema.classes[int(k)] for k in best]
            top = outputs.max(axis=1).tolist()
            return labels, self.ids.make(top, model.version, outputs)
        negative, positive = schema.classes
        scores = outputs[:, 1].tolist()
        labels = [positive if p >= 0.5 else negative for p in scores]
        return labels, self.ids.make(scores, model.version)

    def _outcome(self, body: Any) -> Answer:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or "label" not in body:
            raise RequestError('send {"id": "<prediction id>", "label": ...}')
        if self.outcomes is None:
            raise _AnswerError(
                409,
                {
                    "error": "this service is not a fleet member (serve-model --fleet): labels are "
                    "collected only where they are reported"
                },
            )
        try:
            ref = self.ids.read(body["id"])
        except InputError as error:
            raise _AnswerError(404, {"error": str(error)}) from None
        self.outcomes(ref, self._label_value(ref, body["label"]))
        return HTTPStatus.ACCEPTED, {"accepted": True}

    def _label_value(self, ref: PredictionRef, label: Any) -> Outcome:
        """The outcome as the edge agent counts it: a binary model's class index, a
        multi-class model's class label, a regressor's value; a bad one is a 400."""
        schema = self._schema_of(ref)
        if schema is None or schema.task == "binary":
            return self._binary_label(label)
        if schema.task == "regression":
            return outcome_value(label, schema)
        label_index(label, schema.classes)
        return str(label)

    def _schema_of(self, ref: PredictionRef) -> FeatureSchema | None:
        for name in self.catalog.names():
            model = self.catalog.get(name)
            if model.version == ref.version:
                return model.scorer.manifest.schema
        return None

    def _binary_label(self, label: Any) -> int:
        if isinstance(label, bool) or label in (0, 1):
            return int(label)
        for name in self.catalog.names():
            classes = self.catalog.get(name).scorer.manifest.schema.classes
            if label in classes:
                return classes.index(label)
        raise RequestError(f"label {str(label)[:40]!r} is not a class of the model (or 0/1)")


def _method(method: str, allowed: str) -> None:
    if method != allowed:
        error = {"error": f"this path answers {allowed}, not {method[:10]}"}
        raise _AnswerError(405, error, (("Allow", allowed),))


_PLATFORMS = {"onnx": "onnxruntime_onnx", "tflite": "tensorflow_lite"}


def _platform(model: ServedModel) -> str:
    return _PLATFORMS.get(model.scorer.format, model.scorer.format)

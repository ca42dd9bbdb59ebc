"""The agent's local HTTP API, for apps in other languages on the same device. It listens
on loopback only: the device's own apps score, nothing from the network does.

    POST /score     {"record": {...}} or {"records": [{...}, ...]}
                    -> 200 {"predictions": [...]}, one per record, what fits the task
                       (edge/agent/answers.py): binary {"id", "probability", "label",
                       "model_version"}; multi-class {"id", "label", "probabilities":
                       {class: p}, "model_version"}; regression {"id", "value", "model_version"};
                       a decision-function model "score" / "scores" for "probability" /
                       "probabilities"
    POST /outcome   {"id": "<prediction id>", "label": "Yes" | 1 | 183.5}  -> 200 {"ok": true}
                    (a class label; 0/1 for a binary model; a number for a regressor)
    GET  /health    -> 200 (a model is active) or 503 (none yet), with the agent's status

Every error is JSON ``{"error": "...", "status": N}``: 400 for a bad request or record
(naming the record and field) or JSON nested deeper than the limit, 404 for an unknown
path or prediction id, 405 for a wrong method, 411 for a POST without Content-Length, 413
for a body or a batch over the limit, 503 when no model is installed yet, 500 for a bug.

A plain WSGI callable served by :mod:`edgefleet.edge.httpserver` (waitress): no web
framework on the device. :class:`ApiLimits` bounds what one client can cost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from edgefleet.edge.agent.agent import Agent, NoModelError
from edgefleet.edge.httpserver import HttpServer, ServerLimits
from edgefleet.edge.jsonbody import parse_json, read_body
from edgefleet.errors import InputError, RequestError

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_ROUTES = {"/health": "GET", "/score": "POST", "/outcome": "POST"}


@dataclass(frozen=True)
class ApiLimits:
    """What one request may carry and what the server holds open (``edgefleet agent
    --http-*`` flags)."""

    max_body: int = 1 << 20
    max_depth: int = 16
    max_records: int = 1000
    timeout: int = 30
    connections: int = 16
    threads: int = 2

    def __post_init__(self) -> None:
        for name in ("max_depth", "max_records"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"the API's {name} must be a whole number >= 1, not {value!r}")
        # Python's JSON parser stops at about 1000 levels; the limit must be the one
        # that answers.
        if self.max_depth > 200:
            raise InputError(f"the API's max_depth must be at most 200, not {self.max_depth}")
        self.server()  # the server's limits are checked there

    def server(self) -> ServerLimits:
        return ServerLimits(
            max_body=self.max_body,
            timeout=self.timeout,
            connections=self.connections,
            threads=self.threads,
        )


Answer = tuple[HTTPStatus, dict[str, Any]]


class AgentApp:
    """The WSGI app of the local API over one :class:`Agent`."""

    def __init__(self, agent: Agent, limits: ApiLimits) -> None:
        self.agent = agent
        self.limits = limits

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        status, body = self._answer(environ)
        if status >= 400:
            body.setdefault("status", int(status))
        data = json.dumps(body).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            headers.append(("Allow", _ROUTES[environ.get("PATH_INFO", "")]))
        start_response(f"{status.value} {status.phrase}", headers)
        return [data]

    def _answer(self, environ: dict[str, Any]) -> Answer:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if path not in _ROUTES:
            return HTTPStatus.NOT_FOUND, {"error": f"no such path {path}"}
        if method != _ROUTES[path]:
            return HTTPStatus.METHOD_NOT_ALLOWED, {
                "error": f"{path} answers {_ROUTES[path]}, not {method}"
            }
        try:
            if path == "/health":
                return self._health()
            body = self._body(environ)
            return self._score(body) if path == "/score" else self._outcome(body)
        except RequestError as error:
            return HTTPStatus(error.status), {"error": str(error)}
        except NoModelError as error:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(error)}
        except InputError as error:
            return HTTPStatus.BAD_REQUEST, {"error": str(error)}
        except Exception:
            # A bug must cost one answer, not the connection or the agent.
            logger.exception("the local API failed on %s %s", method, path)
            return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error, see the log"}

    def _body(self, environ: dict[str, Any]) -> dict[str, Any]:
        body = parse_json(read_body(environ, self.limits.max_body), self.limits.max_depth)
        if not isinstance(body, dict):
            raise InputError("the request body must be a JSON object")
        return body

    def _health(self) -> Answer:
        status = self.agent.status()
        ok = status["model_version"] is not None
        return (HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE), status

    def _score(self, body: dict[str, Any]) -> Answer:
        if "record" in body:
            records: Any = body["record"]
        elif "records" in body and isinstance(body["records"], list):
            records = body["records"]
        else:
            raise InputError('send {"record": {...}} or {"records": [...]}')
        # The agent scores a list under either key.
        if isinstance(records, list) and len(records) > self.limits.max_records:
            raise RequestError(
                f"{len(records)} records in one request; the limit is "
                f"{self.limits.max_records}: send them in smaller batches",
                status=413,
            )
        predictions = self.agent.score(records)
        return HTTPStatus.OK, {"predictions": [p.to_dict() for p in predictions]}

    def _outcome(self, body: dict[str, Any]) -> Answer:
        if not isinstance(body.get("id"), str) or "label" not in body:
            raise InputError('send {"id": "<prediction id>", "label": ...}')
        try:
            self.agent.outcome(body["id"], body["label"])
        except InputError as error:
            if "no recent prediction" in str(error):
                return HTTPStatus.NOT_FOUND, {"error": str(error)}
            raise
        return HTTPStatus.OK, {"ok": True}


class AgentHTTPServer(HttpServer):
    """The local API of ``agent`` on 127.0.0.1:``port`` (0: any free port)."""

    def __init__(self, agent: Agent, port: int = 0, limits: ApiLimits | None = None) -> None:
        limits = limits or ApiLimits()
        super().__init__(AgentApp(agent, limits), LOOPBACK, port, limits.server())

    def start(self, name: str = "agent-http") -> AgentHTTPServer:
        super().start(name)
        return self

"""The agent's local HTTP API, for apps in other languages on the same device. It listens
on loopback only: the device's own apps score, nothing from the network does.

    POST /score     {"record": {...}} or {"records": [{...}, ...]}
                    -> 200 {"predictions": [{"id", "probability", "label", "model_version"}]}
    POST /outcome   {"id": "<prediction id>", "label": "Yes" | 1}  -> 200 {"ok": true}
    GET  /health    -> 200 (a model is active) or 503 (none yet), with the agent's status

Errors are JSON ``{"error": "..."}``: 400 for a bad request or record (naming the record
and field), 404 for an unknown path or prediction id, 413 for a body over 1 MiB, 503 when
no model is installed yet.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgefleet.edge.agent.agent import Agent, NoModelError
from edgefleet.errors import InputError

MAX_BODY = 1 << 20


class _Handler(BaseHTTPRequestHandler):
    server: AgentHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        return  # one line per request would drown a device's log

    def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise _BodyTooLargeError
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except (ValueError, UnicodeDecodeError):
            raise InputError("the request body is not JSON") from None

    def do_GET(self) -> None:
        if self.path != "/health":
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}"})
            return
        status = self.server.agent.status()
        ok = status["model_version"] is not None
        self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, status)

    def do_POST(self) -> None:
        agent = self.server.agent
        try:
            body = self._body()
            if not isinstance(body, dict):
                raise InputError("the request body must be a JSON object")
            if self.path == "/score":
                if "record" in body:
                    records: Any = body["record"]
                elif "records" in body and isinstance(body["records"], list):
                    records = body["records"]
                else:
                    raise InputError('send {"record": {...}} or {"records": [...]}')
                predictions = agent.score(records)
                self._send(HTTPStatus.OK, {"predictions": [p.__dict__ for p in predictions]})
            elif self.path == "/outcome":
                if not isinstance(body.get("id"), str) or "label" not in body:
                    raise InputError('send {"id": "<prediction id>", "label": ...}')
                try:
                    agent.outcome(body["id"], body["label"])
                except InputError as error:
                    status = (
                        HTTPStatus.NOT_FOUND
                        if "no recent prediction" in str(error)
                        else HTTPStatus.BAD_REQUEST
                    )
                    self._send(status, {"error": str(error)})
                    return
                self._send(HTTPStatus.OK, {"ok": True})
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}"})
        except _BodyTooLargeError:
            self._send(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"the body is over {MAX_BODY} bytes"}
            )
        except NoModelError as error:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(error)})
        except InputError as error:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(error)})


class _BodyTooLargeError(Exception):
    pass


class AgentHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, agent: Agent, port: int = 0):
        self.agent = agent
        super().__init__(("127.0.0.1", port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> AgentHTTPServer:
        self._thread = threading.Thread(target=self.serve_forever, name="agent-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

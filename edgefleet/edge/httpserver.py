"""The one HTTP server of edgefleet's web apps (the agent's local API, the dashboard):
waitress, a maintained pure-Python WSGI server, with limits that a flood cannot get past.

What waitress enforces for us, from :class:`ServerLimits`:

- the body, counted on the bytes actually received: a ``Content-Length`` over the limit
  is answered 413 before any of the body is read, a chunked body once its bytes pass the
  limit; a negative or non-numeric ``Content-Length`` is answered 400;
- the request line and headers (431 past ``max_header``);
- ``timeout``: a connection silent for that long, idle or halfway through a request, is
  closed (waitress's ``channel_timeout``); so is one whose request has not all arrived
  ``timeout`` seconds after its first byte (added here: a client that trickles a byte now
  and then is never silent, and would hold its connection for ever);
- ``connections``: past that many open connections the server stops accepting; the next
  ones wait in the kernel's backlog until a slot frees up (``connection_limit``);
- ``threads``: requests served at once.

Waitress answers its own refusals in text; here every one of them is JSON
``{"error": "...", "status": N}``, like the apps' own errors.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask
from waitress.utilities import (
    BadRequest,
    RequestEntityTooLarge,
    RequestHeaderFieldsTooLarge,
)

from edgefleet.errors import InputError

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# waitress counts its own listening socket and its wake-up pipe among the open
# connections it compares with connection_limit.
_OWN_DISPATCHERS = 2


@dataclass(frozen=True)
class ServerLimits:
    """How much one client may ask of the server. Whole seconds: waitress's unit."""

    max_body: int = 1 << 20
    max_header: int = 16 * 1024
    timeout: int = 30
    connections: int = 32
    threads: int = 2

    def __post_init__(self) -> None:
        for name in ("max_body", "max_header", "timeout", "connections", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"the server's {name} must be a whole number >= 1, not {value!r}")

    def adjustments(self, host: str, port: int) -> dict[str, Any]:
        return {
            "listen": f"{host}:{port}",
            "ident": "edgefleet",
            # waitress refuses a body of max_request_body_size bytes or more.
            "max_request_body_size": self.max_body + 1,
            "max_request_header_size": self.max_header,
            "channel_timeout": self.timeout,
            # Silent connections are looked for this often: at most half the timeout late.
            "cleanup_interval": max(1, self.timeout // 2),
            "connection_limit": self.connections + _OWN_DISPATCHERS,
            "threads": self.threads,
            "expose_tracebacks": False,
        }


def _message(error: Any, limits: ServerLimits) -> str:
    if isinstance(error, RequestEntityTooLarge):
        return f"the request body is over {limits.max_body} bytes, this server's limit"
    if isinstance(error, RequestHeaderFieldsTooLarge):
        return f"the request line and headers are over {limits.max_header} bytes"
    if isinstance(error, BadRequest) and "Content-Length" in str(error.body):
        return "the Content-Length header must be a whole number of bytes, 0 or more"
    if isinstance(error, BadRequest):
        return f"malformed request: {error.body}"
    if error.code >= 500:
        return "internal error: the server could not answer this request"
    return str(error.body)


class _JsonErrorTask(ErrorTask):  # type: ignore[misc]
    """waitress's refusals (400, 413, 431, 500, 501) as JSON."""

    def execute(self) -> None:
        error = self.request.error
        body = json.dumps(
            {"error": _message(error, self.channel.server.limits), "status": error.code}
        ).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _JsonChannel(HTTPChannel):  # type: ignore[misc]
    error_task_class = _JsonErrorTask
    request_began = 0.0

    def received(self, data: bytes) -> bool:
        if self.request is None:  # these bytes begin a request
            self.request_began = time.time()
        return bool(super().received(data))


class _Server(TcpWSGIServer):  # type: ignore[misc]
    channel_class = _JsonChannel

    def __init__(
        self,
        app: WsgiApp,
        limits: ServerLimits,
        adj: Adjustments,
        sock: socket.socket | None = None,
    ) -> None:
        self.limits = limits
        if sock is None:
            super().__init__(app, map={}, adj=adj)
            return
        # A socket bound (and listening) already, shared by pre-forked worker processes.
        info = (sock.family, sock.type, sock.proto, sock.getsockname())
        super().__init__(app, map={}, adj=adj, _sock=sock, bind_socket=False, sockinfo=info)

    def maintenance(self, now: float) -> None:
        """waitress closes the silent connections; this also closes those whose request
        has been arriving for longer than the timeout."""
        super().maintenance(now)
        cutoff = now - self.limits.timeout
        for channel in self.active_channels.values():
            arriving = channel.request is not None and not channel.requests
            if arriving and channel.request_began < cutoff:
                channel.will_close = True


class HttpServer:
    """``app`` served on ``host:port`` (port 0: any free one) within ``limits``.

    ``serve_forever`` in the calling thread (Ctrl-C ends it), or ``start`` a thread and
    ``stop`` it. ``sock``: serve a listening socket made elsewhere (``host`` and ``port``
    then only describe it), as the scoring service's worker processes share one."""

    def __init__(
        self,
        app: WsgiApp,
        host: str,
        port: int,
        limits: ServerLimits,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        self.limits = limits
        try:
            adj = Adjustments(**limits.adjustments(host, port))
            self._server = _Server(app, limits, adj, sock)
        except OSError as error:
            raise InputError(
                f"cannot listen on {host}:{port} ({error.strerror}): choose another port"
            ) from None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve until :meth:`stop` (from another thread) or an exception such as
        KeyboardInterrupt; then close every connection and the worker threads."""
        adj = self._server.adj
        try:
            while not self._stopping.is_set():
                wasyncore.loop(
                    timeout=adj.asyncore_loop_timeout,
                    map=self._server._map,
                    use_poll=adj.asyncore_use_poll,
                    count=1,
                )
        finally:
            self._close()

    def start(self, name: str = "http-server") -> HttpServer:
        self._thread = threading.Thread(target=self.serve_forever, name=name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is None:
            self._close()
            return
        # Wakes the loop out of poll() at once. The loop may have seen the flag and closed
        # the trigger already (EBADF): then there is nothing left to wake.
        with contextlib.suppress(OSError):
            self._server.pull_trigger()
        self._thread.join()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.task_dispatcher.shutdown()
        wasyncore.close_all(self._server._map)

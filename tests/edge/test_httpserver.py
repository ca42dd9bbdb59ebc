"""The shared production HTTP server (waitress) on its own: its refusals are JSON, a bug in
an app is a JSON 500, a port in use is a plain error, and it stops cleanly."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from edgefleet.edge.httpserver import HttpServer, ServerLimits
from edgefleet.errors import InputError
from tests.http_attacks import exchange, head, trickled_until_closed


def _failing(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    raise RuntimeError("a bug in the app")


def _hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"body": environ["wsgi.input"].read().decode()}).encode()]


def test_an_app_that_raises_is_answered_with_a_json_500() -> None:
    server = HttpServer(_failing, "127.0.0.1", 0, ServerLimits()).start()
    try:
        answer = exchange(server.port, head("GET", "/"))
        assert answer.status == 500
        assert "internal error" in answer.error()
        assert "a bug" not in answer.body.decode()  # no traceback for the client
    finally:
        server.stop()


def test_a_chunked_body_reaches_the_app_whole_and_an_unknown_encoding_is_json() -> None:
    server = HttpServer(_hello, "127.0.0.1", 0, ServerLimits(max_body=100)).start()
    try:
        start = head("POST", "/", Transfer_Encoding="chunked")
        answer = exchange(server.port, start + b"5\r\nhello\r\n0\r\n\r\n")
        assert (answer.status, answer.json()) == (200, {"body": "hello"})
        odd = exchange(server.port, head("POST", "/", Transfer_Encoding="gzip"))
        assert odd.status == 501
        odd.error()
        answer = exchange(server.port, head("POST", "/", Content_Length=100) + b"x" * 100)
        assert answer.status == 200  # the limit itself is allowed
        assert exchange(server.port, head("POST", "/", Content_Length=101)).status == 413
    finally:
        server.stop()


def test_a_port_in_use_is_a_plain_error() -> None:
    first = HttpServer(_hello, "127.0.0.1", 0, ServerLimits())
    try:
        with pytest.raises(InputError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            HttpServer(_hello, "127.0.0.1", first.port, ServerLimits())
    finally:
        first.stop()  # never started: closes at once


@pytest.mark.parametrize("field", ["max_body", "max_header", "timeout", "connections", "threads"])
def test_limits_must_be_positive_whole_numbers(field: str) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match=field):
            ServerLimits(**{field: bad})


def test_a_request_that_trickles_in_is_cut_off_at_the_timeout() -> None:
    """Never silent for the idle timeout, but the whole request must arrive within it."""
    server = HttpServer(_hello, "127.0.0.1", 0, ServerLimits(timeout=2)).start()
    try:
        start = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        assert trickled_until_closed(server.port, start, pause=0.25)
        answer = exchange(server.port, head("POST", "/", Content_Length=2) + b"ok")
        assert (answer.status, answer.json()) == (200, {"body": "ok"})
    finally:
        server.stop()

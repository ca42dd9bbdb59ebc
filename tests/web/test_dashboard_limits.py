"""The dashboard as ``edgefleet serve`` runs it (waitress, :func:`dashboard_server`) against
hostile clients on raw sockets: the same attacks as on the agent's local API, aimed at the
JSON API's write endpoint with a valid write token, so that only the limits stand in the
way. Every refusal is JSON naming the limit, and the dashboard goes on answering."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgefleet.edge.httpserver import HttpServer
from edgefleet.web.app import create_app
from edgefleet.web.server import DASHBOARD_LIMITS, MAX_BODY, dashboard_server
from tests.http_attacks import (
    Answer,
    chunked,
    closed_by_server,
    deep_json,
    exchange,
    filler,
    head,
    idle_connections,
    trickled_until_closed,
)

TOKEN = "test-write-token-0123456789"
FLEET = "shops"
PROMOTE = f"/api/fleets/{FLEET}/rollout/promote"
LIMITS = replace(DASHBOARD_LIMITS, timeout=2, connections=4)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    app = create_app(
        {
            "home": tmp_path,
            "db": f"sqlite:///{tmp_path / 'monitor.db'}",
            "fleets": (FLEET,),
            "write_token": TOKEN,
            # Nothing here reaches the broker: every write is refused before it.
            "broker": "mqtt://127.0.0.1:1",
        }
    )
    started = dashboard_server(app, "127.0.0.1", 0, LIMITS).start()
    try:
        yield started
    finally:
        started.stop()


def _write(**headers: str | int) -> bytes:
    return head("POST", PROMOTE, X_Edgefleet_Token=TOKEN, **headers)


def _still_answers(port: int) -> None:
    answer = exchange(port, head("GET", "/api/fleets"))
    assert answer.status == 200, answer
    assert answer.json() == {"fleets": [FLEET]}


def _attacks() -> dict[str, tuple[bytes, Any, int, str]]:
    """name -> (request head, body pieces, expected status, words of the message)."""
    hundred_k = deep_json(100_000)
    within = deep_json(30_000)  # 60 KB: under the body limit, so the parser sees it
    fields = json.dumps({f"field{i}": i for i in range(2000)}).encode()
    over = f"over {MAX_BODY} bytes"
    return {
        "negative Content-Length": (
            _write(Content_Length=-1),
            filler(1 << 20),
            400,
            "Content-Length header must be a whole number",
        ),
        "non-numeric Content-Length": (
            _write(Content_Length="0x10"),
            filler(1 << 20),
            400,
            "Content-Length header must be a whole number",
        ),
        "huge Content-Length, small body": (_write(Content_Length=10**12), [b"{}"], 413, over),
        "honest body over the limit": (
            _write(Content_Length=MAX_BODY + 1),
            filler(MAX_BODY + 1),
            413,
            over,
        ),
        "chunked body over the limit": (
            _write(Transfer_Encoding="chunked"),
            chunked(1 << 20),
            413,
            over,
        ),
        "100k nested arrays": (
            _write(Content_Length=len(hundred_k)),
            [hundred_k],
            413,
            over,
        ),
        "30k nested arrays within the body limit": (
            _write(Content_Length=len(within), Content_Type="application/json"),
            [within],
            400,
            "nested deeper than 4 levels",
        ),
        "2000 made-up fields": (
            _write(Content_Length=len(fields), Content_Type="application/json"),
            [fields],
            400,
            "and 1995 more",
        ),
    }


@pytest.mark.parametrize("name", list(_attacks()))
def test_a_hostile_request_is_refused_in_json_and_the_dashboard_goes_on(
    server: HttpServer, name: str
) -> None:
    start, pieces, status, words = _attacks()[name]
    answer = exchange(server.port, start, pieces)
    print(f"{name}: {answer.status} {answer.body[:300].decode()}")
    assert answer.status == status, answer
    assert words in answer.error()
    _still_answers(server.port)


def test_api_errors_are_json(server: HttpServer) -> None:
    port = server.port
    missing = exchange(port, head("GET", "/api/nope"))
    assert missing.status == 404
    missing.error()
    wrong = exchange(port, head("GET", PROMOTE))
    assert wrong.status == 405
    wrong.error()
    big = exchange(port, head("GET", "/api/fleets", X_Filler="x" * 40_000))
    assert big.status == 431
    assert "headers are over" in big.error()
    refused = exchange(port, head("POST", PROMOTE, Content_Length=0))
    assert refused.status == 403
    refused.error()
    broken = _json_write(port, b"{nope")
    assert (broken.status, "not JSON" in broken.error()) == (400, True)


def _json_write(port: int, body: bytes) -> Answer:
    return exchange(port, _write(Content_Length=len(body)) + body)


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /api/fleets HTTP/1.1\r\nHost: 127.0.0.1\r\n", _write(Content_Length=10) + b"{"],
    ids=["nothing", "half the headers", "half the body"],
)
def test_a_silent_connection_is_closed_after_the_timeout(server: HttpServer, sent: bytes) -> None:
    with idle_connections(server.port, 1) as (sock,):
        sock.sendall(sent)
        assert closed_by_server(sock), f"still open long after the {LIMITS.timeout} s timeout"
    _still_answers(server.port)


def test_more_connections_than_the_limit_wait_and_the_dashboard_goes_on(
    server: HttpServer,
) -> None:
    with idle_connections(server.port, 3 * LIMITS.connections) as flood:
        _still_answers(server.port)
        assert all(closed_by_server(sock) for sock in flood)
    _still_answers(server.port)


def test_a_request_that_trickles_in_is_cut_off_at_the_timeout(server: HttpServer) -> None:
    start = b"GET /api/fleets HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    assert trickled_until_closed(server.port, start, pause=LIMITS.timeout / 8)
    _still_answers(server.port)

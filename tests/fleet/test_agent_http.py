"""The agent's local HTTP API against hostile clients: a real agent with a real signed
model behind a real server on loopback, attacked over raw sockets. Every refusal must be
JSON naming the limit, and the agent must go on scoring the legitimate requests beside
them. The last test floods an ``edgefleet agent`` process and measures its memory."""

from __future__ import annotations

import json
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.publish import publish
from edgefleet.central.trainer import TrainedModel
from edgefleet.edge.agent.agent import Agent
from edgefleet.edge.agent.http import AgentHTTPServer, ApiLimits
from edgefleet.edge.signing import load_private_key
from edgefleet.errors import InputError
from tests.fleet.kit import agent_config, export_versions, running, wait_for
from tests.fleet.test_faults import AgentProcess
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

MiB = 1 << 20
LIMITS = ApiLimits(timeout=2, connections=4)


@pytest.fixture(scope="module")
def bundle(
    trained: Callable[[str], TrainedModel],
    keypair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    return export_versions(trained, keypair, tmp_path_factory.mktemp("http-home"), ("dt",))[0]


@pytest.fixture(scope="module")
def agent(
    broker: MosquittoBroker,
    bundle: Path,
    keypair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Agent]:
    """An agent of its own fleet with the model installed."""
    root = tmp_path_factory.mktemp("http-agent")
    fleet = f"f{uuid.uuid4().hex[:8]}"
    key = load_private_key(keypair[0])
    publish(bundle, fleet, broker.address, key, state_file=root / "rollout.json")
    with running(agent_config(broker, keypair, fleet, "dev-http", root / "dev")) as started:
        wait_for(lambda: started.model is not None, timeout=60, what="the model to install")
        yield started


@pytest.fixture
def server(agent: Agent) -> Iterator[AgentHTTPServer]:
    started = AgentHTTPServer(agent, 0, LIMITS).start()
    try:
        yield started
    finally:
        started.stop()


def _records(bundle: Path, count: int) -> list[dict[str, Any]]:
    golden = json.loads((bundle / "manifest.json").read_text())["golden"]
    return [golden[i % len(golden)]["record"] for i in range(count)]


def _post(port: int, path: str, document: Any) -> Answer:
    body = json.dumps(document).encode()
    return exchange(port, head("POST", path, Content_Length=len(body)) + body)


def _still_scores(port: int, bundle: Path) -> None:
    answer = _post(port, "/score", {"records": _records(bundle, 3)})
    assert answer.status == 200, answer
    assert len(answer.json()["predictions"]) == 3


def _attacks(bundle: Path) -> dict[str, tuple[bytes, Any, int, str]]:
    """name -> (request head, body pieces, expected status, words of the message)."""
    too_many = json.dumps({"records": _records(bundle, LIMITS.max_records + 1)}).encode()
    hundred_k = deep_json(100_000)
    deep_object = json.dumps(_nested({}, LIMITS.max_depth + 1)).encode()
    post = "POST", "/score"
    return {
        "negative Content-Length": (
            head(*post, Content_Length=-1),
            filler(4 * MiB),
            400,
            "Content-Length header must be a whole number",
        ),
        "non-numeric Content-Length": (
            head(*post, Content_Length="12abc"),
            filler(4 * MiB),
            400,
            "Content-Length header must be a whole number",
        ),
        "huge Content-Length, small body": (
            head(*post, Content_Length=10**12),
            [b'{"record": {}}'],
            413,
            f"over {MiB} bytes",
        ),
        "honest body over the limit": (
            head(*post, Content_Length=MiB + 1),
            filler(MiB + 1),
            413,
            f"over {MiB} bytes",
        ),
        "chunked body over the limit": (
            head(*post, Transfer_Encoding="chunked"),
            chunked(4 * MiB),
            413,
            f"over {MiB} bytes",
        ),
        "no Content-Length": (head(*post), [], 411, "Content-Length"),
        "100k nested arrays": (
            head(*post, Content_Length=len(hundred_k)),
            [hundred_k],
            400,
            f"nested deeper than {LIMITS.max_depth} levels",
        ),
        "objects one level too deep": (
            head(*post, Content_Length=len(deep_object)),
            [deep_object],
            400,
            f"nested deeper than {LIMITS.max_depth} levels",
        ),
        "too many records": (
            head(*post, Content_Length=len(too_many)),
            [too_many],
            413,
            f"the limit is {LIMITS.max_records}",
        ),
    }


def _nested(inner: Any, levels: int) -> Any:
    for _ in range(levels - 1):
        inner = {"a": inner}
    return inner


ATTACKS = (
    "negative Content-Length",
    "non-numeric Content-Length",
    "huge Content-Length, small body",
    "honest body over the limit",
    "chunked body over the limit",
    "no Content-Length",
    "100k nested arrays",
    "objects one level too deep",
    "too many records",
)


@pytest.mark.parametrize("name", ATTACKS)
def test_a_hostile_request_is_refused_in_json_and_scoring_goes_on(
    server: AgentHTTPServer, bundle: Path, name: str
) -> None:
    start, pieces, status, words = _attacks(bundle)[name]
    answer = exchange(server.port, start, pieces)
    print(f"{name}: {answer.status} {answer.body.decode()}")
    assert answer.status == status, answer
    assert words in answer.error()
    _still_scores(server.port, bundle)


def test_the_limits_themselves_are_allowed(server: AgentHTTPServer, bundle: Path) -> None:
    answer = _post(server.port, "/score", {"records": _records(bundle, LIMITS.max_records)})
    assert answer.status == 200, answer
    assert len(answer.json()["predictions"]) == LIMITS.max_records
    record = _records(bundle, 1)[0]
    deepest = json.dumps({"record": record, "padding": _nested([], LIMITS.max_depth - 1)})
    answer = exchange(
        server.port,
        head("POST", "/score", Content_Length=len(deepest)) + deepest.encode(),
    )
    assert answer.status == 200, answer


def test_every_error_is_json(server: AgentHTTPServer, bundle: Path) -> None:
    port = server.port
    assert "no such path /nope" in exchange(port, head("GET", "/nope")).error()
    wrong = exchange(port, head("GET", "/score"))
    assert (wrong.status, wrong.headers["allow"]) == (405, "POST")
    assert "answers POST" in wrong.error()
    assert exchange(port, head("DELETE", "/health")).status == 405
    big = exchange(port, head("GET", "/health", X_Filler="x" * 20_000))
    assert big.status == 431
    assert "headers are over" in big.error()
    assert "not JSON" in _raw_post(port, b"{nope").error()
    assert "must be a JSON object" in _post(port, "/score", [1]).error()
    bad = _post(port, "/score", {"record": dict(_records(bundle, 1)[0], tenure_months="ten")})
    assert (bad.status, "field 'tenure_months'" in bad.error()) == (400, True)
    unknown = _post(port, "/outcome", {"id": "nope", "label": 1})
    assert (unknown.status, "no recent prediction" in unknown.error()) == (404, True)
    garbage = exchange(port, b"\x16\x03\x01\x02\x00 not http\r\n\r\n")
    assert garbage.status == 400
    garbage.error()


def _raw_post(port: int, body: bytes) -> Answer:
    return exchange(port, head("POST", "/score", Content_Length=len(body)) + body)


class _BrokenAgent:
    """Stands in for an agent with a bug, and for one without a model."""

    def score(self, records: Any) -> list[Any]:
        raise RuntimeError("a bug")

    def status(self) -> dict[str, Any]:
        return {"model_version": None}


def test_a_bug_is_a_json_500_and_no_model_a_json_503() -> None:
    server = AgentHTTPServer(_BrokenAgent(), 0, LIMITS).start()  # type: ignore[arg-type]
    try:
        answer = _post(server.port, "/score", {"record": {}})
        assert answer.status == 500
        assert "internal error" in answer.error()
        health = exchange(server.port, head("GET", "/health"))
        assert (health.status, health.json()["model_version"]) == (503, None)
    finally:
        server.stop()


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        head("POST", "/score", Content_Length=10) + b"{",
    ],
    ids=["nothing", "half the headers", "half the body"],
)
def test_a_silent_connection_is_closed_after_the_timeout(
    server: AgentHTTPServer, bundle: Path, sent: bytes
) -> None:
    with idle_connections(server.port, 1) as (sock,):
        sock.sendall(sent)
        assert closed_by_server(sock), f"still open long after the {LIMITS.timeout} s timeout"
    _still_scores(server.port, bundle)


def test_more_connections_than_the_limit_wait_and_the_server_goes_on(
    server: AgentHTTPServer, bundle: Path
) -> None:
    """Three times the limit of silent connections: the server holds at most the limit
    open, closes the silent ones as they time out, and then serves a real request that
    queued behind them."""
    with idle_connections(server.port, 3 * LIMITS.connections) as flood:
        _still_scores(server.port, bundle)
        assert all(closed_by_server(sock) for sock in flood)
    _still_scores(server.port, bundle)


def test_limits_are_checked() -> None:
    for bad in ({"max_depth": 0}, {"max_depth": 500}, {"max_records": -1}, {"timeout": 0}):
        with pytest.raises(InputError):
            ApiLimits(**bad)  # type: ignore[arg-type]


# -- the agent process under a flood -------------------------------------------------------


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def test_a_flood_of_oversize_requests_leaves_the_agent_process_memory_bounded(
    broker: MosquittoBroker, bundle: Path, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    """The attack of the issue (Content-Length -1 with a huge body took the agent from
    182 to 652 MiB) and its relatives, 30 times each, against ``edgefleet agent``."""
    fleet = f"f{uuid.uuid4().hex[:8]}"
    key = load_private_key(keypair[0])
    publish(bundle, fleet, broker.address, key, state_file=tmp_path / "rollout.json")
    device = AgentProcess(broker, keypair[1], fleet, "dev-flood", tmp_path / "dev-flood")
    device.start()
    try:
        device.wait_status("the model installed", model_version="1.0.0")
        assert device.process is not None
        pid = device.process.pid
        for _ in range(20):  # warm up: what a legitimate app costs
            _still_scores(device.port, bundle)
        before = _rss(pid)
        peak = _Peak(pid)
        with peak:
            counts = _flood(device.port, bundle)
        _still_scores(device.port, bundle)
        after = _rss(pid)
        print(
            f"\nagent RSS before the flood {before / MiB:.1f} MiB, peak seen "
            f"{peak.value / MiB:.1f} MiB, after {after / MiB:.1f} MiB; refusals {counts}"
        )
        assert after - before < 50 * MiB
        assert peak.value - before < 50 * MiB
    finally:
        if device.process is not None and device.process.poll() is None:
            device.process.send_signal(signal.SIGTERM)
            device.process.wait(timeout=60)


def _flood(port: int, bundle: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _ in range(30):
        attacks = _attacks(bundle)  # afresh: their bodies are generators
        for name in (
            "negative Content-Length",
            "huge Content-Length, small body",
            "chunked body over the limit",
            "100k nested arrays",
            "too many records",
        ):
            start, pieces, status, _ = attacks[name]
            answer = exchange(port, start, pieces)
            assert answer.status == status, (name, answer)
            counts[status] = counts.get(status, 0) + 1
    # The 100k records, as one body with Content-Length -1.
    records = json.dumps({"records": _records(bundle, 100_000)}).encode()
    answer = exchange(port, head("POST", "/score", Content_Length=-1), [records])
    assert answer.status == 400
    return counts


class _Peak:
    """The highest RSS of ``pid`` sampled while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.value = _rss(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.value = max(self.value, _rss(self.pid))

    def __enter__(self) -> _Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def test_a_request_that_trickles_in_is_cut_off_at_the_timeout(
    server: AgentHTTPServer, bundle: Path
) -> None:
    start = b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    assert trickled_until_closed(server.port, start, pause=LIMITS.timeout / 8)
    _still_scores(server.port, bundle)

"""Hostile HTTP clients on raw sockets, for the tests of both servers (the agent's local
API and the dashboard): malformed lengths, oversize and chunked bodies, deep JSON, silent
connections, connection floods. Each attack reads the server's answer as soon as it comes,
so that an answer sent before the whole body is still seen."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

PIECE = 64 * 1024
DEADLINE = 60.0  # generous: other test runs share the two cores


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> str:
        """The message of a JSON error answer, after checking its form."""
        assert self.headers.get("content-type") == "application/json", self
        document = self.json()
        assert isinstance(document, dict), self
        assert document.get("status") == self.status, self
        message = document["error"]
        assert isinstance(message, str), self
        assert message, self
        return message


def parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), raw[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(body)))
    return Answer(int(lines[0].split()[1]), headers, body[:length])


def head(method: str, path: str, host: str = "127.0.0.1", **headers: str | int) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def exchange(port: int, start: bytes, pieces: Iterable[bytes] = ()) -> Answer:
    """Send ``start``, then ``pieces`` for as long as the server has not answered; return
    the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(start)
        for piece in pieces:
            if select.select([sock], [], [], 0)[0]:
                break  # answered (or closed) already: the rest is not wanted
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        return parse(read_all(sock))


def read_all(sock: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            data = sock.recv(PIECE)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


def chunked(total: int) -> Iterator[bytes]:
    """``total`` bytes of a chunked body, in 64 KiB chunks, then the last chunk."""
    sent = 0
    while sent < total:
        size = min(PIECE, total - sent)
        yield b"%x\r\n" % size + b" " * size + b"\r\n"
        sent += size
    yield b"0\r\n\r\n"


def filler(total: int) -> Iterator[bytes]:
    while total > 0:
        yield b" " * min(PIECE, total)
        total -= PIECE


def closed_by_server(sock: socket.socket, deadline: float = DEADLINE) -> bool:
    """Whether the server closes ``sock`` within ``deadline`` seconds (reading and
    discarding whatever it sends first)."""
    sock.settimeout(deadline)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if not sock.recv(PIECE):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def trickled_until_closed(port: int, start: bytes, pause: float) -> bool:
    """Send ``start`` and then a header one byte every ``pause`` seconds (never silent
    long enough for the idle timeout, never ending the headers); whether the server closes
    the connection within the deadline."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(start + b"X-Slow: ")
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if select.select([sock], [], [], pause)[0]:
                return closed_by_server(sock)
            try:
                sock.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                return True
    return False


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that send nothing."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))
            for _ in range(count)
        ]


def deep_json(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels

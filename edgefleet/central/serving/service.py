"""The supervising process of the scoring service: one listening socket, several worker
processes serving it, restarted if one dies, and (in a fleet) the member that follows
rollouts and reports.

Why pre-forked processes sharing one socket: request parsing and JSON are Python, bound by
the GIL, so a second core needs a second process. One socket shared by all (rather than one
SO_REUSEPORT socket each) keeps a single accept queue: an idle worker takes the next
connection, where SO_REUSEPORT would hash it to a worker that may be busy with a big batch.
Workers are started with ``spawn`` (a fresh interpreter), never ``fork``: the supervisor
runs MQTT and agent threads, and onnxruntime's thread pools do not survive a fork.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from edgefleet.central.serving.worker import WorkerSpec, worker_main
from edgefleet.errors import InputError

logger = logging.getLogger("edgefleet.serving")

Handler = Callable[[tuple[Any, ...]], None]
"""What the supervisor does with a worker's message (counts, outcomes, loaded, refused)."""


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: bool = False
    loaded: str | None = None

    def send(self, message: tuple[Any, ...]) -> None:
        with self.lock, contextlib.suppress(OSError):
            self.conn.send(message)


class ScoringService:
    """``workers`` processes on ``host:port`` (port 0: a free one). ``on_message`` gets
    every worker message; ``welcome()`` returns what a newly started worker must be sent
    first (the fleet's active model), or None."""

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        workers: int = 2,
        on_message: Handler = lambda message: None,
        welcome: Callable[[], tuple[Any, ...] | None] = lambda: None,
    ) -> None:
        if not 1 <= workers <= 64:
            raise InputError(f"--workers must be from 1 to 64, not {workers}")
        self.spec = spec
        self.count = workers
        self.on_message = on_message
        self.welcome = welcome
        self.restarts = 0
        try:
            self.socket = socket.create_server((spec.host, spec.port), backlog=4096)
        except OSError as error:
            raise InputError(
                f"cannot listen on {spec.host}:{spec.port} ({error.strerror}): choose another port"
            ) from None
        self.port = self.socket.getsockname()[1]
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._failure: str | None = None

    @property
    def url(self) -> str:
        host = self.spec.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self, ready_timeout: float = 120.0) -> ScoringService:
        """Start the workers and wait until each serves (it verified its bundles)."""
        for index in range(self.count):
            self._spawn(index)
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + ready_timeout
        while self._failure is None and not all(w.ready for w in self._workers.values()):
            if time.monotonic() > deadline:
                self.stop()
                raise InputError(f"the workers did not start within {ready_timeout:g} s")
            time.sleep(0.05)
        if self._failure is not None:
            self.stop()
            raise InputError(f"a worker could not start: {self._failure}")
        self._started = True
        return self

    def _spawn(self, index: int) -> None:
        parent, child = self._context.Pipe()
        spec = replace(self.spec, port=self.port)
        process = self._context.Process(
            target=worker_main,
            args=(index, spec, self.socket, child),
            name=f"edgefleet-worker-{index}",
            daemon=True,
        )
        process.start()
        child.close()
        self._workers[index] = _Worker(index, process, parent)

    def broadcast(self, message: tuple[Any, ...]) -> None:
        for worker in list(self._workers.values()):
            worker.send(message)

    def workers_on(self, sha256: str) -> bool:
        """Whether every worker serves the model of ``sha256``."""
        return all(w.loaded == sha256 for w in self._workers.values())

    def _watch(self) -> None:
        while not self._stopping.is_set():
            by_conn = {w.conn: w for w in self._workers.values()}
            for conn in wait(list(by_conn), timeout=0.5):
                worker = by_conn[conn]  # type: ignore[index]
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    self._replace(worker)
                    continue
                self._handle(worker, message)

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        if message[0] == "failed":
            self._failure = message[1]
        elif message[0] == "ready":
            worker.ready = True
            first = self.welcome()
            if first is not None:
                worker.send(first)
        elif message[0] == "loaded":
            worker.loaded = message[1]
        try:
            self.on_message(message)
        except Exception:
            logger.exception("handling a worker's %s message failed", message[0])

    def _replace(self, worker: _Worker) -> None:
        worker.process.join(timeout=5)
        worker.conn.close()
        if self._stopping.is_set():
            self._workers.pop(worker.index, None)
            return
        if not self._started:  # a worker that cannot start fails the start, not a loop
            self._failure = (
                self._failure or f"worker {worker.index} exited ({worker.process.exitcode})"
            )
            self._workers.pop(worker.index, None)
            return
        logger.warning(
            "worker %d died (exit status %s): starting another",
            worker.index,
            worker.process.exitcode,
        )
        self.restarts += 1
        time.sleep(min(5.0, 0.5 * self.restarts))  # a worker that dies at once must not spin
        self._spawn(worker.index)

    def stop(self, timeout: float = 30.0) -> None:
        """Let every worker finish what it has queued, then close."""
        self._stopping.set()
        for worker in list(self._workers.values()):
            worker.send(("stop",))
        if self._thread is not None:
            self._thread.join(timeout=5)  # from here on only this thread reads the pipes
        deadline = time.monotonic() + timeout
        for worker in list(self._workers.values()):
            self._drain(worker, deadline)
            worker.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
        self.socket.close()

    def _drain(self, worker: _Worker, deadline: float) -> None:
        """The worker's last counts, sent as it stops."""
        while time.monotonic() < deadline:
            try:
                if not worker.conn.poll(0.1):
                    if not worker.process.is_alive():
                        return
                    continue
                message = worker.conn.recv()
            except (EOFError, OSError):
                return
            self._handle(worker, message)

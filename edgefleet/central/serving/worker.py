"""One worker process of the scoring service: waitress on the listening socket the
supervisor shares with every worker, its own batcher per model, and a pipe to the
supervisor (models to load in; report counts and labels out).

Messages on the pipe (pickled tuples, between processes of one service only):

    supervisor -> worker   ("model", state_dir, manifest_sha256, format)   load and swap in
                           ("stop",)
    worker -> supervisor   ("ready", index)  ("loaded", sha256)  ("refused", sha256, why)
                           ("counts", ReportBody)  ("outcome", PredictionRef, label)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.central.serving.app import ServiceApp, ServiceLimits
from edgefleet.central.serving.batcher import BatchLimits
from edgefleet.central.serving.models import Catalog
from edgefleet.central.serving.predid import PredictionIds, PredictionRef
from edgefleet.edge.agent.answers import Outcome
from edgefleet.edge.agent.installer import load_verified
from edgefleet.edge.agent.store import ModelStore
from edgefleet.edge.httpserver import HttpServer
from edgefleet.edge.scorer import Scorer
from edgefleet.edge.signing import TrustedKey
from edgefleet.errors import EdgefleetError

logger = logging.getLogger("edgefleet.serving")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable (keys travel as raw public bytes)."""

    trusted_keys: tuple[bytes, ...]
    secret: bytes
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    batching: BatchLimits = field(default_factory=BatchLimits)
    bundles: tuple[str, ...] = ()
    format: str | None = None
    reporting: bool = False
    report_seconds: float = 1.0
    host: str = "127.0.0.1"
    port: int = 0

    def keys(self) -> list[TrustedKey]:
        return [
            TrustedKey.from_public_key(Ed25519PublicKey.from_public_bytes(k))
            for k in self.trusted_keys
        ]


class _Pipe:
    """The worker's end of the pipe; sends from several threads, one at a time."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        # OSError: the supervisor is gone, and this worker is being stopped.
        with self._lock, contextlib.suppress(OSError):
            self.conn.send(message)


def load_stored(spec: WorkerSpec, state_dir: str, sha256: str, fmt: str) -> Scorer:
    """A model the fleet member installed: verified again here (signature, artifact hash,
    golden vectors), as a device verifies what it loads."""
    return load_verified(ModelStore(Path(state_dir)), sha256, fmt, spec.keys())


def worker_main(index: int, spec: WorkerSpec, sock: socket.socket, conn: Connection) -> None:
    logging.basicConfig(level=logging.WARNING, format=f"worker {index}: %(message)s")
    # Request threads hand work to the batcher and back: with CPython's default 5 ms
    # switch interval a thread ready to answer can wait that long for the GIL, which is
    # the whole tail-latency budget. 0.5 ms keeps the hand-offs short.
    sys.setswitchinterval(0.0005)
    pipe = _Pipe(conn)
    catalog = Catalog(spec.batching, reporting=spec.reporting)
    keys = spec.keys()
    try:
        for bundle in spec.bundles:  # verified here too: this process scores with it
            catalog.install(Scorer.from_bundle(bundle, keys, format=spec.format))
    except EdgefleetError as error:
        pipe.send(("failed", str(error)))
        conn.close()
        sys.exit(2)

    def outcome(ref: PredictionRef, label: Outcome) -> None:
        pipe.send(("outcome", ref, label))

    app = ServiceApp(
        catalog, spec.limits, PredictionIds(spec.secret), outcome if spec.reporting else None
    )
    server = HttpServer(app, spec.host, spec.port, spec.limits.server(), sock=sock)
    server.start(name=f"worker-{index}-http")
    stopping = threading.Event()
    reporter = threading.Thread(
        target=_report_loop, args=(catalog, pipe, spec.report_seconds, stopping), daemon=True
    )
    reporter.start()
    pipe.send(("ready", index))
    try:
        _command_loop(spec, catalog, pipe)
    finally:
        server.stop()
        catalog.stop()
        stopping.set()
        reporter.join(timeout=10)
        for body in catalog.roll():
            pipe.send(("counts", body))
        conn.close()


def _report_loop(catalog: Catalog, pipe: _Pipe, seconds: float, stopping: threading.Event) -> None:
    while not stopping.wait(seconds):
        for body in catalog.roll():
            pipe.send(("counts", body))


def _command_loop(spec: WorkerSpec, catalog: Catalog, pipe: _Pipe) -> None:
    while True:
        try:
            message = pipe.conn.recv()
        except (EOFError, OSError):
            return  # the supervisor is gone
        if message[0] == "stop":
            return
        if message[0] == "model":
            _, state_dir, sha256, fmt = message
            try:
                catalog.install(load_stored(spec, state_dir, sha256, fmt), sha256)
            except (EdgefleetError, OSError, ValueError) as error:
                logger.warning("model %s refused: %s", sha256[:12], error)
                pipe.send(("refused", sha256, str(error)))
            else:
                pipe.send(("loaded", sha256))

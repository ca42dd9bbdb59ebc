"""The scoring service under concurrency, against MLServer serving the same model, and the
stream's throughput and lag. Goals: at 64 clients, edgefleet's requests/s >= 2x MLServer's
with no errors; at 8 clients, p99 < 20 ms.

Service: the same trained model (``--family``, default logreg: the cheapest model, so the
comparison measures the servers rather than the model) served by

- ``edgefleet serve-model`` (the real command: ``--workers`` processes, one per CPU by
  default, adaptive batching) from its signed ONNX bundle;
- MLServer (``mlserver`` + ``mlserver-sklearn`` from PyPI, in a separate virtual environment
  ``.venv-mlserver`` that this script creates once: MLServer's pins would break the
  project's) serving the scikit-learn pipeline itself (joblib), with its default settings.

Both get the same request: one record as the model contract's ``[1, F]`` FP32 tensor, Open
Inference Protocol, asking for the probabilities. The load generator is wrk (Debian's
``wrk``, C and epoll, one thread): closed loop, N connections each sending its next request
when the last is answered, for ``--seconds`` each; a Python client would take much of the
CPU of a 2-core machine from the servers it measures. Errors are non-2xx answers, socket
errors and timeouts (10 s).

Stream: ``edgefleet stream score`` processes (the real command) consuming a real Mosquitto
into a SQLite file. events/s: a backlog of ``--events`` events queued for the consumers'
sessions while they are away, drained by 1 and then 2 consumers of one shared
subscription, from the first commit to the last (rows committed, as in bench.ingest).
Lag: ``--rate`` events/s published for ``--lag-seconds`` to one running consumer; lag is
the row's commit time minus the event's publish time.

    .venv/bin/python -m bench.serve [--seconds 10] [--clients 1,8,64] [--family logreg]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from bench.common import Exported, train_and_export
from edgefleet.central.broker import MosquittoBroker, free_port
from edgefleet.central.stream.sink import StreamTable
from edgefleet.edge.mqtt import MqttClient

REPO = Path(__file__).resolve().parents[1]
MLSERVER_VENV = REPO / ".venv-mlserver"
# uvloop 0.22 raises from asyncio.get_event_loop() where MLServer 1.7's inference-pool
# workers call it (every worker dies at start and the model is unloaded): pinned below.
MLSERVER_PACKAGES = ("mlserver", "mlserver-sklearn", "uvloop<0.22")
CLI = [sys.executable, "-m", "edgefleet.cli.main"]


def sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


def ensure_mlserver() -> Path:
    """MLServer in its own venv, with this scikit-learn version (to load the pipeline)."""
    binary = MLSERVER_VENV / "bin" / "mlserver"
    if binary.exists():
        return binary
    print(f"- creating {MLSERVER_VENV} with {', '.join(MLSERVER_PACKAGES)} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
    pip = [str(MLSERVER_VENV / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, *MLSERVER_PACKAGES, f"scikit-learn=={sklearn_version()}"], check=True)
    return binary


def wait_ready(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} was not ready within 180 s")


def start_edgefleet(
    exported: Exported, workers: int, log: Path
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port("127.0.0.1")
    command = [
        *CLI,
        "serve-model",
        str(exported.result.bundle),
        "--trust-key",
        str(exported.public_key),
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, "edgefleet serve-model")
    return url, process


def start_mlserver(
    exported: Exported, folder: Path, log: Path
) -> tuple[str, subprocess.Popen[bytes]]:
    binary = ensure_mlserver()
    model = folder / "churn"
    model.mkdir(parents=True)
    (model / "model.joblib").write_bytes((exported.version.path / "pipeline.joblib").read_bytes())
    (model / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "churn",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": exported.version.version},
            }
        )
    )
    port = free_port("127.0.0.1")
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "http_port": port,
                "grpc_port": free_port("127.0.0.1"),
                "metrics_port": free_port("127.0.0.1"),
                "host": "127.0.0.1",
            }
        )
    )
    process = subprocess.Popen(
        [str(binary), "start", str(folder)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=folder,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, "MLServer")
    return url, process


def request_body(exported: Exported, output: str) -> bytes:
    row = json.loads((exported.result.bundle / "manifest.json").read_text())["golden"][0]["input"]
    return json.dumps(
        {
            "inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}],
            "outputs": [{"name": output}],
        }
    ).encode()


WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, '
    .. '"errors": %d}\\n', summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.status + e.connect + e.read + e.write + e.timeout))
end
"""


def drive(url: str, body: bytes, clients: int, seconds: float, folder: Path) -> dict[str, Any]:
    script = folder / f"wrk-{clients}.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{body.decode()}]==]\n{WRK_DONE}"
    )
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    result: dict[str, Any] = json.loads(line[4:])
    result["rps"] = result["requests"] / result["seconds"]
    return result


def check_answer(url: str, body: bytes) -> list[float]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        data: list[float] = json.loads(answer.read())["outputs"][0]["data"]
    return data


def bench_service(
    args: argparse.Namespace, exported: Exported, folder: Path
) -> list[dict[str, Any]]:
    edge_url, edge = start_edgefleet(exported, args.workers, folder / "edgefleet.log")
    processes = [edge]
    targets = {
        "edgefleet": (f"{edge_url}/v2/models/churn/infer", request_body(exported, "probabilities")),
    }
    if not args.no_mlserver:
        ml_url, ml = start_mlserver(exported, folder / "mlserver", folder / "mlserver.log")
        processes.append(ml)
        targets["MLServer"] = (
            f"{ml_url}/v2/models/churn/infer",
            request_body(exported, "predict_proba"),
        )
        a, b = (check_answer(*targets[name]) for name in ("edgefleet", "MLServer"))
        assert np.allclose(a, b, atol=1e-5), f"the servers disagree: {a} vs {b}"
    rows = []
    try:
        for clients in args.clients:
            for name, (url, body) in targets.items():
                drive(url, body, clients, 1, folder)  # warm up connections and caches
                result = drive(url, body, clients, args.seconds, folder)
                rows.append({"server": name, "clients": clients, **result})
                print(
                    f"  {name:9} {clients:3} clients: {result['rps']:8.0f} req/s, "
                    f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                    f"{result['errors']} errors",
                    flush=True,
                )
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    return rows


# -- stream ------------------------------------------------------------------------------


def stream_events(exported: Exported, count: int, start: int = 0) -> list[bytes]:
    golden = json.loads((exported.result.bundle / "manifest.json").read_text())["golden"]
    records = [g["record"] for g in golden]
    return [
        json.dumps({**records[i % len(records)], "customer_id": f"C-{i}"}).encode()
        for i in range(start, start + count)
    ]


class Consumers:
    def __init__(
        self,
        exported: Exported,
        broker: MosquittoBroker,
        db: str,
        table: str,
        count: int,
        folder: Path,
    ) -> None:
        self.commands = [
            [
                *CLI,
                "stream",
                "score",
                str(exported.result.bundle),
                "--trust-key",
                str(exported.public_key),
                "--source",
                f"{broker.url}/events/{table}",
                "--db",
                db,
                "--table",
                table,
                "--key",
                "customer_id",
                "--group",
                table,
                "--consumer",
                f"c{i}",
            ]
            for i in range(count)
        ]
        self.logs = [folder / f"{table}-c{i}.log" for i in range(count)]
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for command, log in zip(self.commands, self.logs, strict=True):
            self.processes.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("ab"))
            )
        for process, log in zip(self.processes, self.logs, strict=True):
            while "consuming" not in log.read_text():
                if process.poll() is not None:
                    raise SystemExit(f"a consumer exited:\n{log.read_text()}")
                time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.wait(timeout=60)
        self.processes = []


def publish(
    broker: MosquittoBroker, topic: str, payloads: list[bytes], rate: float | None = None
) -> dict[str, float]:
    """Publish at QoS 1 (at ``rate`` per second if given); the publish time of each key."""
    sent: dict[str, float] = {}
    with MqttClient(
        broker.address, f"bench-pub-{topic}", clean_start=True, max_pending=5000
    ) as client:
        started = time.monotonic()
        for i, payload in enumerate(payloads):
            if rate is not None:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sent[json.loads(payload)["customer_id"]] = time.time()
            client.publish(topic, payload, qos=1)
        client.flush(timeout=300)
    return sent


def committed(table: StreamTable) -> dict[str, float]:
    with table.engine.connect() as connection:
        columns = table.store.table.c
        rows = connection.execute(select(columns.key, columns.scored_at)).all()
    return {key: (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() for key, at in rows}


def wait_rows(table: StreamTable, count: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while table.count() < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {table.count()} of {count} rows within {timeout:g} s")
        time.sleep(0.2)


def drain_rate(
    args: argparse.Namespace,
    exported: Exported,
    broker: MosquittoBroker,
    folder: Path,
    consumers: int,
) -> float:
    name = f"drain{consumers}"
    db = f"sqlite:///{folder / f'{name}.db'}"
    table = StreamTable(db, name)
    group = Consumers(exported, broker, db, name, consumers, folder)
    group.start()  # their sessions subscribe, then go away: the backlog queues for them
    group.stop()
    publish(broker, f"events/{name}", stream_events(exported, args.events))
    group.start()
    wait_rows(table, args.events)
    group.stop()
    times = sorted(committed(table).values())
    table.close()
    return float(args.events / max(times[-1] - times[0], 1e-9))


def lag(
    args: argparse.Namespace, exported: Exported, broker: MosquittoBroker, folder: Path
) -> dict[str, float]:
    db = f"sqlite:///{folder / 'lag.db'}"
    table = StreamTable(db, "lag")
    group = Consumers(exported, broker, db, "lag", 1, folder)
    group.start()
    count = int(args.rate * args.lag_seconds)
    sent = publish(broker, "events/lag", stream_events(exported, count), rate=args.rate)
    wait_rows(table, count)
    group.stop()
    rows = committed(table)
    table.close()
    lags = np.array([rows[key] - at for key, at in sent.items()]) * 1000
    return {
        "rate": args.rate,
        "p50_ms": float(np.percentile(lags, 50)),
        "p99_ms": float(np.percentile(lags, 99)),
        "max_ms": float(lags.max()),
    }


def bench_stream(args: argparse.Namespace, exported: Exported, folder: Path) -> dict[str, Any]:
    with MosquittoBroker(folder / "mosquitto") as broker:
        rates = {n: drain_rate(args, exported, broker, folder, n) for n in (1, 2)}
        for n, rate in rates.items():
            print(f"  stream, {n} consumer(s): {rate:,.0f} events/s committed", flush=True)
        lagged = lag(args, exported, broker, folder)
        print(
            f"  stream lag at {args.rate:g} events/s: p50 {lagged['p50_ms']:.1f} ms, "
            f"p99 {lagged['p99_ms']:.1f} ms, max {lagged['max_ms']:.1f} ms",
            flush=True,
        )
    return {"events_per_second": rates, "lag": lagged}


def table_text(rows: list[dict[str, Any]], stream: dict[str, Any] | None) -> str:
    lines = [
        "| server | clients | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['errors']} |"
        )
    by = {(r["server"], r["clients"]): r for r in rows}
    verdicts = []
    if ("edgefleet", 64) in by and ("MLServer", 64) in by:
        ratio = by["edgefleet", 64]["rps"] / max(by["MLServer", 64]["rps"], 1e-9)
        ok = ratio >= 2 and by["edgefleet", 64]["errors"] == 0
        verdicts.append(
            f"64 clients: edgefleet/MLServer = {ratio:.2f}x, "
            f"{by['edgefleet', 64]['errors']} errors (goal >= 2x, 0): "
            f"{'met' if ok else 'NOT met'}"
        )
    if ("edgefleet", 8) in by:
        p99 = by["edgefleet", 8]["p99_ms"]
        verdicts.append(
            f"8 clients: edgefleet p99 {p99:.2f} ms (goal < 20 ms): "
            f"{'met' if p99 < 20 else 'NOT met'}"
        )
    if stream:
        eps = stream["events_per_second"]
        verdicts.append(
            f"stream: {eps[1]:,.0f} events/s with 1 consumer, {eps[2]:,.0f} with 2; "
            f"lag at {stream['lag']['rate']:g}/s p50 {stream['lag']['p50_ms']:.1f} ms, "
            f"p99 {stream['lag']['p99_ms']:.1f} ms"
        )
    return "\n".join([*lines, "", *verdicts])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per load level and server")
    parser.add_argument("--clients", default="1,8,64", help="concurrent clients, comma-separated")
    parser.add_argument("--family", default="logreg")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--events", type=int, default=20000, help="stream backlog to drain")
    parser.add_argument("--rate", type=float, default=500.0, help="steady events/s for the lag")
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    parser.add_argument("--no-stream", action="store_true", help="the service only")
    parser.add_argument("--no-mlserver", action="store_true", help="edgefleet only")
    parser.add_argument("--no-service", action="store_true", help="the stream only")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "serve.json")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="edgefleet-bench-serve-"))
    print(f"- training {args.family} and exporting its signed bundle ...", flush=True)
    exported = train_and_export(args.family, ("onnx",))
    print(
        f"- service: wrk, {args.seconds:g} s per level, edgefleet with {args.workers} workers",
        flush=True,
    )
    rows = [] if args.no_service else bench_service(args, exported, folder)
    stream = None if args.no_stream else bench_stream(args, exported, folder)
    text = table_text(rows, stream)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"service": rows, "stream": stream}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

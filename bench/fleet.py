"""Fleet benchmarks against a real Mosquitto on loopback, each with its baseline measured in
the same run.

(a) rollout: time from publishing a new ~2 MB model until every one of N simulated agents
    (default 200, in this process, each with its own MQTT client) has downloaded,
    verified, self-tested and activated it. Target: under 30 s on 2 cores.
(b) report throughput, end to end: reports/s from agents' outboxes until a real monitor has
    stored each one and its end-to-end ack has removed it from the outbox (outbox -> QoS 1
    publish -> monitor commit -> ack -> outbox delete), against raw paho QoS 1 publishes of
    the same payload size arriving at a subscriber. Goal: at least 0.5x raw.
(c) memory: resident set of one `edgefleet agent` process with the ONNX model loaded, while
    it scores over its local HTTP API. Target: under 150 MB.

    .venv/bin/python -m bench.fleet [--devices 200] [--skip a,b,c]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import train_and_export
from edgefleet.central.broker import MosquittoBroker, free_port
from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import load_training_table
from edgefleet.central.export import export_bundle
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.publish import publish
from edgefleet.central.registry import Registry
from edgefleet.central.simulator import make_pool
from edgefleet.central.trainer import train
from edgefleet.edge.agent.agent import Agent, AgentConfig
from edgefleet.edge.signing import load_private_key, load_public_key

TARGET_ROLLOUT_SECONDS = 30.0
TARGET_RSS_MB = 150.0
TARGET_REPORT_RATIO = 0.5


def wait_until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def bench_rollout(devices: int, broker: MosquittoBroker, work: Path) -> tuple[float, int]:
    exported = train_and_export("rf", ("onnx",))
    key = load_private_key(exported.workdir / "keys" / "edgefleet.key")
    public = load_public_key(exported.public_key)
    # The second version: same data, another seed, so a different ~2.6 MB model.
    registry = Registry(exported.workdir)
    data = generate(20000, seed=1)
    model = train(load_training_table(data.frame, "churn", schema=data.schema), "rf", seed=1)
    second = registry.register(model, data_sha256="1" * 64)
    bundle2 = export_bundle(second, ["onnx"], exported.workdir / "bundle2", key).bundle
    size = (bundle2 / "model.onnx").stat().st_size
    fleet = "bench"
    state_file = work / "rollout.json"
    publish(exported.result.bundle, fleet, broker.address, key, state_file=state_file)
    agents = [
        Agent(
            AgentConfig(
                fleet=fleet,
                device_id=f"dev-{i:04d}",
                state_dir=work / f"d{i}",
                trusted_keys=(public,),
                broker=broker.address,
                report_seconds=3600.0,
                fetch_timeout=120.0,
            )
        )
        for i in range(devices)
    ]
    for agent in agents:
        agent.start()
    print(f"(a) {devices} agents installing the first version ...", file=sys.stderr)
    if not wait_until(lambda: all(a.model is not None for a in agents), 300):
        raise SystemExit("the first version did not reach every agent in 300 s")
    print(f"(a) publishing version 2 ({size:,} bytes) ...", file=sys.stderr)
    started = time.monotonic()
    publish(bundle2, fleet, broker.address, key, state_file=state_file)
    done = wait_until(
        lambda: all(a.model is not None and a.model.scorer.version == "1.1.0" for a in agents), 300
    )
    elapsed = time.monotonic() - started
    stoppers = [threading.Thread(target=a.stop) for a in agents]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join()
    if not done:
        raise SystemExit("version 2 did not reach every agent in 300 s")
    return elapsed, size


def raw_paho_rate(broker: MosquittoBroker, payload: bytes, count: int) -> float:
    received = threading.Semaphore(0)
    subscriber = paho.Client(CallbackAPIVersion.VERSION2, client_id="raw-sub", protocol=paho.MQTTv5)
    subscriber.on_message = lambda *_: received.release()
    subscriber.connect(broker.address.host, broker.address.port)
    subscriber.subscribe("raw/#", qos=1)
    subscriber.loop_start()
    time.sleep(0.3)
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="raw-pub", protocol=paho.MQTTv5)
    publisher.max_inflight_messages_set(20)
    publisher.connect(broker.address.host, broker.address.port)
    publisher.loop_start()
    started = time.monotonic()
    infos = [publisher.publish(f"raw/dev-{i % 20}", payload, qos=1) for i in range(count)]
    for _ in range(count):
        received.acquire(timeout=60)
    elapsed = time.monotonic() - started
    for info in infos:
        info.wait_for_publish(10)
    publisher.loop_stop()
    subscriber.loop_stop()
    publisher.disconnect()
    subscriber.disconnect()
    return count / elapsed


def bench_reports(
    broker: MosquittoBroker, work: Path, agents_n: int = 20, per_agent: int = 500
) -> tuple[float, float, int]:
    exported = train_and_export("dt", ("onnx",), rows=5000)
    key = load_private_key(exported.workdir / "keys" / "edgefleet.key")
    public = load_public_key(exported.public_key)
    fleet = "reports"
    publish(exported.result.bundle, fleet, broker.address, key, state_file=work / "r.json")
    pool = make_pool("none", 5)

    def make_agents() -> list[Agent]:
        return [
            Agent(
                AgentConfig(
                    fleet=fleet,
                    device_id=f"rep-{i:03d}",
                    state_dir=work / f"r{i}",
                    trusted_keys=(public,),
                    broker=broker.address,
                    report_seconds=3600.0,
                )
            )
            for i in range(agents_n)
        ]

    installing = make_agents()
    for agent in installing:
        agent.start()
    wait_until(lambda: all(a.model is not None for a in installing), 120)
    for agent in installing:
        agent.stop(flush_timeout=1.0)
    database = f"sqlite:///{work / 'monitor.db'}"
    MonitorStore(database).close()
    # The monitor in its own process, as it is deployed (never in a device's process).
    monitor = start_monitor(broker, fleet, database, work / "monitor.log")
    store = MonitorStore(database)
    # The same devices, offline: their reports (20 scored records each) wait in the outbox,
    # so what is timed below is delivery: outbox -> publish -> monitor commit -> ack.
    agents = make_agents()
    for _ in range(per_agent):
        for agent in agents:
            agent.score(pool.records[:20])
            agent.close_window()
    total = agents_n * per_agent
    payload_size = agents[0].outbox.stats().bytes // per_agent
    started = time.monotonic()
    for agent in agents:
        agent.start()
    drained = wait_until(lambda: all(a.outbox.stats().pending == 0 for a in agents), 300)
    elapsed = time.monotonic() - started
    stored = store.report_count(fleet)
    monitor.terminate()
    monitor.wait(timeout=60)
    store.close()
    if not drained or stored != total:
        raise SystemExit(f"only {stored} of {total} reports stored and acknowledged in 300 s")
    agent_rate = stored / elapsed
    for agent in agents:
        agent.stop(flush_timeout=1.0)
    raw_rate = raw_paho_rate(broker, b"x" * payload_size, total)
    return agent_rate, raw_rate, payload_size


def start_monitor(
    broker: MosquittoBroker, fleet: str, database: str, log: Path
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "edgefleet.cli.main", "--home", str(log.parent)),
                *("monitor", "--fleet", fleet, "--db", database, "--broker", broker.url),
                *("--client-id", "bench-monitor"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if not wait_until(lambda: b"storing" in log.read_bytes(), 120):
        process.kill()
        raise SystemExit(f"the monitor did not start:\n{log.read_text()}")
    return process


def bench_memory(broker: MosquittoBroker, work: Path) -> float:
    exported = train_and_export("rf", ("onnx",))
    key = load_private_key(exported.workdir / "keys" / "edgefleet.key")
    publish(exported.result.bundle, "memory", broker.address, key, state_file=work / "m.json")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.cli.main",
            "agent",
            "--fleet",
            "memory",
            "--device-id",
            "mem-1",
            "--state-dir",
            str(work / "mem"),
            "--trust-key",
            str(exported.public_key),
            "--broker",
            broker.url,
            "--http-port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        if not wait_until(healthy, 120):
            raise SystemExit("the agent process did not become healthy")
        pool = make_pool("none", 9)
        peak = 0.0
        for start in range(0, 4000, 100):
            body = json.dumps({"records": pool.records[start : start + 100]}).encode()
            request = urllib.request.Request(url + "/score", data=body, method="POST")
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
            peak = max(peak, psutil.Process(process.pid).memory_info().rss / 2**20)
        return peak
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    results: list[tuple[str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-fleet-") as scratch:
        work = Path(scratch)
        with MosquittoBroker(work / "broker") as broker:
            if "a" not in skip:
                seconds, size = bench_rollout(args.devices, broker, work / "a")
                ok = seconds < TARGET_ROLLOUT_SECONDS
                print(
                    f"(a) {args.devices} devices verified, self-tested and activated a new "
                    f"{size / 1e6:.1f} MB model in {seconds:.1f} s "
                    f"(target < {TARGET_ROLLOUT_SECONDS:.0f} s)"
                )
                results.append(("a", ok))
            if "b" not in skip:
                agent_rate, raw_rate, payload = bench_reports(broker, work / "b")
                ok = agent_rate / raw_rate >= TARGET_REPORT_RATIO
                print(
                    f"(b) reports through agents, stored and acknowledged end to end: "
                    f"{agent_rate:,.0f}/s; raw paho QoS 1 publishes of the same {payload:,} "
                    f"bytes: {raw_rate:,.0f}/s; ratio {agent_rate / raw_rate:.2f} "
                    f"(goal >= {TARGET_REPORT_RATIO})"
                )
                results.append(("b", ok))
            if "c" not in skip:
                rss = bench_memory(broker, work / "c")
                ok = rss < TARGET_RSS_MB
                print(
                    f"(c) one agent process, ONNX random forest loaded, scoring: peak RSS "
                    f"{rss:.0f} MB (target < {TARGET_RSS_MB:.0f} MB)"
                )
                results.append(("c", ok))
    for part, ok in results:
        print(f"{'PASS' if ok else 'FAIL'} ({part})")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())

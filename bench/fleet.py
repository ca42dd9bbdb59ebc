"""Fleet benchmarks against a real Mosquitto on loopback, each with its baseline measured in
the same run.

(a) rollout: time from publishing a new ~2 MB model until every one of N simulated agents
    (default 200, in this process, each with its own MQTT client) has downloaded,
    verified, self-tested and activated it. Target: under 30 s on 2 cores.
(b) report throughput, end to end: reports/s from agents' outboxes until a monitor (its own
    process, as deployed) has stored each one and its end-to-end ack has removed it from
    the outbox (outbox -> QoS 1 publish -> monitor checks it against its version's
    profile and commits -> ack -> outbox delete), against raw paho QoS 1 publishes of the
    same payload size arriving at a subscriber, measured right after each plain round.
    Goal: at least 0.5x raw.

(a) and (b) run twice: on an anonymous plain-TCP broker (--insecure-dev) and on the secured
one (TLS, a certificate per device and service, the access list), and print the cost of
security. Goal: under 20 %.
(c) memory: resident set of one `edgefleet agent` process with the ONNX model loaded, while
    it scores over its local HTTP API. Target: under 150 MB.

    .venv/bin/python -m bench.fleet [--devices 200] [--skip a,b,c]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import Exported, train_and_export
from edgefleet.central.broker import MosquittoBroker, free_port
from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import load_training_table
from edgefleet.central.export import export_bundle
from edgefleet.central.identity import authority
from edgefleet.central.keys import generate_keys
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.publish import publish
from edgefleet.central.registry import Registry
from edgefleet.central.simulator import make_pool
from edgefleet.central.trainer import train
from edgefleet.edge.agent.agent import Agent, AgentConfig
from edgefleet.edge.identity import load_identity
from edgefleet.edge.mqtt import BrokerAddress
from edgefleet.edge.signing import TrustedKey, load_private_key, load_public_key

TARGET_ROLLOUT_SECONDS = 30.0
TARGET_RSS_MB = 150.0
TARGET_TLS_COST = 0.20
TARGET_REPORT_RATIO = 0.5
REPORT_ROUNDS = 3


@dataclass(frozen=True)
class Net:
    """A broker and how each party reaches it: anonymously (``home`` None) or each with
    its own identity from the CA in ``home``."""

    name: str
    broker: MosquittoBroker
    home: Path | None = None

    def enroll(self, fleet: str, device_ids: list[str]) -> None:
        if self.home is not None:
            authority.enroll_devices(
                self.home,
                fleet,
                device_ids,
                self.home / "devices" / fleet,
                broker_url=self.broker.url,
            )
            self.broker.reload()

    def device(self, fleet: str, device_id: str) -> BrokerAddress:
        if self.home is None:
            return self.broker.address
        return load_identity(self.home / "devices" / fleet / device_id).address()

    def service(self, name: str) -> BrokerAddress:
        if self.home is None:
            return self.broker.address
        return load_identity(self.home / "identities" / name).address()


def secured_net(work: Path) -> Net:
    home = work / "home"
    authority.init_ca(home)
    broker = MosquittoBroker(work / "broker", tls=authority.broker_tls(home))
    # Only for the identity folders: the agents below are given their trusted key directly.
    generate_keys(home / "keys")
    for role in ("publisher", "monitor"):
        authority.issue_service(home, role, [role], broker_url=broker.url)
    return Net("TLS+ACL", broker, home)


@dataclass(frozen=True)
class RolloutModels:
    key: Ed25519PrivateKey
    public: TrustedKey
    first: Path
    second: Path
    size: int


def wait_until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def rollout_models() -> RolloutModels:
    exported = train_and_export("rf", ("onnx",))
    key = load_private_key(exported.workdir / "keys" / "edgefleet.key")
    # The second version: same data, another seed, so a different ~2.6 MB model.
    registry = Registry(exported.workdir)
    data = generate(20000, seed=1)
    model = train(load_training_table(data.frame, "churn", schema=data.schema), "rf", seed=1)
    second = registry.register(model, data_sha256="1" * 64)
    bundle2 = export_bundle(second, ["onnx"], exported.workdir / "bundle2", key).bundle
    return RolloutModels(
        key,
        load_public_key(exported.public_key),
        exported.result.bundle,
        bundle2,
        (bundle2 / "model.onnx").stat().st_size,
    )


def bench_rollout(devices: int, net: Net, models: RolloutModels, work: Path) -> float:
    fleet = "bench"
    state_file = work / "rollout.json"
    ids = [f"dev-{i:04d}" for i in range(devices)]
    net.enroll(fleet, ids)
    publish(models.first, fleet, net.service("publisher"), models.key, state_file=state_file)
    agents = [
        Agent(
            AgentConfig(
                fleet=fleet,
                device_id=device_id,
                state_dir=work / device_id,
                trusted_keys=(models.public,),
                broker=net.device(fleet, device_id),
                report_seconds=3600.0,
                fetch_timeout=120.0,
            )
        )
        for device_id in ids
    ]
    for agent in agents:
        agent.start()
    print(f"(a) {net.name}: {devices} agents installing the first version ...", file=sys.stderr)
    if not wait_until(lambda: all(a.model is not None for a in agents), 300):
        raise SystemExit("the first version did not reach every agent in 300 s")
    print(f"(a) {net.name}: publishing version 2 ({models.size:,} bytes) ...", file=sys.stderr)
    started = time.monotonic()
    publish(models.second, fleet, net.service("publisher"), models.key, state_file=state_file)
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
    return elapsed


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
    net: Net,
    exported: Exported,
    work: Path,
    agents_n: int = 20,
    per_agent: int = 300,
    *,
    fleet: str = "reports",
) -> tuple[float, int]:
    key = load_private_key(exported.workdir / "keys" / "edgefleet.key")
    public = load_public_key(exported.public_key)
    ids = [f"rep-{i:03d}" for i in range(agents_n)]
    net.enroll(fleet, ids)
    publisher = net.service("publisher")
    publish(exported.result.bundle, fleet, publisher, key, state_file=work / "r.json")
    pool = make_pool("none", 5)

    def make_agents() -> list[Agent]:
        return [
            Agent(
                AgentConfig(
                    fleet=fleet,
                    device_id=device_id,
                    state_dir=work / device_id,
                    trusted_keys=(public,),
                    broker=net.device(fleet, device_id),
                    report_seconds=3600.0,
                )
            )
            for device_id in ids
        ]

    installing = make_agents()
    for agent in installing:
        agent.start()
    wait_until(lambda: all(a.model is not None for a in installing), 120)
    for agent in installing:
        agent.stop(flush_timeout=1.0)
    database = f"sqlite:///{work / 'monitor.db'}"
    MonitorStore(database).close()
    monitor = start_monitor(net, fleet, database, work / "monitor.log", exported.workdir)
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
    for agent in agents:
        agent.stop(flush_timeout=1.0)
    if not drained or stored != total:
        raise SystemExit(f"only {stored} of {total} reports stored and acknowledged in 300 s")
    return stored / elapsed, payload_size


def start_monitor(
    net: Net, fleet: str, database: str, log: Path, home: Path
) -> subprocess.Popen[bytes]:
    """``edgefleet monitor`` in its own process, as it is deployed, with the registry in
    ``home``: every report is checked against its version's profile before it is stored."""
    reach = (
        ["--broker", net.broker.url]
        if net.home is None
        else ["--identity", str(net.home / "identities" / "monitor")]
    )
    command = [sys.executable, "-m", "edgefleet.cli.main", "--home", str(home)]
    command += ["monitor", "--fleet", fleet, "--db", database, *reach]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    if not wait_until(lambda: b"storing" in log.read_bytes(), 120) or b"checked against" not in (
        log.read_bytes()
    ):
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
        models = rollout_models() if "a" not in skip else None
        reporter = train_and_export("dt", ("onnx",), rows=5000) if "b" not in skip else None
        plain = Net("plain", MosquittoBroker(work / "plain"))
        secured = secured_net(work / "secured")
        rollout: dict[str, float] = {}
        rates: dict[str, list[float]] = {}
        payload = 0
        raws: list[float] = []
        with plain.broker, secured.broker:
            # Alternated, the secured one first once: the order must not favour either (a
            # machine shared with other work drifts over minutes).
            for net in (secured, plain) if models is not None else ():
                gc.collect()
                assert models is not None
                rollout[net.name] = bench_rollout(args.devices, net, models, work / net.name / "a")
            for round_ in range(REPORT_ROUNDS if reporter is not None else 0):
                for net in (plain, secured) if round_ % 2 else (secured, plain):
                    gc.collect()
                    assert reporter is not None
                    rate, payload = bench_reports(
                        net, reporter, work / net.name / f"b{round_}", fleet=f"reports{round_}"
                    )
                    rates.setdefault(net.name, []).append(rate)
                    if net is plain:
                        raws.append(raw_paho_rate(plain.broker, b"x" * payload, 6000))
        if models is not None:
            cost = rollout["TLS+ACL"] / rollout["plain"] - 1
            print(
                f"(a) {args.devices} devices verified, self-tested and activated a new "
                f"{models.size / 1e6:.1f} MB model in {rollout['plain']:.1f} s plain, "
                f"{rollout['TLS+ACL']:.1f} s with TLS and access lists ({cost:+.0%}; "
                f"target < {TARGET_ROLLOUT_SECONDS:.0f} s, security < +{TARGET_TLS_COST:.0%})"
            )
            results.append(("a", rollout["TLS+ACL"] < TARGET_ROLLOUT_SECONDS))
            results.append(("a, TLS cost", cost < TARGET_TLS_COST))
        if reporter is not None:
            plain_rate = statistics.median(rates["plain"])
            tls_rate = statistics.median(rates["TLS+ACL"])
            change = tls_rate / plain_rate - 1
            ratio = statistics.median(p / r for p, r in zip(rates["plain"], raws, strict=True))
            print(
                f"(b) reports stored and acknowledged end to end (median of {REPORT_ROUNDS} "
                f"alternated rounds): {plain_rate:,.0f}/s plain, {tls_rate:,.0f}/s with TLS "
                f"and access lists ({change:+.0%}); raw paho QoS 1 publishes of the same "
                f"{payload:,} bytes (plain, after each plain round): "
                f"{statistics.median(raws):,.0f}/s; end to end / raw {ratio:.2f} "
                f"(goal >= {TARGET_REPORT_RATIO})\n"
                f"    rounds, plain: {', '.join(f'{r:,.0f}' for r in rates['plain'])}; "
                f"TLS+ACL: {', '.join(f'{r:,.0f}' for r in rates['TLS+ACL'])}; "
                f"raw: {', '.join(f'{r:,.0f}' for r in raws)}"
            )
            results.append(("b, TLS cost", change > -TARGET_TLS_COST))
            results.append(("b, end to end / raw", ratio >= TARGET_REPORT_RATIO))
        if "c" not in skip:
            with MosquittoBroker(work / "c-broker") as broker:
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

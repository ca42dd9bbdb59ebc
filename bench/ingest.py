"""Ingest throughput: reports per second stored (committed) by `edgefleet monitor`, against
raw Mosquitto throughput measured in the same run. Target: at least 5,000 reports/s with one
monitor.

Every consumer drains the same backlog: N valid reports (default 50,000, ~3.5 KB each, real
sketches of the 17-feature churn schema from a few hundred devices) published by a paho
publisher at QoS 1 into the persistent session of the consumer while it is away, then the
consumer is started and timed until the last one is in. A backlog, not a live stream, so
that on a 2-core machine the publisher does not take the CPU the consumer needs (in
production the devices publish from elsewhere); the publish rate is printed too.

(i)   raw: a paho MQTT 5 subscriber (QoS 1, the same shared subscription) that only counts;
(ii)  one `edgefleet monitor` process storing into a SQLite file (WAL, synchronous=NORMAL);
(iii) two `edgefleet monitor` processes of one group (the broker splits the backlog between
      their sessions), storing into the same SQLite file (or --db).

The monitors' home holds a registry with the model the reports claim (churn 1.0.0, trained
here), so every report is checked against that version's profile, as in production;
`--no-registry` measures without that check.

The monitors are the real command, as separate processes, with their defaults (on 2 cores
or more: one helper process validating reports while the monitor receives and stores;
`--monitor-workers 0` measures a single process); the rate counts rows committed to the
database (polled), from the first commit to the last. Why a helper: a 3.7 KB report costs
~50 us to parse (json), ~30 us to check, ~20 us to insert and ~70 us to receive through
paho, and one Python process runs one thread at a time.

With --postgres each measure gets a fresh database on a private PostgreSQL 15 server
(durable: fsync on), and --monitors 1,2,4 measures how the monitors scale out on it (each
monitor appends its own rollup rows: no hot row). --compare-rollups adds one monitor
storing without rollups, the cost of the rollups. --rounds K measures every case K times,
interleaved, and the ratios compare the medians (one run moves by 20% on a shared machine).

    .venv/bin/python -m bench.ingest [--reports 50000] [--devices 300] [--db URL] [--no-registry]
        [--monitors 1,2,4] [--postgres] [--compare-rollups] [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import encode_features, load_training_table
from edgefleet.central.monitor.ingest import share_filter
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.registry import Registry
from edgefleet.central.trainer import reference_profile, train
from edgefleet.edge.profile import ReferenceProfile
from edgefleet.edge.report import Report
from edgefleet.edge.schema import FeatureSchema
from edgefleet.edge.sketch_builder import SketchBuilder
from edgefleet.edge.topics import Topics

TARGET_REPORTS_PER_SECOND = 5000.0
ROLLUP_GOAL = 0.8
"""Ingest with rollups against ingest without (issue 11)."""
FLEET = "bench"
DISTINCT_BODIES = 200


def register_model(home: Path, seed: int = 0) -> tuple[FeatureSchema, ReferenceProfile]:
    """Train churn 1.0.0 (logistic regression, small) into a registry in ``home``, where
    the monitors find it: every report is then checked against its profile, as in
    production. The schema and reference profile the devices sketch with."""
    data = generate(4000, seed=seed)
    table = load_training_table(data.frame, "churn", schema=data.schema)
    version = Registry(home).register(train(table, "logreg", seed=seed), data_sha256="0" * 64)
    card = version.load_card()
    return card.schema, card.reference


def synthetic_profile(seed: int = 0) -> tuple[FeatureSchema, ReferenceProfile]:
    """A schema and reference profile without a model (the monitors accept any version)."""
    rng = np.random.default_rng(seed)
    data = generate(4000, seed=seed)
    table = load_training_table(data.frame, "churn", schema=data.schema)
    rows = encode_features(table.features, table.schema)
    reference = reference_profile(table.schema, rows, rng.random(len(rows)), table.labels)
    return table.schema, reference


def make_payloads(
    n: int,
    devices: int,
    profile: tuple[FeatureSchema, ReferenceProfile],
    seed: int = 0,
) -> list[tuple[str, bytes]]:
    """``n`` valid report messages of ``devices`` devices: real sketches (a SketchBuilder
    over generated churn rows) with distinct device ids and sequence numbers."""
    rng = np.random.default_rng(seed)
    schema, reference = profile
    data = generate(4000, seed=seed)
    table = load_training_table(data.frame, "churn", schema=data.schema)
    rows = encode_features(table.features, schema)
    bodies = []
    for i in range(DISTINCT_BODIES):
        builder = SketchBuilder(
            schema,
            reference,
            model_name="churn",
            model_version="1.0.0",
            clock=functools.partial(float, 1_750_000_000.0 + 60.0 * i),
        )
        size = int(rng.integers(100, 2000))
        builder.add(
            rows[rng.integers(0, len(rows), size)], rng.random(size), rng.random(size) / 100
        )
        labelled = int(rng.integers(0, 50))
        builder.add_outcomes(rng.random(labelled), rng.integers(0, 2, labelled))
        report = Report.from_body(
            builder.snapshot(),
            fleet=FLEET,
            device_id="dev-0000",
            sequence=0,
            cohort="stable",
            device_group="g0",
        )
        bodies.append(report.to_dict())
    topics = Topics(FLEET)
    payloads = []
    for k in range(n):
        body = dict(bodies[k % DISTINCT_BODIES])
        device = f"dev-{k % devices:04d}"
        # Each device reports once a minute, as a live fleet does (the rollups see the
        # minutes a monitor sees, not 200 at once).
        end = 1_750_000_000.0 + 60.0 * (k // devices)
        body.update(
            device_id=device,
            sequence=k // devices,
            device_group=f"g{k % devices % 5}",
            cohort="canary" if k % 10 == 0 else "stable",
            window_start=end - 60.0,
            window_end=end,
        )
        payload = json.dumps(body, separators=(",", ":")).encode()
        payloads.append((topics.report(device), payload))
    return payloads


def publish_all(broker: MosquittoBroker, payloads: list[tuple[str, bytes]]) -> float:
    """Publish at QoS 1 as fast as the broker acknowledges; reports/s."""
    done = threading.Event()
    acked = [0]

    def on_publish(*_: Any) -> None:
        acked[0] += 1
        if acked[0] == len(payloads):
            done.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=paho.MQTTv5
    )
    client.max_inflight_messages_set(100)  # the broker's Receive Maximum (MosquittoBroker)
    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    client.loop_start()
    started = time.perf_counter()
    for topic, payload in payloads:
        client.publish(topic, payload, qos=1)
    if not done.wait(600):
        raise RuntimeError(f"only {acked[0]} of {len(payloads)} publishes acknowledged")
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return len(payloads) / elapsed


# -- (i) the raw subscriber, run as its own process --------------------------------------------


def raw_subscriber(port: int, client_id: str, group: str, count: int) -> None:
    """Connect with a persistent session, print READY once subscribed; on the second run
    (the backlog waits) count ``count`` messages and print the times of the first and last."""
    first: list[float] = []
    received = [0]
    finished = threading.Event()

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if not first:
            first.append(time.time())
        received[0] += 1
        if received[0] >= count:
            finished.set()

    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=properties)
    client.subscribe((share_filter(group, FLEET), SubscribeOptions(qos=1)))
    client.loop_start()
    subscribed.wait(10)
    print("READY", flush=True)
    if count:
        finished.wait(600)
        print(f"RESULT {first[0]!r} {time.time()!r} {received[0]}", flush=True)
        # Done for good: the session must stop collecting the later phases' reports.
        client.unsubscribe(share_filter(group, FLEET))
        time.sleep(0.2)
    else:
        sys.stdin.readline()
    client.disconnect()
    client.loop_stop()


def spawn_raw(port: int, group: str, count: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.ingest", "--raw-subscriber", str(port), group, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "READY":
        raise RuntimeError(f"the raw subscriber did not start: {line!r}")
    return process


def bench_raw(broker: MosquittoBroker, payloads: list[tuple[str, bytes]]) -> tuple[float, float]:
    """(raw reports/s, publish reports/s)."""
    group = "raw"
    first = spawn_raw(broker.port, group, 0)
    assert first.stdin is not None
    first.stdin.write("\n")
    first.stdin.close()
    first.wait(30)
    publish_rate = publish_all(broker, payloads)
    second = spawn_raw(broker.port, group, len(payloads))
    assert second.stdout is not None
    result = second.stdout.readline().split()
    second.wait(30)
    if not result or result[0] != "RESULT":
        raise RuntimeError(f"the raw subscriber failed: {result!r}")
    start, end, received = float(result[1]), float(result[2]), int(result[3])
    return received / (end - start), publish_rate


# -- (ii), (iii) monitors ----------------------------------------------------------------------


def spawn_monitor(
    broker: MosquittoBroker,
    db: str,
    home: Path,
    group: str,
    client_id: str,
    log: Path,
    *,
    leave: bool = False,
    workers: int | None = None,
    rollups: bool = True,
) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "edgefleet.cli.main",
        "--home",
        str(home),
        "monitor",
        "--fleet",
        FLEET,
        "--db",
        db,
        "--group",
        group,
        "--client-id",
        client_id,
        "--broker",
        broker.url,
        "--every",
        "2",
        *(["--leave"] if leave else []),
        *([] if workers is None else ["--workers", str(workers)]),
        *([] if rollups else ["--no-rollups"]),
    ]
    with log.open("a") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, text=True, cwd=home
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "Ctrl-C stops it" in log.read_text():
            return process
        if process.poll() is not None:
            raise RuntimeError(f"the monitor exited:\n{log.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"the monitor did not subscribe within 60 s:\n{log.read_text()}")


def stop_monitor(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def bench_monitors(
    broker: MosquittoBroker,
    payloads: list[tuple[str, bytes]],
    db: str,
    work: Path,
    monitors: int,
    workers: int | None,
    rollups: bool = True,
) -> Measured:
    """Reports/s committed by ``monitors`` monitor processes draining the backlog, and
    what each report cost them and the database in CPU."""
    # A group and sessions of their own per measure: a repeated measure (--rounds) must not
    # resume the sessions, and the share of the backlog, of an earlier one.
    label = f"{monitors}{'' if rollups else '-raw'}-{uuid.uuid4().hex[:6]}"
    group = f"bench-{label}"
    ids = [f"bench-monitor-{label}-{i}" for i in range(monitors)]
    logs = [work / f"{client_id}.log" for client_id in ids]
    # First start: the sessions and their share of the subscription; then away.
    for process in [
        spawn_monitor(broker, db, work, group, c, lg, workers=workers, rollups=rollups)
        for c, lg in zip(ids, logs, strict=True)
    ]:
        stop_monitor(process)
    publish_all(broker, payloads)
    store = MonitorStore(db)
    before = store.report_count(FLEET)
    # Measured start; --leave: once stopped, the sessions stop collecting later phases' share.
    processes = [
        spawn_monitor(broker, db, work, group, c, lg, leave=True, workers=workers, rollups=rollups)
        for c, lg in zip(ids, logs, strict=True)
    ]
    want = before + len(payloads)
    poller = _backend_pid(store)
    first_time: float | None = None
    first_count = 0
    cpu_start = (0.0, 0.0, 0.0)
    machine_start = psutil.cpu_times()
    deadline = time.monotonic() + 900
    try:
        while True:
            count = store.report_count(FLEET)
            now = time.perf_counter()
            if first_time is None and count > before:
                first_time, first_count = now, count
                cpu_start = cpu_seconds(processes, db, poller, broker.pid)
                machine_start = psutil.cpu_times()
            if count >= want:
                cpu_end = cpu_seconds(processes, db, poller, broker.pid)
                machine_end = psutil.cpu_times()
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(
                    f"stored {count - before} of {len(payloads)}: "
                    + "; ".join(lg.read_text()[-500:] for lg in logs)
                )
            time.sleep(0.05)
    finally:
        for process in processes:
            stop_monitor(process)
    assert first_time is not None
    quarantined = store.quarantine_count(FLEET)
    final = store.report_count(FLEET)
    store.close()
    if final != want or quarantined:
        raise RuntimeError(f"expected {want} reports and no quarantine; {final}, {quarantined}")
    stored = want - first_count
    return Measured(
        stored / (now - first_time),
        (cpu_end[0] - cpu_start[0]) / stored,
        (cpu_end[1] - cpu_start[1]) / stored,
        (cpu_end[2] - cpu_start[2]) / stored,
        _idle_share(machine_start, machine_end),
    )


def _idle_share(start: Any, end: Any) -> float:
    """The share of the machine's CPU time that was idle between two ``cpu_times()``: near
    0, every process (the bench's and everyone else's) was waiting for a core."""
    total = sum(end) - sum(start)
    idle = (end.idle + getattr(end, "iowait", 0.0)) - (start.idle + getattr(start, "iowait", 0.0))
    return idle / total if total > 0 else 0.0


@dataclass(frozen=True)
class Measured:
    """Reports/s committed, and CPU seconds per report of the monitor processes (their
    validating workers included) and of the PostgreSQL backends serving them (0 on
    SQLite): per-report costs that do not depend on what else loads the machine."""

    rate: float
    monitor_cpu: float
    database_cpu: float
    broker_cpu: float
    idle: float
    """The share of the machine's CPU that was idle meanwhile (all processes')."""

    @property
    def cores(self) -> float:
        """Cores the monitors, their database backends and the broker kept busy: their CPU
        per report times the reports per second. Flat across 1, 2, 4 monitors with the
        machine not idle: the rate is bounded by the cores they got, not by waiting."""
        return self.rate * (self.monitor_cpu + self.database_cpu + self.broker_cpu)


def _backend_pid(store: MonitorStore) -> int | None:
    """The PostgreSQL backend of the bench's own polling (not the monitors' cost)."""
    if store.dialect != "postgresql":
        return None
    with store.engine.connect() as connection:
        return int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def cpu_seconds(
    processes: list[subprocess.Popen[str]], db: str, poller: int | None, broker: int | None
) -> tuple[float, float, float]:
    """CPU seconds so far of the monitors (with their children), of the PostgreSQL
    backends of database ``db`` (found by the database name in their command line), but
    the bench's own ``poller``, and of the broker process."""

    def used(process: psutil.Process) -> float:
        try:
            times = process.cpu_times()
            return float(times.user + times.system)
        except psutil.Error:
            return 0.0

    monitors = 0.0
    for popen in processes:
        try:
            parent = psutil.Process(popen.pid)
            monitors += used(parent) + sum(used(c) for c in parent.children(recursive=True))
        except psutil.Error:
            continue
    database = 0.0
    if db.startswith("postgresql"):
        name = db.rsplit("/", 1)[-1]
        for process in psutil.process_iter(["cmdline"]):
            mine = any(name in part for part in process.info["cmdline"] or ())
            if mine and process.pid != poller:
                database += used(process)
    try:
        broker_seconds = 0.0 if broker is None else used(psutil.Process(broker))
    except psutil.Error:
        broker_seconds = 0.0
    return monitors, database, broker_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=50_000)
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--db", help="database URL for the monitors (default: a SQLite file)")
    parser.add_argument(
        "--monitor-workers",
        type=int,
        help="--workers of each monitor (default: the command's own default)",
    )
    parser.add_argument(
        "--no-registry",
        action="store_true",
        help="no registry in the monitors' home: reports are not checked against their "
        "version's profile (how this bench ran before that check)",
    )
    parser.add_argument(
        "--monitors",
        default="1,2",
        help="how many monitor processes to measure, comma-separated (default: 1,2)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="a private PostgreSQL 15 server (a fresh database per measure), not SQLite",
    )
    parser.add_argument(
        "--compare-rollups",
        action="store_true",
        help="also one monitor without rollups (what they cost; goal: with >= 0.8x without)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every case this many times, interleaved (with, without rollups, ...), "
        "and compare the medians: a shared machine's noise moves one run by 20%% (default: 1)",
    )
    parser.add_argument("--raw-subscriber", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_subscriber:
        port, group, count = args.raw_subscriber
        raw_subscriber(int(port), f"bench-raw-{group}", group, int(count))
        return 0

    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-ingest-"))
    started = time.perf_counter()
    profile = synthetic_profile() if args.no_registry else register_model(work)
    payloads = make_payloads(args.reports, args.devices, profile)
    size = sum(len(p) for _, p in payloads) / len(payloads)
    checked = "not checked" if args.no_registry else "checked against churn 1.0.0's profile"
    print(
        f"{len(payloads):,} reports of {args.devices} devices, {size:,.0f} bytes on average "
        f"(made in {time.perf_counter() - started:.1f} s); {os.cpu_count()} cores; "
        f"reports {checked}"
    )
    counts = sorted({int(n) for n in args.monitors.split(",")})
    # Hundreds of MB of databases and broker state: not left behind.
    try:
        with _database_server(args.postgres) as server, MosquittoBroker(work / "broker") as broker:
            raw, publish_rate = bench_raw(broker, payloads)
            print(f"publish (paho, QoS 1):           {publish_rate:9,.0f} reports/s")
            print(f"(i)   raw subscriber (paho):     {raw:9,.0f} reports/s")
            results: dict[str, list[float]] = {}
            runs = [(n, True) for n in counts]
            if args.compare_rollups:
                runs.insert(1, (1, False))
            for monitors, rollups in runs * max(1, args.rounds):
                db = _database(args.db, server, work, monitors, rollups)
                measured = bench_monitors(
                    broker, payloads, db, work, monitors, args.monitor_workers, rollups
                )
                rate = measured.rate
                key = f"{monitors}" if rollups else "1-raw"
                results.setdefault(key, []).append(rate)
                what = f"{monitors} monitor(s)" + ("" if rollups else ", no rollups")
                kind = "PostgreSQL" if server else ("--db" if args.db else "SQLite")
                print(
                    f"{what + f' ({kind}):':32} {rate:9,.0f} reports/s   {rate / raw:5.2f} x raw"
                    f"   CPU per report: monitors {measured.monitor_cpu * 1e6:,.0f} us, "
                    f"database {measured.database_cpu * 1e6:,.0f} us, "
                    f"broker {measured.broker_cpu * 1e6:,.0f} us; "
                    f"{measured.cores:.2f} cores busy, machine {measured.idle:.0%} idle"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _summary(
        {key: statistics.median(rates) for key, rates in results.items()},
        counts,
        args.rounds,
        postgres=args.postgres,
        compare_rollups=args.compare_rollups,
    )


def _summary(
    rates: dict[str, float],
    counts: list[int],
    rounds: int,
    *,
    postgres: bool,
    compare_rollups: bool,
) -> int:
    """The ratios the goals name, of the median rates; the exit status."""
    of = f" (medians of {rounds} runs)" if rounds > 1 else ""
    for n in counts[1:]:
        print(f"{n} monitors / one monitor: {rates[str(n)] / rates['1']:.2f}{of}")
    ok = True
    if compare_rollups:
        ratio = rates["1"] / rates["1-raw"]
        ok = ratio >= ROLLUP_GOAL
        print(f"one monitor with rollups / without: {ratio:.2f}{of} (goal >= {ROLLUP_GOAL})")
    if not postgres:  # 5,000/s is the SQLite target; on PostgreSQL the goals are ratios
        ok = ok and rates["1"] >= TARGET_REPORTS_PER_SECOND
        print(
            f"one monitor stores {rates['1']:,.0f} reports/s{of} "
            f"(target {TARGET_REPORTS_PER_SECOND:,.0f})"
        )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def _database_server(postgres: bool) -> Any:
    from contextlib import nullcontext

    from bench.postgres import private_postgres

    return private_postgres() if postgres else nullcontext(None)


def _database(given: str | None, server: str | None, work: Path, n: int, rollups: bool) -> str:
    """A fresh database for one measure: on the private PostgreSQL server, else a SQLite
    file (or --db, shared by every measure)."""
    if server is not None:
        from bench.postgres import new_database

        return new_database(server, f"ingest{n}")
    return given or f"sqlite:///{work / f'monitor-{n}-{rollups}.db'}"


if __name__ == "__main__":
    sys.exit(main())

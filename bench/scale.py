"""The central side at fleet scale (docs/architecture.md §7b): what it costs to answer with
10k, 100k and 1M reports stored.

For each size, a fresh database gets that many real reports (sketches of the 17-feature
churn schema, as devices make them; 300 to 10,000 devices; windows spread evenly over
--days days ending at a whole minute), stored through the store's own ingest path, in
process (not through MQTT: bench/ingest.py measures that path), as `edgefleet monitor`
does it: validation and the batch's rollups (``prepare``) in --workers decode processes,
the check against the version's profile, the insert and the rollups in one transaction
per batch of --batch. Then it times, median of --repeat:

- the fleet measures of the last window (--window whole minutes, as `edgefleet watch`
  checks it: 10 minutes, so that even the smallest size has reports of every scope in it)
  and of the last 24 whole hours (as the drift page's "last day"): every fleet, cohort and
  group scope merged and measured against the version's manifest;
- the dashboard's overview and drift pages, over HTTP from the Flask app served by waitress
  (a fresh app per request: no cache helps);

and prints the database bytes per report. Goals: every time at the largest size within 2x
of the smallest (flat: the cost depends on the buckets asked for, not on the reports), and
ingest with rollups at least 0.8x ingest without (measured first, on --sample reports into
fresh databases, alternating, median rates).

    .venv/bin/python -m bench.scale [--sizes 10000,100000,1000000] [--postgres] [--days 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import median_seconds
from bench.ingest import FLEET, make_payloads, register_model
from bench.postgres import database_bytes, new_database, private_postgres
from edgefleet.central.monitor.measures import measure, scopes
from edgefleet.central.monitor.store import MonitorStore, PreparedBatch, prepare
from edgefleet.central.monitor.validation import VersionProfile
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.topics import Topics
from edgefleet.web.app import create_app
from edgefleet.web.config import WebConfig
from edgefleet.web.dashboard import Dashboard
from edgefleet.web.server import dashboard_server

VERSION = "1.0.0"
FLAT = 2.0
"""The largest size's times may be at most this many times the smallest's."""
INGEST_RATIO = 0.8
"""Ingest with rollups at least this fraction of ingest without."""


def devices_for(size: int) -> int:
    """300 devices for 10k reports, 1,000 for 100k, 10,000 for 1M."""
    return max(300, min(10_000, size // 100))


_VARIED = ("device_id", "sequence", "device_group", "cohort", "window_start", "window_end")
"""The fields of a report the bench sets; the rest comes from a template."""


def reports(
    size: int, devices: int, end: float, days: float, template: list[dict[str, Any]]
) -> Iterator[tuple[str, bytes]]:
    """``size`` report messages, windows ending evenly over ``days`` days up to ``end``:
    device ``k % devices`` sends its ``k // devices``-th, in time order. Each is a template's
    JSON with the varied fields written in front (a million ``json.dumps`` would cost the
    bench minutes the store is not measured on)."""
    topics = Topics(FLEET)
    step = days * 86_400.0 / size
    start = end - days * 86_400.0
    tails = [_tail(body) for body in template]
    for k in range(size):
        device = f"dev-{k % devices:05d}"
        window_end = start + (k + 1) * step - 0.5
        head = (
            f'{{"device_id":"{device}","sequence":{k // devices},'
            f'"device_group":"g{k % devices % 5}",'
            f'"cohort":"{"canary" if k % 10 == 0 else "stable"}",'
            f'"window_start":{window_end - 60.0!r},"window_end":{window_end!r},'
        )
        yield topics.report(device), head.encode() + tails[k % len(tails)]


def _tail(body: dict[str, Any]) -> bytes:
    """A template's JSON without the varied fields, less its opening brace."""
    rest = {key: value for key, value in body.items() if key not in _VARIED}
    return json.dumps(rest, separators=(",", ":")).encode()[1:]


def templates(profile: Any) -> list[dict[str, Any]]:
    """Real report bodies to vary (a few hundred distinct sketches)."""
    return [json.loads(p) for _, p in make_payloads(200, 200, profile)]


def ingest(
    store: MonitorStore,
    messages: Iterator[tuple[str, bytes]],
    known: Callable[[str, str], Any],
    batch: int,
    total: int,
    say: Callable[[str], None],
    workers: int = 1,
) -> float:
    """Store every message through the store's ingest path, as ``edgefleet monitor`` does
    with its decode workers: :func:`prepare` (validation and the batch's rollups) of batch
    k+1 in a worker process while batch k is checked against its version and committed
    here (``store_prepared``), one transaction per batch; reports per second."""
    started = time.perf_counter()
    done = 0
    next_note = total // 10
    with _preparer(workers) as pool:
        pending: deque[Future[PreparedBatch]] = deque()
        for chunk in _chunks(messages, batch):
            pending.append(pool.submit(prepare, chunk, fleet=FLEET, rollups=store.rollups))
            if len(pending) > workers:
                done += _store(store, pending.popleft().result(), known)
            if done >= next_note:
                rate = done / (time.perf_counter() - started)
                say(f"  {done:>9,} of {total:,} stored ({rate:,.0f}/s)")
                next_note += total // 10
        while pending:
            done += _store(store, pending.popleft().result(), known)
    seconds = time.perf_counter() - started
    store.fold_rollups(force=True)
    return done / seconds


def _chunks(messages: Iterator[tuple[str, bytes]], size: int) -> Iterator[list[tuple[str, bytes]]]:
    while chunk := list(itertools.islice(messages, size)):
        yield chunk


def _preparer(workers: int) -> Any:
    """A pool of ``workers`` spawned processes, or (0) one that runs in this process."""
    if workers == 0:
        return _InProcess()
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


class _InProcess:
    """The pool interface, without a pool: ``submit`` runs the call at once."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def submit(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(function(*args, **kwargs))
        return future


def _store(store: MonitorStore, batch: PreparedBatch, known: Any) -> int:
    counts = store.store_prepared(batch, known_version=known)
    sent = len(batch.valid) + len(batch.refused)
    if counts.stored != sent:
        raise RuntimeError(f"stored {counts.stored} of {sent} ({counts})")
    return counts.stored


def median_time(function: Callable[[], Any], repeat: int) -> float:
    return median_seconds(function, repeat=repeat, warmup=0)


def fleet_measures(store: MonitorStore, manifest: Manifest, since: float, until: float) -> int:
    """Every fleet, cohort and group scope of the window, merged and measured."""
    count = 0
    levels = ("fleet", "cohort", "group")
    for _, aggregate in scopes(store, FLEET, VERSION, since, until, levels=levels):
        measure(aggregate, manifest)
        count += 1
    return count


def page_time(home: Path, db: str, path: str) -> float:
    """Seconds to GET ``path`` from a fresh app served by waitress (no cache warm)."""
    app = create_app(WebConfig(home=home, db=db, fleets=(FLEET,)))
    server = dashboard_server(app, "127.0.0.1", 0).start()
    try:
        started = time.perf_counter()
        with urllib.request.urlopen(server.url + path, timeout=600) as response:
            body = response.read()
            status = response.status
        seconds = time.perf_counter() - started
    finally:
        server.stop()
    if status != 200 or not body:
        raise RuntimeError(f"GET {path}: {status}")
    return seconds


def db_bytes(url: str) -> int:
    if url.startswith("sqlite:///"):
        store = MonitorStore(url)
        with store.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        store.close()
        return Path(url.removeprefix("sqlite:///")).stat().st_size
    return database_bytes(url)


class Databases:
    """Fresh databases of one kind: SQLite files in ``work`` or PostgreSQL databases."""

    def __init__(self, work: Path, server: str | None) -> None:
        self.work, self.server, self.made = work, server, 0

    def new(self) -> str:
        self.made += 1
        if self.server is None:
            return f"sqlite:///{self.work / f'scale-{self.made}.db'}"
        return new_database(self.server, "scale")


def ingest_ratio(
    dbs: Databases, profile: Any, known: Any, sample: int, batch: int, workers: int
) -> tuple[float, float]:
    """Median reports/s of ``sample`` reports stored with and without rollups, alternating
    over fresh databases: 300 devices reporting once a minute, as a live fleet reaches a
    monitor (the rollups of a batch then sum many reports each)."""
    template = templates(profile)
    end = math.floor(time.time() / 60) * 60
    devices = 300
    days = sample / devices / 1440
    messages = list(reports(sample, devices, end, days, template))
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(3):
        for rollups in (False, True):
            store = MonitorStore(dbs.new(), rollups=rollups)
            rate = ingest(store, iter(messages), known, batch, sample, _quiet, workers)
            rates[rollups].append(rate)
            store.close()
    return statistics.median(rates[False]), statistics.median(rates[True])


def _quiet(_: str) -> None:
    return None


def run_size(
    size: int, args: argparse.Namespace, dbs: Databases, home: Path, setup: Any
) -> dict[str, float]:
    _, known, manifest, template = setup
    devices = devices_for(size)
    end = math.floor(time.time() / 60) * 60 - 60
    db = dbs.new()
    store = MonitorStore(db)
    print(f"{size:,} reports of {devices:,} devices over {args.days:g} days into {store.display}")
    messages = reports(size, devices, end, args.days, template)
    rate = ingest(store, messages, known, args.batch, size, print, args.workers)
    row = {"size": size, "devices": devices, "ingest": rate}
    window = args.window * 60
    row["window"] = median_time(
        lambda: fleet_measures(store, manifest, end - window, end), args.repeat
    )
    hour = end // 3600 * 3600
    row["day"] = median_time(
        lambda: fleet_measures(store, manifest, hour - 86_400, hour), args.repeat
    )
    store.close()
    row["overview"] = statistics.median(
        page_time(home, db, f"/fleets/{FLEET}/") for _ in range(args.repeat)
    )
    row["drift"] = statistics.median(
        page_time(home, db, f"/fleets/{FLEET}/drift") for _ in range(args.repeat)
    )
    row["bytes"] = db_bytes(db) / size
    row["load"] = os.getloadavg()[0]
    if db.startswith("sqlite:///"):
        for suffix in ("", "-wal", "-shm"):
            Path(db.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
    return row


COLUMNS = (
    ("reports", "size", "{:>10,.0f}"),
    ("devices", "devices", "{:>8,.0f}"),
    ("ingest/s", "ingest", "{:>9,.0f}"),
    ("last window", "window", "{:>9.1f} ms"),
    ("last 24 h", "day", "{:>9.1f} ms"),
    ("overview", "overview", "{:>9.1f} ms"),
    ("drift", "drift", "{:>9.1f} ms"),
    ("bytes/report", "bytes", "{:>12,.0f}"),
    ("load (1 min)", "load", "{:>12.1f}"),
)
TIMED = ("window", "day", "overview", "drift")


def print_table(rows: list[dict[str, float]]) -> None:
    print(" | ".join(f"{title:>12}" for title, _, _ in COLUMNS))
    for row in rows:
        cells = []
        for _, key, form in COLUMNS:
            value = row[key] * 1000 if key in TIMED else row[key]
            cells.append(f"{form.format(value):>12}")
        print(" | ".join(cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="10000,100000,1000000",
        help="report counts, comma-separated (default: 10000,100000,1000000)",
    )
    parser.add_argument("--days", type=float, default=3.0, help="span of the windows (3)")
    parser.add_argument(
        "--window",
        type=int,
        default=10,
        help="minutes of the last window, as `edgefleet watch --window` checks it (10)",
    )
    parser.add_argument("--batch", type=int, default=5000, help="reports per ingest (5000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="decode worker processes, as `edgefleet monitor --workers` (1; 0: none)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="samples per time (3)")
    parser.add_argument(
        "--sample", type=int, default=20_000, help="reports of the ingest comparison (20000)"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="a private PostgreSQL 15 server, not SQLite"
    )
    args = parser.parse_args()
    try:
        sizes = sorted(int(s) for s in args.sizes.split(","))
    except ValueError:
        parser.error(f"--sizes takes whole numbers separated by commas, not {args.sizes!r}")
    if sizes[0] < 1000 or args.days <= 1.0:
        parser.error("sizes of at least 1000 reports and more than one day, please")
    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-scale-"))
    try:  # gigabytes of databases: not left behind
        return _run(args, sizes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, sizes: list[int], work: Path) -> int:
    home = work / "home"
    home.mkdir()
    profile = register_model(home)
    broker = WebConfig(home=home).broker_address()
    store = MonitorStore(f"sqlite:///{work / 'manifest.db'}")
    manifest = Dashboard(home, store, broker=broker).manifest("churn", VERSION)
    store.close()
    assert manifest is not None
    version_profile = VersionProfile.from_manifest(manifest)

    def known(name: str, version: str) -> VersionProfile | bool:
        return version_profile if (name, version) == ("churn", VERSION) else False

    setup = (profile, known, manifest, templates(profile))
    with _server(args.postgres) as server:
        dbs = Databases(work, server)
        kind = "PostgreSQL 15" if server else "SQLite (WAL)"
        plain, rolled = ingest_ratio(dbs, profile, known, args.sample, args.batch, args.workers)
        print(
            f"{kind}: ingest of {args.sample:,} reports: {plain:,.0f}/s without rollups, "
            f"{rolled:,.0f}/s with: {rolled / plain:.2f}x (goal >= {INGEST_RATIO}); "
            f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
        rows = []
        for size in sizes:
            rows.append(run_size(size, args, dbs, home, setup))
            print_table(rows[-1:])  # as it comes: a long run keeps what it measured
    print()
    print(f"bench.scale on {kind}, {args.days:g} days of windows, medians of {args.repeat}:")
    print_table(rows)
    ok = rolled / plain >= INGEST_RATIO
    first, last = rows[0], rows[-1]
    ratios = {key: last[key] / first[key] for key in TIMED}
    print(
        f"{last['size']:,.0f} / {first['size']:,.0f} reports: "
        + ", ".join(f"{key} {ratio:.2f}x" for key, ratio in ratios.items())
        + f" (goal <= {FLAT:g}x)"
    )
    ok = ok and all(ratio <= FLAT for ratio in ratios.values())
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def _server(postgres: bool) -> Any:
    from contextlib import nullcontext

    return private_postgres() if postgres else nullcontext(None)


if __name__ == "__main__":
    sys.exit(main())

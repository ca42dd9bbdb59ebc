"""Shared helpers for the fleet tests: exported bundles, agents, and report collectors."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.export import export_bundle
from edgefleet.central.monitor.ingest import Monitor
from edgefleet.central.monitor.store import MonitorStore, reports
from edgefleet.central.registry import Registry
from edgefleet.central.trainer import TrainedModel
from edgefleet.edge.agent.agent import Agent, AgentConfig
from edgefleet.edge.mqtt import MqttClient
from edgefleet.edge.report import Report
from edgefleet.edge.signing import load_private_key, load_public_key
from edgefleet.edge.topics import Topics

Record = Callable[..., None]
"""``record_counts(scenario, **counts)`` (the fixture in tests/fleet/conftest.py)."""


def export_versions(
    trained: Callable[[str], TrainedModel],
    keypair: tuple[Path, Path],
    home: Path,
    families: tuple[str, ...] = ("dt", "logreg"),
) -> list[Path]:
    """One bundle per family, registered as versions 1.0.0, 1.1.0, ... of 'churn'."""
    registry = Registry(home)
    bundles = []
    for family in families:
        version = registry.register(trained(family), data_sha256="0" * 64)
        result = export_bundle(
            version,
            ["onnx", "tflite"],
            home / f"bundle-{version.version}",
            load_private_key(keypair[0]),
        )
        bundles.append(result.bundle)
    return bundles


def agent_config(
    broker: MosquittoBroker,
    keypair: tuple[Path, Path],
    fleet: str,
    device_id: str,
    state_dir: Path,
    **overrides: object,
) -> AgentConfig:
    settings: dict[str, object] = {
        "fleet": fleet,
        "device_id": device_id,
        "state_dir": state_dir,
        "trusted_keys": (load_public_key(keypair[1]),),
        "broker": broker.address,
        "report_seconds": 3600.0,
        "fetch_timeout": 10.0,
        **overrides,
    }
    return AgentConfig(**settings)  # type: ignore[arg-type]


def wait_for(condition: Callable[[], object], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")


@contextmanager
def running(config: AgentConfig) -> Iterator[Agent]:
    agent = Agent(config)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop(flush_timeout=2.0)


@dataclass
class ReportCollector:
    """Counts every report of a fleet by (device, sequence), through a persistent session
    so that nothing published while the collector's connection is down is missed."""

    reports: list[Report] = field(default_factory=list)
    seen: dict[tuple[str, int], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        report = Report.decode(payload)
        with self.lock:
            self.reports.append(report)
            key = (report.device_id, report.sequence)
            self.seen[key] = self.seen.get(key, 0) + 1

    @property
    def unique(self) -> int:
        with self.lock:
            return len(self.seen)

    def scored_and_labelled(self) -> tuple[int, int]:
        """Records scored and outcomes labelled over the distinct reports (a re-sent report
        counted once)."""
        with self.lock:
            unique = {(r.device_id, r.sequence): r for r in self.reports}
        return (
            sum(r.scored for r in unique.values()),
            sum(r.outcomes.labelled for r in unique.values()),
        )


@contextmanager
def collecting(broker: MosquittoBroker, fleet: str, client_id: str) -> Iterator[ReportCollector]:
    collector = ReportCollector()
    client = MqttClient(broker.address, client_id)
    client.connect()
    client.subscribe(Topics(fleet).all_reports, collector.on_message)
    try:
        yield collector
    finally:
        client.disconnect()


def stored_keys(store: MonitorStore, fleet: str) -> set[tuple[str, int]]:
    """``(device_id, sequence)`` of every report of ``fleet`` in the store."""
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(reports.c.device_id, reports.c.sequence).where(reports.c.fleet == fleet)
        ).all()
    return {(device, sequence) for device, sequence in rows}


@dataclass
class Stored:
    """A real monitor (ingest + store) of a fleet, as the fault tests count with it."""

    monitor: Monitor
    store: MonitorStore
    fleet: str

    def key_set(self) -> set[tuple[str, int]]:
        return stored_keys(self.store, self.fleet)

    def rows(self) -> int:
        return self.store.report_count(self.fleet)

    def dropped(self) -> int:
        with self.store.engine.connect() as connection:
            total = connection.execute(
                select(func.sum(reports.c.dropped_reports)).where(reports.c.fleet == self.fleet)
            ).scalar_one()
        return int(total or 0)


@contextmanager
def monitoring(broker: MosquittoBroker, fleet: str, database: Path) -> Iterator[Stored]:
    """A monitor with a persistent session storing ``fleet``'s reports in a SQLite file,
    acknowledging them to the devices after each commit."""
    store = MonitorStore(f"sqlite:///{database}")
    monitor = Monitor(
        fleet, broker.address, store, client_id=f"monitor-{fleet}", flush_seconds=0.05
    )
    monitor.start()
    try:
        yield Stored(monitor, store, fleet)
    finally:
        monitor.stop()
        store.close()

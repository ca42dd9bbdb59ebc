"""A simulated fleet: N real agents in one process, each with its own MQTT client, state
folder and outbox, fed with generated customers; a share of them switches to a drift
scenario at a given time. Outcomes (did the customer churn?) come back for a share of the
predictions, as labels do in the real world.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.central.data.generator import SCENARIOS, TARGET, generate
from edgefleet.edge.agent.agent import Agent, AgentConfig, NoModelError
from edgefleet.edge.identity import load_identity
from edgefleet.edge.mqtt import BrokerAddress
from edgefleet.edge.signing import TrustedKey
from edgefleet.errors import InputError

POOL_ROWS = 4000
"""Distinct customers per scenario; devices draw from the pool at random offsets."""


@dataclass(frozen=True)
class SimulationConfig:
    fleet: str
    devices: int
    broker: BrokerAddress
    trusted_keys: tuple[TrustedKey, ...]
    state_root: Path
    scenario: str = "none"
    drift_share: float = 0.0
    drift_at: float = 0.0
    records_per_second: float = 20.0
    label_share: float = 0.5
    report_seconds: float = 5.0
    groups: int = 5
    seed: int = 0
    identity_root: Path | None = None
    """Folders ``identity_root/{device_id}`` from ``edgefleet devices enroll``: each agent
    connects with its own certificate (to ``broker``'s host and port). None: every agent
    uses ``broker`` as it is (an insecure development broker)."""

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= 2000:
            raise InputError(f"--devices must be 1..2000, not {self.devices}")
        if self.scenario not in SCENARIOS:
            raise InputError(
                f"unknown scenario {self.scenario!r}; choose one of: {', '.join(SCENARIOS)}"
            )
        if not 0.0 <= self.drift_share <= 1.0:
            raise InputError("--drift-share must be between 0 and 1")
        if self.records_per_second <= 0 or not 0.0 <= self.label_share <= 1.0:
            raise InputError("--rate must be positive and the label share within 0..1")


def device_ids(fleet: str, count: int) -> list[str]:
    """The ids of a simulated fleet's devices: FLEET-0000, FLEET-0001, ..."""
    return [f"{fleet}-{index:04d}" for index in range(count)]


@dataclass(frozen=True)
class Pool:
    records: list[dict[str, Any]]
    labels: list[str]


def make_pool(scenario: str, seed: int) -> Pool:
    frame = generate(POOL_ROWS, seed=seed, scenario=scenario).frame
    labels = [str(v) for v in frame[TARGET]]
    records = [
        {str(k): (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in frame.drop(columns=[TARGET]).to_dict("records")
    ]
    return Pool(records, labels)


@dataclass
class SimulationStats:
    scored: int = 0
    failed: int = 0
    outcomes: int = 0
    elapsed: float = 0.0


class Simulation:
    """Start with :meth:`start`, feed with :meth:`run_for`, end with :meth:`stop`."""

    def __init__(self, config: SimulationConfig):
        self.config = config
        self.stats = SimulationStats()
        self._random = random.Random(config.seed)
        self._pools = {"none": make_pool("none", config.seed + 101)}
        if config.scenario != "none":
            self._pools[config.scenario] = make_pool(config.scenario, config.seed + 202)
        drifted = round(config.devices * config.drift_share)
        self.agents = [
            Agent(
                AgentConfig(
                    fleet=config.fleet,
                    device_id=self.device_id(i),
                    state_dir=config.state_root / self.device_id(i),
                    trusted_keys=config.trusted_keys,
                    broker=self._broker_of(self.device_id(i)),
                    # Contiguous blocks: the drifting devices (the first ones) share groups, as
                    # a price increase or an outage hits whole regions, not every n-th device.
                    device_group=f"group-{i * config.groups // config.devices}",
                    report_seconds=config.report_seconds,
                )
            )
            for i in range(config.devices)
        ]
        self.drifted = {self.device_id(i) for i in range(drifted)}
        self._started = 0.0
        self._offsets = [self._random.randrange(POOL_ROWS) for _ in self.agents]

    def device_id(self, index: int) -> str:
        return f"{self.config.fleet}-{index:04d}"

    def _broker_of(self, device_id: str) -> BrokerAddress:
        if self.config.identity_root is None:
            return self.config.broker
        identity = load_identity(self.config.identity_root / device_id)
        identity.check(fleet=self.config.fleet, device_id=device_id)
        return identity.address(self.config.broker.url, insecure=self.config.broker.insecure)

    def start(self) -> None:
        for agent in self.agents:
            agent.start()
        self._started = time.monotonic()

    def stop(self) -> None:
        threads = [threading.Thread(target=a.stop, daemon=True) for a in self.agents]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    def __enter__(self) -> Simulation:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def scenario_of(self, agent: Agent) -> str:
        drifting = self.elapsed >= self.config.drift_at
        return (
            self.config.scenario if drifting and agent.config.device_id in self.drifted else "none"
        )

    def models(self) -> dict[str | None, int]:
        """How many devices run which model version (None: no model yet)."""
        counts: dict[str | None, int] = {}
        for agent in self.agents:
            model = agent.model
            version = model.scorer.manifest.version if model else None
            counts[version] = counts.get(version, 0) + 1
        return counts

    def tick(self, seconds: float) -> None:
        """Score ``seconds`` worth of records on every device and send back labels."""
        per_device = max(1, round(self.config.records_per_second * seconds))
        for index, agent in enumerate(self.agents):
            pool = self._pools[self.scenario_of(agent)]
            start = self._offsets[index]
            rows = [(start + k) % POOL_ROWS for k in range(per_device)]
            self._offsets[index] = (start + per_device) % POOL_ROWS
            try:
                predictions = agent.score([pool.records[r] for r in rows])
            except NoModelError:
                continue
            self.stats.scored += len(predictions)
            for prediction, row in zip(predictions, rows, strict=True):
                if self._random.random() < self.config.label_share:
                    agent.outcome(prediction.id, pool.labels[row])
                    self.stats.outcomes += 1

    def run_for(
        self,
        duration: float,
        *,
        step: float = 1.0,
        progress: Callable[[str], None] | None = None,
        until: Callable[[], bool] | None = None,
    ) -> None:
        """Feed the fleet in real time for ``duration`` seconds (or until ``until()``)."""
        deadline = time.monotonic() + duration
        next_line = time.monotonic()
        while time.monotonic() < deadline:
            began = time.monotonic()
            self.tick(step)
            if progress is not None and time.monotonic() >= next_line:
                progress(self.describe())
                next_line = time.monotonic() + 5.0
            if until is not None and until():
                return
            time.sleep(max(0.0, step - (time.monotonic() - began)))

    def describe(self) -> str:
        online = sum(1 for a in self.agents if a.client.is_connected)
        models = ", ".join(
            f"{v or 'none'}: {n}"
            for v, n in sorted(self.models().items(), key=lambda item: str(item[0]))
        )
        drifting = sum(1 for a in self.agents if self.scenario_of(a) != "none")
        return (
            f"t={self.elapsed:5.1f}s online {online}/{len(self.agents)}, models "
            f"[{models}], scored {self.stats.scored:,}, labels {self.stats.outcomes:,}, "
            f"drifting {drifting}"
        )

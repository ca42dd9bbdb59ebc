"""The service as a fleet member, against a real Mosquitto: it installs what the rollout
names, swaps a promoted model in under load with zero failed requests, reports every
record it scored, and counts a label posted back by prediction id once."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.publish import promote, publish
from edgefleet.central.serving.member import FleetMember
from edgefleet.central.serving.service import ScoringService
from edgefleet.edge.agent.agent import Agent
from edgefleet.edge.signing import load_private_key
from tests.fleet.kit import agent_config, collecting, wait_for
from tests.serving.conftest import golden_records, make_spec
from tests.serving.test_service import call


class Load:
    """Clients posting predictions in a loop until stopped; every answer is kept."""

    def __init__(self, url: str, body: dict[str, Any], clients: int) -> None:
        self.url, self.body = url, body
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self.scored = 0
        self.ids: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            status, answer, _ = call(self.url, self.body)
            with self._lock:
                self.statuses[status] += 1
                for prediction in answer.get("predictions", []):
                    self.versions[prediction["model_version"]] += 1
                    self.ids.append((prediction["id"], prediction["model_version"]))
                    self.scored += 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)


def test_promoted_model_swapped_in_under_load(
    broker: MosquittoBroker,
    service_bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    fleet = f"f{uuid.uuid4().hex[:8]}"
    key = load_private_key(keypair[0])
    state = tmp_path / "rollout.json"
    publish(service_bundles[0], fleet, broker.address, key, state_file=state)
    agent = Agent(agent_config(broker, keypair, fleet, "scoring-1", tmp_path / "member"))
    member = FleetMember(agent)
    spec = make_spec(keypair, reporting=True)
    service = ScoringService(
        spec, workers=2, on_message=member.on_message, welcome=member.welcome
    ).start()
    member.follow(service.broadcast)
    agent.start()
    with collecting(broker, fleet, f"collector-{fleet}") as collector:
        try:
            url = service.url
            wait_for(lambda: call(f"{url}/v2/health/ready")[0] == 200, what="the first model")
            body = {"instances": golden_records(service_bundles[0], 4)}
            load = Load(f"{url}/v1/models/churn:predict", body, clients=4)
            try:
                wait_for(lambda: load.versions["1.0.0"] > 50, what="load on 1.0.0")
                publish(
                    service_bundles[1],
                    fleet,
                    broker.address,
                    key,
                    canary_percent=100,
                    state_file=state,
                )
                wait_for(lambda: agent.status()["model_version"] == "1.1.0", what="the canary")
                promote(fleet, broker.address, key, state_file=state)
                sha = agent.model.manifest_sha256 if agent.model else ""
                wait_for(lambda: service.workers_on(sha), what="every worker on 1.1.0")
                seen = load.versions["1.1.0"]
                wait_for(lambda: load.versions["1.1.0"] > seen + 50, what="load on 1.1.0")
            finally:
                load.stop()
            assert set(load.statuses) == {200}, load.statuses  # zero failed requests
            assert set(load.versions) == {"1.0.0", "1.1.0"}

            # A label posted back by prediction id, twice: counted once.
            label_id = next(i for i, v in reversed(load.ids) if v == "1.1.0")
            for _ in range(2):
                assert call(f"{url}/v1/outcome", {"id": label_id, "label": "Yes"})[0] == 202
            assert call(f"{url}/v1/outcome", {"id": "forged", "label": 1})[0] == 404
            wait_for(lambda: member.labels_counted == 1, what="the label")

            def reported() -> tuple[int, int]:
                agent.close_window()
                return collector.scored_and_labelled()

            # Every record the clients got a score for is in the member's reports, once.
            wait_for(lambda: reported() == (load.scored, 1), what=f"{load.scored} reported")
            versions = {r.model_version for r in collector.reports}
            assert versions == {"1.0.0", "1.1.0"}
        finally:
            service.stop()
            agent.stop(flush_timeout=2.0)

"""A real Mosquitto broker for the fleet tests, as a child process on a free port.

A machine without mosquitto fails these tests (never skips them): the broker is part of
what is being tested, and scripts/setup installs it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgefleet.central.broker import MosquittoBroker, find_mosquitto
from edgefleet.central.trainer import TrainedModel
from edgefleet.errors import BrokerError
from tests.fleet.kit import Record, export_versions
from tests.fleet.secure import SecureFleet, start_secure

REPO = Path(__file__).resolve().parents[2]
COUNTS_FILE = REPO / "test-artifacts" / "fault-counts.jsonl"


def _require_mosquitto() -> None:
    try:
        find_mosquitto()
    except BrokerError as error:
        pytest.fail(f"{error}; run scripts/setup", pytrace=False)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One broker for the session; tests keep apart by using unique topics."""
    _require_mosquitto()
    with MosquittoBroker(tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker of this test alone, for tests that restart, kill or freeze it."""
    _require_mosquitto()
    with MosquittoBroker(tmp_path / "mosquitto") as running:
        yield running


@pytest.fixture
def unique() -> str:
    """A fresh name for topics, fleets and client ids."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def secure_fleet(
    tmp_path_factory: pytest.TempPathFactory, keypair: tuple[Path, Path]
) -> Iterator[SecureFleet]:
    """One secured broker (TLS, client certificates, CRL, access list) for the session,
    with its fleet CA; tests enroll their own identities under unique fleet names."""
    _require_mosquitto()
    fleet = start_secure(tmp_path_factory.mktemp("secure-home"), keypair[1])
    try:
        yield fleet
    finally:
        fleet.broker.stop()


@pytest.fixture(scope="session")
def bundles(
    trained: Callable[[str], TrainedModel],
    keypair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> list[Path]:
    """churn 1.0.0 (decision tree) and 1.1.0 (logistic regression), signed by ``keypair``."""
    return export_versions(trained, keypair, tmp_path_factory.mktemp("faults-home"))


@pytest.fixture(scope="session")
def counts_file() -> Path:
    COUNTS_FILE.parent.mkdir(exist_ok=True)
    COUNTS_FILE.write_text("")
    return COUNTS_FILE


@pytest.fixture
def record_counts(counts_file: Path, request: pytest.FixtureRequest) -> Record:
    """``record_counts(scenario, sent=..., stored=...)``: print the counts and append them
    to ``test-artifacts/fault-counts.jsonl``."""

    def record(scenario: str, **counts: object) -> None:
        line = json.dumps({"test": request.node.name, "scenario": scenario, **counts})
        print(f"\nfault counts: {line}")
        with counts_file.open("a") as out:
            out.write(line + "\n")

    return record

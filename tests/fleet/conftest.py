"""A real Mosquitto broker for the fleet tests, as a child process on a free port.

A machine without mosquitto fails these tests (never skips them): the broker is part of
what is being tested, and scripts/setup installs it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.central.broker import MosquittoBroker, find_mosquitto
from edgefleet.errors import BrokerError
from tests.fleet.secure import SecureFleet, start_secure


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

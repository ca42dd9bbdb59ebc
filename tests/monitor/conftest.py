"""Fixtures of the monitor tests: a private PostgreSQL 15 server, the database URL every
store test runs against (SQLite and PostgreSQL both), the fleet's Mosquitto broker, and real
reports.

The PostgreSQL server is Debian's (scripts/setup installs it), started by the session in a
temporary folder on a free loopback port with trust authentication, and stopped at the end.
A machine without it fails these tests, never skips them: PostgreSQL is a supported
database, so it is tested for real.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from sqlalchemy import insert

from edgefleet.central.broker import free_port
from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import encode_features, load_training_table
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.monitor.store import reports as reports_table
from edgefleet.central.trainer import reference_profile
from edgefleet.edge.profile import ReferenceProfile
from edgefleet.edge.report import Report
from edgefleet.edge.schema import FeatureSchema
from edgefleet.edge.sketch_builder import SketchBuilder
from tests.fleet.conftest import broker, own_broker, unique  # noqa: F401

PG_BIN = Path(os.environ.get("EDGEFLEET_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; as any other user it runs as that user.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(_as_postgres(command), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.fail(f"{what} failed:\n{result.stdout}\n{result.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT`` of a private PostgreSQL 15 cluster."""
    for binary in ("initdb", "pg_ctl"):
        if not (PG_BIN / binary).is_file():
            pytest.fail(
                f"PostgreSQL 15 is not installed ({PG_BIN / binary} is missing): run scripts/setup",
                pytrace=False,
            )
    # Not pytest's tmp_path: its folders are private to root (0700), and the server runs
    # as the user postgres, which must own its folder.
    folder = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
    folder.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    port = free_port()
    _run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        "initdb",
    )
    # Loopback only, the socket in our folder; fsync off: a test server need not survive
    # a power cut, and it makes CREATE DATABASE per test cheap.
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run(
        [
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        ],
        "pg_ctl start",
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: str) -> str:
    """``postgresql://postgres@127.0.0.1:PORT/edgefleet``, a database of the session."""
    return _new_database(postgres_server, "edgefleet")


def _new_database(server: str, name: str) -> str:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of either kind: every store test runs on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitor.db'}"
    server = request.getfixturevalue("postgres_server")
    return _new_database(server, "t" + uuid.uuid4().hex[:12])


# -- reports -----------------------------------------------------------------------------------


@functools.cache
def _profile() -> tuple[FeatureSchema, ReferenceProfile, np.ndarray]:  # type: ignore[type-arg]
    """The churn schema, a reference profile of generated rows, and encoded rows."""
    data = generate(1500, seed=11)
    table = load_training_table(data.frame, "churn", schema=data.schema)
    rows = encode_features(table.features, table.schema)
    rng = np.random.default_rng(5)
    reference = reference_profile(table.schema, rows, rng.random(len(rows)), table.labels)
    return table.schema, reference, rows


def make_report(
    device_id: str,
    sequence: int,
    *,
    fleet: str = "acme",
    model_version: str = "1.0.0",
    cohort: str = "stable",
    device_group: str = "eu",
    window_end: float = 1_750_000_000.0,
    rows: int = 50,
    seed: int | None = None,
    segments: tuple[str, ...] = (),
) -> Report:
    """A real report: a SketchBuilder over ``rows`` generated rows, labelled outcomes and
    latencies, for one device and a one-minute window ending at ``window_end``."""
    schema, reference, encoded = _profile()
    schema = replace(schema, segments=segments)
    stable = zlib.crc32(f"{device_id}/{sequence}".encode())
    rng = np.random.default_rng(seed if seed is not None else stable)
    times = iter((window_end - 60.0, window_end))
    builder = SketchBuilder(
        schema,
        reference,
        model_name="churn",
        model_version=model_version,
        clock=lambda: next(times),
    )
    picked = encoded[rng.integers(0, len(encoded), rows)]
    builder.add(picked, rng.random(rows), rng.random(rows) / 50)
    labelled = picked[: rows // 5]
    builder.add_outcomes(
        rng.random(rows // 5), rng.integers(0, 2, rows // 5), builder.segment_levels(labelled)
    )
    return Report.from_body(
        builder.snapshot(),
        fleet=fleet,
        device_id=device_id,
        sequence=sequence,
        cohort=cohort,  # type: ignore[arg-type]
        device_group=device_group,
    )


@pytest.fixture
def report_factory() -> Callable[..., Report]:
    return make_report


def insert_stored_row(store: MonitorStore, body: str, **columns: Any) -> None:
    """A row in the reports table written by SQL, not by the monitor (as an older
    edgefleet, a restored backup or a hand would): its columns from ``body`` where it is a
    report, else from ``columns``, which override them."""
    try:
        raw = json.loads(body)
    except ValueError:
        raw = {}
    raw = raw if isinstance(raw, dict) else {}
    row = {
        "fleet": raw.get("fleet", "acme"),
        "device_id": raw.get("device_id", "hand"),
        "sequence": raw.get("sequence", 0),
        "model_name": raw.get("model_name", "churn"),
        "model_version": raw.get("model_version", "1.0.0"),
        "cohort": raw.get("cohort", "stable"),
        "device_group": raw.get("device_group", "eu"),
        "window_start": raw.get("window_start", 1_749_999_940.0),
        "window_end": raw.get("window_end", 1_750_000_000.0),
        "scored": raw.get("scored", 0),
        "failed": raw.get("failed", 0),
        "dropped_reports": raw.get("dropped_reports", 0),
        "received": 1_750_000_001.0,
        "body": body,
    }
    row.update(columns)
    with store.engine.begin() as connection:
        connection.execute(insert(reports_table), [row])

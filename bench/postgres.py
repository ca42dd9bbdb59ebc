"""A private PostgreSQL 15 server for the benchmarks: Debian's binaries (scripts/setup
installs them), a throwaway cluster in a temporary folder on a free loopback port, trust
authentication, stopped and removed at the end. Durable as in production (fsync and
synchronous commit on): a benchmark of a database that may lose commits measures nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from edgefleet.central.broker import free_port

PG_BIN = Path(os.environ.get("EDGEFLEET_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; as any other user it runs as that user.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(_as_postgres(command), capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stdout}\n{result.stderr}")


@contextmanager
def private_postgres() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT`` of a private cluster, for the block."""
    if not (PG_BIN / "initdb").is_file():
        raise RuntimeError(f"PostgreSQL 15 is not installed ({PG_BIN}): run scripts/setup")
    folder = Path(tempfile.mkdtemp(prefix="edgefleet-bench-pg-"))
    folder.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    port = free_port()
    init = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    _run([*init, "-E", "UTF8", "--locale=C"], "initdb")
    options = (
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200 "
        "-c shared_buffers=256MB"
    )
    control = [str(PG_BIN / "pg_ctl"), "-D", str(data)]
    _run([*control, "-l", str(folder / "server.log"), "-o", options, "-w", "start"], "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        _run([*control, "-m", "fast", "-w", "stop"], "stop")
        shutil.rmtree(folder, ignore_errors=True)


def new_database(server: str, prefix: str = "bench") -> str:
    """The URL of a new, empty database on ``server``."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def database_bytes(url: str) -> int:
    """The size of the database ``url`` names, as PostgreSQL counts it (tables, indexes,
    TOAST)."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CHECKPOINT")
        row = connection.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])

"""The identity commands as a user runs them: ca init, issue-service, devices enroll, a
secured 'edgefleet broker' that enroll and revoke reload, devices list, agent --identity."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgefleet.central.broker import free_port

CLI = [sys.executable, "-m", "edgefleet.cli.main", "--home", "home"]


def run(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


@contextmanager
def broker_process(cwd: Path, *args: str) -> Iterator[str]:
    """``edgefleet broker ARGS`` in the background; yields what it printed up to its
    "listening" line."""
    process = subprocess.Popen(
        [*CLI, "broker", *args], cwd=cwd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    assert process.stderr is not None
    printed = b""
    deadline = time.monotonic() + 60
    try:
        while b"broker listening" not in printed:
            assert time.monotonic() < deadline, printed.decode()
            assert process.poll() is None, printed.decode()
            if select.select([process.stderr], [], [], 0.5)[0]:
                printed += process.stderr.read1(65536)  # type: ignore[attr-defined]
        yield printed.decode()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("identity-cli")
    run("keys", "generate", cwd=folder)
    run("ca", "init", cwd=folder)
    return folder


def test_enroll_writes_a_private_key_and_the_agent_checks_the_identity(work: Path) -> None:
    result = run("devices", "enroll", "--fleet", "shops", "--device-id", "pos-17", cwd=work)
    folder = work / "home" / "devices" / "shops" / "pos-17"
    assert f"edgefleet agent --identity {Path('home/devices/shops/pos-17')}" in result.stderr
    assert (folder / "key.pem").stat().st_mode & 0o777 == 0o600
    assert json.loads((folder / "identity.json").read_text())["common_name"] == (
        "device:shops:pos-17"
    )
    wrong = run(
        "agent",
        "--identity",
        str(folder),
        "--fleet",
        "depot",
        "--state-dir",
        "s",
        cwd=work,
        ok=False,
    )
    assert wrong.returncode == 2
    assert "--fleet 'depot' disagrees with the identity" in wrong.stderr
    bare = run("agent", "--state-dir", "s", cwd=work, ok=False)
    assert "give --identity DIR" in bare.stderr


def test_the_secured_broker_is_reloaded_by_enroll_and_revoke(work: Path) -> None:
    port = str(free_port())
    with broker_process(work, "--port", port) as printed:
        assert f"broker listening on mqtts://127.0.0.1:{port}" in printed
        assert "warning" not in printed
        enrolled = run("devices", "enroll", "--fleet", "shops", "--device-id", "pos-2", cwd=work)
        assert "reloaded the broker" in enrolled.stderr
        revoked = run("devices", "revoke", "--fleet", "shops", "--device-id", "pos-2", cwd=work)
        assert "reloaded the broker" in revoked.stderr
    config = (work / "home" / "broker" / "mosquitto.conf").read_text()
    for line in (
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        "crlfile ",
        "acl_file ",
    ):
        assert line in config
    listing = run("devices", "list", "--fleet", "shops", "--json", cwd=work)
    states = {row["device_id"]: row["state"] for row in json.loads(listing.stdout)}
    assert states["pos-2"] == "revoked"


def test_insecure_dev_warns_and_stays_on_loopback(work: Path) -> None:
    port = str(free_port())
    with broker_process(work, "--insecure-dev", "--port", port, "--data-dir", "dev") as printed:
        assert "warning: --insecure-dev: anonymous clients" in printed
        assert f"mqtt://127.0.0.1:{port}" in printed
    assert "allow_anonymous true" in (work / "dev" / "mosquitto.conf").read_text()
    refused = run("broker", "--insecure-dev", "--host", "0.0.0.0", cwd=work, ok=False)
    assert "loopback" in refused.stderr


def test_service_identities_land_where_the_commands_look(work: Path) -> None:
    run("ca", "issue-service", "--role", "publisher", cwd=work)
    run(
        "ca",
        "issue-service",
        "--name",
        "watch",
        "--role",
        "monitor",
        "--role",
        "publisher",
        cwd=work,
    )
    meta = json.loads((work / "home" / "identities" / "watch" / "identity.json").read_text())
    assert meta["roles"] == ["monitor", "publisher"]
    # 'rollout status' picks HOME/identities/publisher: it talks TLS to 8883, not 1883.
    status = run("rollout", "status", "--fleet", "shops", cwd=work, ok=False)
    assert "127.0.0.1:8883" in status.stderr

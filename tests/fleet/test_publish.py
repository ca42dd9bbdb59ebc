"""Publishing real exported bundles to a fleet and steering the rollout, against a real
Mosquitto: what a device that connects afterwards gets, and what is refused."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.central.broker import MosquittoBroker, free_port
from edgefleet.central.export import export_bundle
from edgefleet.central.publish import (
    promote,
    publish,
    rollback,
    rollout_status,
    state_file_for,
)
from edgefleet.central.registry import Registry
from edgefleet.central.trainer import TrainedModel
from edgefleet.cli.main import main
from edgefleet.edge.bundle import open_bundle
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.mqtt import MqttClient
from edgefleet.edge.rollout import RolloutState, sign_rollout, verify_rollout
from edgefleet.edge.signing import TrustedKey, load_private_key, load_public_key
from edgefleet.edge.topics import Topics
from edgefleet.errors import ArtifactError, InputError, SignatureError


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory,
    trained: Callable[[str], TrainedModel],
    keypair: tuple[Path, Path],
) -> Path:
    """A home folder with churn 1.0.0 (decision tree) and 1.1.0 (logistic regression),
    each exported as an ONNX bundle in HOME/bundles, and the key pair in HOME/keys."""
    home = tmp_path_factory.mktemp("home")
    registry = Registry(home)
    key = load_private_key(keypair[0])
    for family in ("dt", "logreg"):
        version = registry.register(trained(family), data_sha256="d" * 64)
        export_bundle(version, ["onnx"], home / "bundles" / f"churn-{version.version}", key)
    (home / "keys").mkdir()
    shutil.copy(keypair[0], home / "keys" / "edgefleet.key")
    shutil.copy(keypair[1], home / "keys" / "edgefleet.pub")
    return home


@pytest.fixture
def key(keypair: tuple[Path, Path]) -> Ed25519PrivateKey:
    return load_private_key(keypair[0])


@pytest.fixture
def trusted(keypair: tuple[Path, Path]) -> list[TrustedKey]:
    return [load_public_key(keypair[1])]


def bundle(home: Path, version: str) -> Path:
    return home / "bundles" / f"churn-{version}"


class Device:
    """A fresh subscriber: takes everything retained under the fleet's topics."""

    def __init__(self, broker: MosquittoBroker, topics: Topics):
        self.topics = topics
        self.retained: dict[str, bytes] = {}
        self.live: list[str] = []
        self._lock = threading.Lock()
        self._client = MqttClient(broker.address, f"dev-{topics.fleet}", clean_start=True)

    def __enter__(self) -> Device:
        self._client.connect()
        self._client.subscribe(f"{self.topics.base}/#", self._take)
        return self

    def __exit__(self, *_: object) -> None:
        self._client.disconnect()

    def _take(self, topic: str, payload: bytes, retained: bool) -> None:
        with self._lock:
            if retained:
                self.retained[topic] = payload
            else:
                self.live.append(topic)

    def wait_for(self, count: int, timeout: float = 10.0) -> dict[str, bytes]:
        deadline = time.monotonic() + timeout
        while len(self.retained) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._lock:
            return dict(self.retained)


def test_a_fresh_device_receives_the_rollout_and_every_byte(
    broker: MosquittoBroker,
    home: Path,
    key: Ed25519PrivateKey,
    trusted: list[TrustedKey],
    unique: str,
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    result = publish(bundle(home, "1.0.0"), unique, broker.address, key, progress=lines.append)
    assert (result.state.sequence, result.state.stable, result.state.canary) == (
        1,
        result.model,
        None,
    )
    assert any("acknowledged" in line and "model.onnx" in line for line in lines)

    topics = Topics(unique)
    with Device(broker, topics) as device:
        # rollout + manifest + signature + one ONNX artifact, all retained
        received = device.wait_for(4)
    state = verify_rollout(received[topics.rollout], trusted, fleet=unique)
    assert state == result.state
    ref = state.stable
    assert ref is not None
    assert ref.version == "1.0.0"
    for topic, payload in received.items():
        if topic != topics.rollout:
            assert topics.sha256_from(topic) == hashlib.sha256(payload).hexdigest()
    # The device rebuilds the bundle from content-addressed bytes, and it verifies.
    manifest_bytes = received[topics.model(ref.manifest_sha256)]
    manifest = Manifest.from_bytes(manifest_bytes)
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    (rebuilt / "manifest.json").write_bytes(manifest_bytes)
    (rebuilt / "manifest.sig").write_bytes(received[topics.model(ref.signature_sha256)])
    for artifact in manifest.artifacts:
        assert ref.artifacts[artifact.format] == artifact.sha256
        (rebuilt / artifact.path).write_bytes(received[topics.model(artifact.sha256)])
    assert open_bundle(rebuilt, trusted).manifest.version == "1.0.0"


def test_canary_promote_rollback_sequence(
    broker: MosquittoBroker, home: Path, key: Ed25519PrivateKey, unique: str, tmp_path: Path
) -> None:
    state_file = tmp_path / "fleet.json"
    address = broker.address
    v1 = publish(bundle(home, "1.0.0"), unique, address, key, state_file=state_file).state
    canary = publish(
        bundle(home, "1.1.0"), unique, address, key, canary_percent=20, state_file=state_file
    )
    v2 = canary.model
    assert canary.state.stable == v1.stable
    assert (canary.state.canary, canary.state.canary_percent) == (v2, 20)
    # Raising the percentage keeps the rollout id: the canary only gains devices.
    wider = publish(
        bundle(home, "1.1.0"), unique, address, key, canary_percent=50, state_file=state_file
    )
    assert wider.state.rollout_id == canary.state.rollout_id
    promoted = promote(unique, address, key, state_file=state_file)
    assert (promoted.stable, promoted.canary, promoted.canary_percent) == (v2, None, 0)
    assert promoted.rollback is False
    back = rollback(unique, address, key, to_version="1.0.0", state_file=state_file)
    assert (back.stable, back.canary, back.rollback) == (v1.stable, None, True)
    again = publish(
        bundle(home, "1.1.0"), unique, address, key, canary_percent=10, state_file=state_file
    )
    assert again.state.rollout_id != canary.state.rollout_id
    dropped = rollback(unique, address, key, state_file=state_file)
    assert (dropped.stable, dropped.canary, dropped.rollback) == (v1.stable, None, True)

    sequences = [
        s.sequence for s in (v1, canary.state, wider.state, promoted, back, again.state, dropped)
    ]
    assert sequences == [1, 2, 3, 4, 5, 6, 7]
    retained = rollout_status(unique, address, [TrustedKey.from_public_key(key.public_key())])
    assert retained == dropped
    saved = json.loads(state_file.read_text())
    assert sorted(saved["models"]) == ["churn@1.0.0", "churn@1.1.0"]


def test_lower_and_duplicate_versions_are_refused(
    broker: MosquittoBroker, home: Path, key: Ed25519PrivateKey, unique: str
) -> None:
    with pytest.raises(InputError, match="no stable model yet"):
        publish(bundle(home, "1.0.0"), unique, broker.address, key, canary_percent=5)
    publish(bundle(home, "1.1.0"), unique, broker.address, key)
    with pytest.raises(InputError, match=r"rollout rollback --to 1\.0\.0"):
        publish(bundle(home, "1.0.0"), unique, broker.address, key)
    with pytest.raises(InputError, match="a canary must be higher"):
        publish(bundle(home, "1.1.0"), unique, broker.address, key, canary_percent=5)
    with pytest.raises(InputError, match="no canary to promote"):
        promote(unique, broker.address, key)
    with pytest.raises(InputError, match="never published to this fleet"):
        rollback(unique, broker.address, key, to_version="0.9.0")
    with pytest.raises(InputError, match="from 1 to 100"):
        publish(bundle(home, "1.1.0"), unique, broker.address, key, canary_percent=0)


@pytest.mark.parametrize("damage", ["artifact", "manifest"])
def test_a_tampered_bundle_is_refused_before_anything_is_sent(
    broker: MosquittoBroker,
    home: Path,
    key: Ed25519PrivateKey,
    unique: str,
    tmp_path: Path,
    damage: str,
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle(home, "1.0.0"), copy)
    if damage == "artifact":
        data = bytearray((copy / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (copy / "model.onnx").write_bytes(bytes(data))
        expected: type[Exception] = ArtifactError
    else:
        text = (copy / "manifest.json").read_text()
        (copy / "manifest.json").write_text(
            text.replace('"version": "1.0.0"', '"version": "9.0.0"')
        )
        expected = SignatureError
    topics = Topics(unique)
    with Device(broker, topics) as device:
        with pytest.raises(expected):
            publish(copy, unique, broker.address, key)
        time.sleep(0.3)
        assert device.retained == {}
        assert device.live == []
    with MqttClient(broker.address, f"{unique}-check", clean_start=True) as check:
        assert check.read_retained(topics.rollout) is None


def test_a_lost_state_file_is_recovered_from_the_broker(
    broker: MosquittoBroker, home: Path, key: Ed25519PrivateKey, unique: str, tmp_path: Path
) -> None:
    first = tmp_path / "a.json"
    publish(bundle(home, "1.0.0"), unique, broker.address, key, state_file=first)
    publish(bundle(home, "1.1.0"), unique, broker.address, key, canary_percent=30, state_file=first)
    elsewhere = tmp_path / "b.json"  # another machine, or the file was deleted
    promoted = promote(unique, broker.address, key, state_file=elsewhere)
    assert promoted.sequence == 3
    assert promoted.stable is not None
    assert promoted.stable.version == "1.1.0"


def test_a_broker_that_lost_its_data_gets_the_state_back(
    own_broker: MosquittoBroker, home: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    state_file = tmp_path / "fleet.json"
    publish(bundle(home, "1.0.0"), "shops", own_broker.address, key, state_file=state_file)
    publish(bundle(home, "1.1.0"), "shops", own_broker.address, key, state_file=state_file)
    own_broker.stop()
    own_broker.database_path.unlink()
    own_broker.start()
    # The models went with the database: pointing the fleet at one is refused...
    with pytest.raises(InputError, match=r"no longer holds the manifest of churn 1\.0\.0"):
        rollback("shops", own_broker.address, key, to_version="1.0.0", state_file=state_file)
    # ...and publishing the stable bundle again restores models and state.
    lines: list[str] = []
    result = publish(
        bundle(home, "1.1.0"),
        "shops",
        own_broker.address,
        key,
        state_file=state_file,
        progress=lines.append,
    )
    assert result.state.sequence == 3  # continues from the state file, not from 1
    assert any("continuing from the state file" in line for line in lines)
    trusted = [TrustedKey.from_public_key(key.public_key())]
    assert rollout_status("shops", own_broker.address, trusted) == result.state


def test_a_retained_rollout_of_another_key_is_replaced_with_a_warning(
    broker: MosquittoBroker, home: Path, key: Ed25519PrivateKey, unique: str
) -> None:
    """Whoever can write to the broker cannot freeze the fleet: what does not verify is
    named and replaced, never a reason to refuse (it used to be: RolloutError, 409)."""
    stranger = Ed25519PrivateKey.generate()
    with MqttClient(broker.address, f"{unique}-x", clean_start=True) as client:
        fake = RolloutState(
            unique,
            "r1",
            1,
            None,
            None,
            0,
            False,
            "2025-01-01T00:00:00+00:00",
            "2099-01-01T00:00:00+00:00",
        )
        client.publish(Topics(unique).rollout, sign_rollout(fake, stranger), retain=True).wait()
    lines: list[str] = []
    result = publish(bundle(home, "1.0.0"), unique, broker.address, key, progress=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 2, warnings
    assert "not a rollout state of ours" in warnings[0]
    assert "not trusted here" in warnings[0]
    # No state file either (this home never published here): the serial starts again.
    assert "starting again at sequence 1" in warnings[1]
    trusted = [TrustedKey.from_public_key(key.public_key())]
    assert rollout_status(unique, broker.address, trusted) == result.state


# -- command line -----------------------------------------------------------------------------


def test_cli_publish_and_rollout(
    broker: MosquittoBroker, home: Path, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--fleet", unique, "--broker", broker.url]
    assert main(["--home", str(home), "publish", "1.0.0", *common]) == 0
    assert "stable  churn 1.0.0" in capsys.readouterr().out
    assert main(["--home", str(home), "publish", "latest", *common, "--canary", "25"]) == 0
    out = capsys.readouterr()
    assert "using the bundle exported before" in out.err
    assert "canary  churn 1.1.0 on 25% of devices" in out.out
    assert main(["--home", str(home), "rollout", "status", *common, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["sequence"], status["canary_percent"]) == (2, 25)
    assert main(["--home", str(home), "rollout", "promote", *common]) == 0
    assert "stable  churn 1.1.0" in capsys.readouterr().out
    assert main(["--home", str(home), "rollout", "rollback", *common, "--to", "1.0.0"]) == 0
    assert "rollback allowed" in capsys.readouterr().out
    assert state_file_for(home, unique).exists()


def test_cli_errors_are_one_line(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code = main(
        [
            "--home",
            str(home),
            "rollout",
            "status",
            "--fleet",
            "f",
            "--broker",
            f"mqtt://127.0.0.1:{port}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"edgefleet: error: cannot reach the MQTT broker at 127.0.0.1:{port}: Connection "
        "refused. Start one with 'edgefleet broker' or pass --broker mqtt://host:port\n"
    )
    assert main(["--home", str(home), "publish", "no/such/bundle", "--fleet", "f"]) == 2
    assert "no bundle at no/such/bundle" in capsys.readouterr().err


def test_cli_broker_runs_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "broker data"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.cli.main",
            "broker",
            "--insecure-dev",
            "--port",
            str(port),
            "--data-dir",
            str(data),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        assert process.stderr is not None
        # Interrupt only once it says it is up (a Ctrl-C while starting is fine too, but
        # then there is nothing to check).
        while not any("broker listening" in line for line in seen):
            line = process.stderr.readline()
            assert line, f"the broker command ended early: {''.join(seen)}"
            seen.append(line)
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=10)
    finally:
        process.kill()
    err = "".join(seen) + rest
    assert process.returncode == 0, err
    assert f"broker listening on mqtt://127.0.0.1:{port}" in err
    assert "warning: --insecure-dev" in err
    assert (data / "mosquitto.db").exists()  # saved on the way out

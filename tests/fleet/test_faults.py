"""Fault tests of the fleet's updates against a real Mosquitto: agents killed in the middle
of an update, refused rollouts, and hostile messages (reports through broker and monitor
crashes: tests/fleet/test_delivery.py). Every test counts what happened, asserts the
counts, prints them (``pytest -s``) and appends them as JSON lines to
``test-artifacts/fault-counts.jsonl``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.central.broker import MosquittoBroker, free_port
from edgefleet.central.publish import model_ref, publish
from edgefleet.edge.agent.agent import Agent
from edgefleet.edge.agent.lifecycle import FAULT_ENVIRONMENT
from edgefleet.edge.bundle import MANIFEST_FILE, SIGNATURE_FILE, open_bundle
from edgefleet.edge.mqtt import MqttClient
from edgefleet.edge.rollout import ModelRef, RolloutState, sign_rollout
from edgefleet.edge.signing import TrustedKey, load_private_key, load_public_key, sign
from edgefleet.edge.topics import Topics
from tests.fleet.kit import Record, agent_config, running, wait_for

REPO = Path(__file__).resolve().parents[2]


# -- shared fixtures and helpers ------------------------------------------------------------


def _records(bundle: Path, count: int = 3) -> list[dict[str, Any]]:
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    return [g["record"] for g in manifest["golden"][:count]]


def _fleet() -> str:
    return f"f{uuid.uuid4().hex[:10]}"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Publisher:
    """Publishes model files and signed rollout states by hand, as the central side does,
    or as an attacker with access to the broker (but not to the signing key) could."""

    def __init__(self, broker: MosquittoBroker, fleet: str, key: Ed25519PrivateKey):
        self.fleet = fleet
        self.topics = Topics(fleet)
        self.key = key
        self.trusted = (TrustedKey.from_public_key(key.public_key()),)
        self.sequence = 0
        self.envelopes: list[bytes] = []
        self.rollout_id = f"r{uuid.uuid4().hex[:8]}"
        self.client = MqttClient(broker.address, f"pub-{uuid.uuid4().hex[:12]}", clean_start=True)
        self.client.connect()

    def close(self) -> None:
        self.client.disconnect()

    def send(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        self.client.publish(topic, payload, retain=retain).wait(30)

    def model(
        self,
        bundle: Path,
        *,
        replace: Callable[[str, bytes], bytes] = lambda label, data: data,
        trusted: tuple[TrustedKey, ...] | None = None,
    ) -> ModelRef:
        """Send a bundle's files retained on ``models/{sha256}``; ``replace(label, data)``
        may swap the bytes actually sent (an attacker overwriting retained content)."""
        ref, contents = model_ref(open_bundle(bundle, trusted or self.trusted))
        for content in contents:
            self.send(self.topics.model(content.sha256), replace(content.label, content.data))
        return ref

    def state(
        self,
        stable: ModelRef | None,
        *,
        rollback: bool = False,
        sequence: int | None = None,
        issued: datetime | None = None,
        lifetime: timedelta = timedelta(days=7),
    ) -> RolloutState:
        if sequence is None:
            sequence = self.sequence + 1
        self.sequence = max(self.sequence, sequence)
        issued = issued or _now()
        return RolloutState(
            fleet=self.fleet,
            rollout_id=self.rollout_id,
            sequence=sequence,
            stable=stable,
            canary=None,
            canary_percent=0,
            rollback=rollback,
            issued=issued.isoformat(),
            expires=(issued + lifetime).isoformat(),
        )

    def rollout(
        self,
        stable: ModelRef | None,
        *,
        rollback: bool = False,
        issued: datetime | None = None,
        lifetime: timedelta = timedelta(days=7),
    ) -> bytes:
        """Sign and publish (retained) the next state; returns the envelope."""
        state = self.state(stable, rollback=rollback, issued=issued, lifetime=lifetime)
        envelope = sign_rollout(state, self.key)
        self.send(self.topics.rollout, envelope)
        self.envelopes.append(envelope)
        return envelope

    def signed_raw(self, state: dict[str, Any]) -> bytes:
        """An envelope around any JSON, signed with the trusted key: what a buggy or
        compromised publisher could send."""
        text = json.dumps(state, sort_keys=True, separators=(",", ":"))
        signature = json.loads(sign(text.encode("ascii"), self.key))
        return json.dumps({"state": text, "signature": signature}).encode()

    def status_of(self, device_id: str) -> dict[str, Any]:
        payload = self.client.read_retained(self.topics.status(device_id))
        status: dict[str, Any] = json.loads(payload) if payload else {}
        return status


@contextmanager
def _fleet_with_agent(
    broker: MosquittoBroker,
    keypair: tuple[Path, Path],
    state_dir: Path,
    first: list[Path],
) -> Iterator[tuple[Publisher, Agent, list[ModelRef]]]:
    """A fleet whose rollout went through ``first`` (each bundle as stable in turn) and an
    agent running the last of them."""
    publisher = Publisher(broker, _fleet(), load_private_key(keypair[0]))
    try:
        refs = []
        with running(agent_config(broker, keypair, publisher.fleet, "dev-1", state_dir)) as agent:
            for bundle in first:
                ref = publisher.model(bundle)
                refs.append(ref)
                publisher.rollout(ref)
                _wait_installed(agent, ref, publisher.sequence)
            assert agent.status()["problem"] is None
            yield publisher, agent, refs
    finally:
        publisher.close()


def _problem(agent: Agent) -> str:
    return str(agent.status()["problem"] or "")


def _wait_problem(agent: Agent, reason: str, what: str) -> None:
    wait_for(lambda: reason in _problem(agent), what=what)


def _wait_installed(agent: Agent, ref: ModelRef, sequence: int) -> None:
    """Until the agent applied rollout ``sequence`` and runs ``ref``, idle."""

    def installed() -> bool:
        status = agent.status()
        return (status["model_version"], status["rollout_sequence"], status["update_state"]) == (
            ref.version,
            sequence,
            "idle",
        )

    wait_for(installed, what=f"{ref.label} to install (rollout {sequence})")


def _assert_refused(
    publisher: Publisher, agent: Agent, bundle: Path, running_version: str, reason: str
) -> None:
    """The agent refused with ``reason`` (in its status and in the retained status
    message), still runs ``running_version``, is idle, and scores with it."""
    wait_for(
        lambda: reason in _problem(agent) and agent.status()["update_state"] == "idle",
        what=f"the refusal {reason!r}",
    )
    wait_for(
        lambda: reason in str(publisher.status_of("dev-1").get("problem")),
        what="the retained status message to say why",
    )
    status = agent.status()
    assert status["model_version"] == running_version
    assert status["update_state"] == "idle"
    predictions = agent.score(_records(bundle))
    assert [p.model_version for p in predictions] == [running_version] * len(predictions)
    assert all(0.0 <= p.probability <= 1.0 for p in predictions)


def _assert_follows(publisher: Publisher, agent: Agent, bundle: Path, **rollout: Any) -> None:
    """A valid rollout after the refusal is still followed, and clears the problem."""
    ref = publisher.model(bundle)
    publisher.rollout(ref, **rollout)
    _wait_installed(agent, ref, publisher.sequence)
    assert agent.status()["problem"] is None, agent.status()["problem"]
    assert agent.score(_records(bundle, 1))[0].model_version == ref.version


# -- 2. an agent killed during an update ----------------------------------------------------


@dataclass
class AgentProcess:
    """``edgefleet agent`` as a child process, with its local HTTP API."""

    broker: MosquittoBroker
    public_key: Path
    fleet: str
    device_id: str
    state_dir: Path
    runs: list[tuple[str | None, int | None]] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    last_answer: str = ""

    @property
    def log_path(self) -> Path:
        return self.state_dir.parent / f"{self.device_id}.log"

    def start(self, kill_at: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != FAULT_ENVIRONMENT}
        env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT dumps every thread's stack into the log
        if kill_at is not None:
            env[FAULT_ENVIRONMENT] = kill_at
        self.port = free_port()
        with self.log_path.open("ab") as log:
            log.write(f"--- run {len(self.runs) + 1}, kill at {kill_at}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgefleet.cli.main",
                    "agent",
                    "--fleet",
                    self.fleet,
                    "--device-id",
                    self.device_id,
                    "--state-dir",
                    str(self.state_dir),
                    "--trust-key",
                    str(self.public_key),
                    "--broker",
                    self.broker.url,
                    "--http-port",
                    str(self.port),
                    "--report-seconds",
                    "3600",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        self.runs.append((kill_at, None))

    def _finished(self, code: int) -> int:
        kill_at, _ = self.runs[-1]
        self.runs[-1] = (kill_at, code)
        self.process = None
        return code

    def call(self, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method="GET" if body is None else "POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def health(self) -> dict[str, Any] | None:
        """The agent's status when it is up and scoring, else None."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.device_id} exited with {self.process.returncode}:\n{self.log()}"
            )
        try:
            code, body = self.call("/health")
        except OSError as error:
            self.last_answer = f"no answer: {error!r}"
            return None  # not listening yet
        self.last_answer = f"{code} {body}"
        return body if code == 200 else None

    def wait_status(self, what: str, **expected: object) -> dict[str, Any]:
        def matches() -> bool:
            status = self.health()
            return status is not None and all(status[k] == v for k, v in expected.items())

        try:
            wait_for(matches, timeout=60, what=f"{self.device_id}: {what}")
        except AssertionError as error:
            assert self.process is not None
            self.process.send_signal(signal.SIGABRT)
            self.process.wait(timeout=30)
            raise AssertionError(
                f"{error}; last answer {self.last_answer}; its log, with its threads' "
                f"stacks:\n{self.log()}"
            ) from None
        status = self.health()
        assert status is not None
        return status

    def wait_killed(self) -> int:
        assert self.process is not None
        code = self.process.wait(timeout=60)
        assert code == -signal.SIGKILL, f"exit {code}:\n{self.log()}"
        return self._finished(code)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        assert code == 0, f"exit {code}:\n{self.log()}"
        return self._finished(code)

    def abandon(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-12000:]

    def update_record(self) -> dict[str, Any]:
        record: dict[str, Any] = json.loads((self.state_dir / "update.json").read_bytes())
        return record

    def verified_active(self, fmt: str) -> tuple[str, str]:
        """(manifest sha256, version) of the pointer's active model, after checking its
        signature and its ``fmt`` artifact (the one the device downloaded) again."""
        models = self.state_dir / "models"
        active = json.loads((models / "pointer.json").read_text())["active"]
        bundle = open_bundle(models / active, [load_public_key(self.public_key)], formats=[fmt])
        return active, bundle.manifest.version


def test_agent_killed_during_download_or_activation_resumes_with_a_verified_model(
    broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    """Three device processes on one fleet, each SIGKILLed by the fault hook as a step of
    the update to 1.1.0 begins: at download, at activation, and at download again on
    every restart (the loop cap must give up on the target and keep 1.0.0)."""
    fleet = _fleet()
    key = load_private_key(keypair[0])
    state_file = tmp_path / "rollout.json"
    kill_at = {"at-download": "download", "at-activate": "activate", "looping": "download"}
    devices = {
        name: AgentProcess(broker, keypair[1], fleet, name, tmp_path / name) for name in kill_at
    }
    record = _records(bundles[0], 1)[0]
    try:
        # 1.0.0 installs normally; stopped cleanly.
        v1 = publish(bundles[0], fleet, broker.address, key, state_file=state_file).model
        for device in devices.values():
            device.start()
        for device in devices.values():
            device.wait_status("1.0.0 installed", model_version="1.0.0", state="online")
            device.stop()
        # Restarted with the fault hook; 1.1.0 is published; each dies as its step begins.
        for name, device in devices.items():
            device.start(kill_at=kill_at[name])
        for device in devices.values():
            device.wait_status("online on 1.0.0", model_version="1.0.0", state="online")
        v2 = publish(bundles[1], fleet, broker.address, key, state_file=state_file).model
        for name, device in devices.items():
            device.wait_killed()
            saved = device.update_record()
            assert (saved["state"], saved["attempts"]) == (kill_at[name], 1), saved
            assert saved["target"]["manifest_sha256"] == v2.manifest_sha256

        # Without the hook, the interrupted update resumes and completes.
        resumed = [devices["at-download"], devices["at-activate"]]
        for device in resumed:
            device.start()
        # The looping device keeps dying at download: attempts 2 and 3 ...
        looping = devices["looping"]
        for attempt in (2, 3):
            looping.start(kill_at="download")
            looping.wait_killed()
            assert looping.update_record()["attempts"] == attempt
        # ... and the fourth start gives up on 1.1.0 instead of dying again.
        looping.start(kill_at="download")

        for device in resumed:
            status = device.wait_status(
                "1.1.0 after resuming", model_version="1.1.0", update_state="idle"
            )
            assert status["problem"] is None, status["problem"]
            code, body = device.call("/score", {"records": [record]})
            assert code == 200, body
            assert body["predictions"][0]["model_version"] == "1.1.0"
            assert device.verified_active(status["format"]) == (v2.manifest_sha256, "1.1.0")
            assert device.update_record()["state"] == "idle"

        status = looping.wait_status(
            "the 1.1.0 rollout followed without installing it",
            update_state="idle",
            rollout_sequence=2,
        )
        assert status["model_version"] == "1.0.0"
        assert "gave up after 3 interrupted attempts" in str(status["problem"])
        code, body = looping.call("/score", {"record": record})
        assert code == 200, body
        assert body["predictions"][0]["model_version"] == "1.0.0"
        assert looping.verified_active(status["format"]) == (v1.manifest_sha256, "1.0.0")
        assert looping.process is not None
        assert looping.process.poll() is None
        saved = looping.update_record()
        assert saved["state"] == "idle"
        assert saved["target"] is None
        assert f"{v2.manifest_sha256}@2" in saved["failed"]
        for device in devices.values():
            device.stop()
    finally:
        for device in devices.values():
            device.abandon()
    record_counts(
        "agent SIGKILL during update",
        **{
            name: {
                "runs": len(device.runs),
                "sigkilled": sum(code == -signal.SIGKILL for _, code in device.runs),
                "clean_exits": sum(code == 0 for _, code in device.runs),
            }
            for name, device in devices.items()
        },
    )
    assert [code for _, code in devices["looping"].runs] == [0, -9, -9, -9, 0]
    assert [code for _, code in devices["at-download"].runs] == [0, -9, 0]


def test_agent_killed_in_each_lifecycle_state_restarts_verified_and_completes(
    broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    """Five device processes, each SIGKILLed once as one step of the update to 1.1.0
    begins (download, verify, self-test, activate, commit). Restarted without the hook,
    each scores at once with a verified model and then completes the update."""
    fleet = _fleet()
    key = load_private_key(keypair[0])
    state_file = tmp_path / "rollout.json"
    states = ("download", "verify", "self_test", "activate", "commit")
    devices = {s: AgentProcess(broker, keypair[1], fleet, f"at-{s}", tmp_path / s) for s in states}
    record = _records(bundles[0], 1)[0]
    on_restart: dict[str, str] = {}
    try:
        publish(bundles[0], fleet, broker.address, key, state_file=state_file)
        for device in devices.values():
            device.start()
        for device in devices.values():
            device.wait_status("1.0.0 installed", model_version="1.0.0", state="online")
            device.stop()
        for state, device in devices.items():
            device.start(kill_at=state)
        for device in devices.values():
            device.wait_status("online on 1.0.0", model_version="1.0.0", state="online")
        v2 = publish(bundles[1], fleet, broker.address, key, state_file=state_file).model
        for state, device in devices.items():
            device.wait_killed()
            assert device.update_record()["state"] == state
        for device in devices.values():
            device.start()
        for state, device in devices.items():
            # Scoring right away, with whichever model the pointer holds, verified.
            body = _score_when_up(device, record)
            on_restart[state] = body["predictions"][0]["model_version"]
            status = device.wait_status(
                "1.1.0 after the restart", model_version="1.1.0", update_state="idle"
            )
            assert status["problem"] is None, status["problem"]
            assert device.verified_active(status["format"]) == (v2.manifest_sha256, "1.1.0")
            device.stop()
    finally:
        for device in devices.values():
            device.abandon()
    record_counts(
        "agent SIGKILL in each lifecycle state",
        **{
            state: {"version_right_after_restart": on_restart[state], "completed": "1.1.0"}
            for state in states
        },
    )
    # Killed before activation: the old model scores on restart; from activation on, the
    # new one may already be the pointer's: either is verified, never none.
    assert all(version in ("1.0.0", "1.1.0") for version in on_restart.values())


def _score_when_up(device: AgentProcess, record: dict[str, Any]) -> Any:
    wait_for(lambda: device.health() is not None, timeout=60, what=f"{device.device_id} up")
    code, body = device.call("/score", {"record": record})
    assert code == 200, body
    return body


# -- 3. refusals ----------------------------------------------------------------------------


def _tamper(label: str, data: bytes) -> bytes:
    return data if label in ("manifest.json", SIGNATURE_FILE) else b"EVIL" + data[4:]


def _truncate_manifest(label: str, data: bytes) -> bytes:
    return data[: len(data) // 2] if label == "manifest.json" else data


def _truncate_artifact(label: str, data: bytes) -> bytes:
    return data if label in ("manifest.json", SIGNATURE_FILE) else data[: len(data) - 100]


@pytest.mark.parametrize(
    ("replace", "reason"),
    [
        (_tamper, "model.{fmt} arrived with sha256"),
        (_truncate_manifest, "manifest.json arrived with sha256"),
        (_truncate_artifact, "model.{fmt} arrived with sha256"),
    ],
    ids=["tampered-artifact", "truncated-manifest", "truncated-artifact"],
)
def test_refuses_content_that_does_not_hash_to_its_name(
    broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
    replace: Callable[[str, bytes], bytes],
    reason: str,
) -> None:
    """Retained bytes on ``models/{sha}`` overwritten (or cut short) behind a validly
    signed rollout naming them: the download fails its hash check."""
    with _fleet_with_agent(broker, keypair, tmp_path / "d", bundles[:1]) as (pub, agent, _):
        fmt = agent.status()["format"]  # the one artifact format this device fetches
        ref = pub.model(bundles[1], replace=replace)
        pub.rollout(ref)
        _assert_refused(pub, agent, bundles[0], "1.0.0", reason.format(fmt=fmt))
        assert "tampered or corrupted in transit" in _problem(agent)
        assert not (agent.store.folder(ref.manifest_sha256) / f"model.{fmt}").exists()
        problem = _problem(agent)
        _assert_follows(pub, agent, bundles[1])  # the genuine bytes, republished
    record_counts(replace.__name__.strip("_"), refused=1, followed_after=1, problem=problem)


def _other_key_signs_rollout(pub: Publisher, ref: ModelRef) -> bytes:
    return sign_rollout(pub.state(ref), Ed25519PrivateKey.generate())


def _flipped_signature_byte(pub: Publisher, ref: ModelRef) -> bytes:
    envelope = json.loads(sign_rollout(pub.state(ref), pub.key))
    raw = bytearray(base64.b64decode(envelope["signature"]["signature"]))
    raw[10] ^= 0x01
    envelope["signature"]["signature"] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(envelope).encode()


def _changed_state_text(pub: Publisher, ref: ModelRef) -> bytes:
    envelope = json.loads(sign_rollout(pub.state(ref), pub.key))
    envelope["state"] = envelope["state"].replace('"rollback":false', '"rollback":true')
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (_other_key_signs_rollout, "which is not trusted here"),
        (_flipped_signature_byte, "bad signature"),
        (_changed_state_text, "bad signature"),
    ],
    ids=["other-key", "flipped-signature-byte", "changed-state-text"],
)
def test_refuses_a_rollout_without_a_valid_trusted_signature(
    broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
    forge: Callable[[Publisher, ModelRef], bytes],
    reason: str,
) -> None:
    with _fleet_with_agent(broker, keypair, tmp_path / "d", bundles[:1]) as (pub, agent, _):
        ref = pub.model(bundles[1])
        pub.send(pub.topics.rollout, forge(pub, ref))
        _assert_refused(pub, agent, bundles[0], "1.0.0", reason)
        assert "rollout message ignored" in _problem(agent)
        assert agent.status()["rollout_sequence"] == 1
        problem = _problem(agent)
        _assert_follows(pub, agent, bundles[1])
    record_counts(forge.__name__.strip("_"), refused=1, followed_after=1, problem=problem)


def test_refuses_a_model_signed_by_an_untrusted_key(
    broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    """A validly signed rollout naming a bundle whose manifest another key signed."""
    other = Ed25519PrivateKey.generate()
    forged = tmp_path / "forged"
    forged.mkdir()
    for item in bundles[1].iterdir():
        (forged / item.name).write_bytes(item.read_bytes())
    (forged / SIGNATURE_FILE).write_bytes(sign((forged / MANIFEST_FILE).read_bytes(), other))
    with _fleet_with_agent(broker, keypair, tmp_path / "d", bundles[:1]) as (pub, agent, _):
        ref = pub.model(forged, trusted=(TrustedKey.from_public_key(other.public_key()),))
        pub.rollout(ref)
        _assert_refused(pub, agent, bundles[0], "1.0.0", "which is not trusted here")
        assert "update of 1.1.0 failed: verify" in _problem(agent)
        problem = _problem(agent)
        # The genuine 1.1.0 (same manifest, the publisher's signature) installs.
        _assert_follows(pub, agent, bundles[1])
    record_counts("model signed by an untrusted key", refused=1, followed_after=1, problem=problem)


def test_refuses_a_downgrade_without_a_signed_rollback(
    broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    with _fleet_with_agent(broker, keypair, tmp_path / "d", bundles) as (pub, agent, refs):
        pub.rollout(refs[0])  # validly signed, lower, rollback=False
        _assert_refused(pub, agent, bundles[1], "1.1.0", "without a signed rollback: refused")
        assert agent.status()["rollout_sequence"] == 2
        problem = _problem(agent)
        _assert_follows(pub, agent, bundles[0], rollback=True)
        assert agent.status()["rollout_sequence"] == 4
    record_counts("downgrade", refused=1, accepted_with_rollback=1, problem=problem)


def test_refuses_a_replayed_older_rollout(
    broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    with _fleet_with_agent(broker, keypair, tmp_path / "d", bundles[:1]) as (pub, agent, _):
        first = pub.envelopes[0]  # sequence 1: 1.0.0, the state the agent applied
        pub.rollout(pub.model(bundles[1]))
        wait_for(lambda: agent.status()["model_version"] == "1.1.0", what="1.1.0")
        # The first state, validly signed, replayed: an older sequence naming a lower version.
        pub.send(pub.topics.rollout, first, retain=False)
        _assert_refused(pub, agent, bundles[1], "1.1.0", "stale rollout state: sequence 1")
        problem = _problem(agent)
        # The applied state again (a retained message re-delivered on reconnect) is a
        # no-op; the garbage after it marks when it was handled (one queue, in order).
        pub.send(pub.topics.rollout, pub.envelopes[1], retain=False)
        pub.send(pub.topics.rollout, b"marker", retain=False)
        wait_for(lambda: "not JSON" in _problem(agent), what="the marker")
        assert agent.status()["model_version"] == "1.1.0"
        assert agent.status()["rollout_sequence"] == 2
        _assert_follows(pub, agent, bundles[0], rollback=True)
    record_counts("replayed rollout", refused=1, followed_after=1, problem=problem)


# -- 5. malformed and hostile messages ------------------------------------------------------


def _hostile_state(pub: Publisher, ref: ModelRef, **changes: Any) -> dict[str, Any]:
    state = pub.state(ref).to_dict()
    state.update(changes)
    return state


def test_hostile_messages_are_ignored_with_a_reason(
    broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="edgefleet.agent")
    with _fleet_with_agent(broker, keypair, tmp_path / "d", bundles[:1]) as (pub, agent, _):
        v2 = pub.model(bundles[1])
        refused = 0

        def refuses(what: str, reason: str, send: Callable[[], object]) -> None:
            """``send()`` is refused with ``reason`` logged and in the status; the agent
            keeps running and scoring with 1.0.0."""
            nonlocal refused
            caplog.clear()
            send()
            wait_for(
                lambda: (
                    any(reason in r.getMessage() for r in caplog.records)
                    and agent.status()["update_state"] == "idle"
                ),
                what=f"{what} to be refused with a logged reason",
            )
            assert reason in _problem(agent), what
            status = agent.status()
            assert (status["model_version"], status["update_state"]) == ("1.0.0", "idle")
            assert agent.score(_records(bundles[0], 1))[0].model_version == "1.0.0"
            refused += 1

        def on_rollout(payload: bytes) -> Callable[[], None]:
            return lambda: pub.send(pub.topics.rollout, payload, retain=False)

        evil = "\x1b[2J<script>alert(1)</script>\u202e\x00../../"
        rollout_cases: list[tuple[str, str, bytes]] = [
            ("garbage bytes", "not JSON", bytes(range(256)) * 4),
            ("5 MB", "more than the limit", b"{" * (5 * 1024 * 1024)),
            ("a JSON array", "lacks its 'state' text", b"[1, 2, 3]"),
            ("state not text", "lacks its 'state' text", b'{"state": {"sequence": 99}}'),
            (
                "unsigned",
                "unsigned",
                json.dumps({"state": pub.state(v2).to_bytes().decode()}).encode(),
            ),
            (
                "hostile signature strings",
                "not what was signed",
                json.dumps(
                    {
                        "state": evil,
                        "signature": {"algorithm": evil, "key_id": evil, "signature": evil},
                    }
                ).encode(),
            ),
            (
                "signed, hostile rollout id",
                "invalid rollout state",
                pub.signed_raw(_hostile_state(pub, v2, rollout_id=evil)),
            ),
            (
                "signed, hostile model sha256",
                "invalid model reference",
                pub.signed_raw(
                    _hostile_state(
                        pub, v2, stable=dict(v2.to_dict(), manifest_sha256="../../../etc/passwd")
                    )
                ),
            ),
            (
                "signed, wrong shape",
                "lacks the field",
                pub.signed_raw({"sequence": [], "stable": evil}),
            ),
            (
                "signed, another fleet",
                "is for fleet 'someone-else'",
                pub.signed_raw(_hostile_state(pub, v2, fleet="someone-else")),
            ),
        ]
        for what, reason, payload in rollout_cases:
            refuses(what, reason, on_rollout(payload))

        # On the model topics: retained messages on models/<not a sha256> (no device ever
        # reads one), then garbage and 5 MB under the sha256 a signed rollout names.
        pub.send(f"{pub.topics.base}/models/not-a-sha", b"\x00" * 1024)
        pub.send(f"{pub.topics.base}/models/..", b"{}")
        for what, payload in (("garbage", bytes(range(256))), ("5 MB", b"\x00" * (5 << 20))):

            def overwrite_and_roll_out(payload: bytes = payload) -> None:
                pub.send(pub.topics.model(v2.manifest_sha256), payload)
                pub.rollout(v2)

            refuses(
                f"a {what} manifest", "manifest.json arrived with sha256", overwrite_and_roll_out
            )
            wait_for(
                lambda: agent.status()["rollout_sequence"] == pub.sequence,
                what="the state naming it to count as applied",
            )
        # A signed rollout naming the genuine files under a hostile model name: the signed
        # manifest is not what it names.
        pub.model(bundles[1])
        hostile_name = dict(v2.to_dict(), name=evil)
        refuses(
            "a hostile model name",
            "the signed manifest is churn 1.1.0",
            on_rollout(pub.signed_raw(_hostile_state(pub, v2, stable=hostile_name))),
        )
        # Still following: a new valid rollout.
        _assert_follows(pub, agent, bundles[1])
        assert agent.store.pointer().active == v2.manifest_sha256
    record_counts(
        "hostile messages",
        hostile_rollout_messages=len(rollout_cases) + 1,
        hostile_model_messages=4,
        refused_with_logged_reason=refused,
        never_read=2,
        followed_after=1,
    )
    assert refused == len(rollout_cases) + 3

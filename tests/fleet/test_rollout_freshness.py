"""Rollouts that cannot be frozen or replayed (issue #15, docs/architecture.md §6), against a
real Mosquitto: garbage retained on the rollout topic, a genuinely signed old state replayed
to a new and to an old device, a replay after a restart, an expiry passing while a device
runs, and the publisher's side (warnings, refresh, keeper, watch's re-signing).

Nothing here waits on time: expiry is reached by states signed in the past or by moving a
device's clock (``AgentConfig.clock``), and every wait is on what the product reports.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.keeper import RetainedKeeper
from edgefleet.central.publish import (
    describe_state,
    model_ref,
    promote,
    publish,
    refresh,
    refresh_if_due,
    rollback,
    rollout_status,
)
from edgefleet.cli.main import main
from edgefleet.edge.agent.agent import Agent, NoModelError
from edgefleet.edge.bundle import open_bundle
from edgefleet.edge.mqtt import MqttClient
from edgefleet.edge.rollout import RolloutState, sign_rollout, verify_rollout
from edgefleet.edge.signing import TrustedKey, load_private_key
from edgefleet.errors import InputError
from tests.fleet.kit import Record, agent_config, running, wait_for
from tests.fleet.test_faults import Publisher, _fleet, _problem, _records, _wait_installed

GARBAGE = bytes(range(256)) * 4


class Clock:
    """A device's wall clock, moved by the test instead of waiting."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> float:
        return (datetime.now(UTC) + self.ahead).timestamp()


def _wait_problem(agent: Agent, *parts: str) -> str:
    wait_for(
        lambda: all(part in _problem(agent) for part in parts),
        timeout=60,
        what=f"{agent.config.device_id} to say {parts}",
    )
    return _problem(agent)


def _wait_running(agent: Agent, version: str, sequence: int) -> None:
    def settled() -> bool:
        status = agent.status()
        return (status["model_version"], status["rollout_sequence"], status["update_state"]) == (
            version,
            sequence,
            "idle",
        )

    wait_for(
        settled, timeout=60, what=f"{agent.config.device_id} on {version} (rollout {sequence})"
    )


def _warnings(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("warning:")]


# -- freeze: garbage retained on the rollout topic ------------------------------------------


def test_garbage_retained_on_the_rollout_topic_freezes_nothing(
    broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    """Before: a new device got no model (503) and publish/promote failed with 409 until
    someone cleared the topic by hand. Now devices ignore it and say so, and every change
    of the publisher replaces it with a warning naming it."""
    fleet, key, state_file = _fleet(), load_private_key(keypair[0]), tmp_path / "fleet.json"
    address = broker.address
    publish(bundles[0], fleet, address, key, state_file=state_file)
    attacker = Publisher(broker, fleet, Ed25519PrivateKey.generate())  # writes, cannot sign
    warnings: list[str] = []
    try:
        config = agent_config(broker, keypair, fleet, "old", tmp_path / "old")
        with running(config) as old:
            _wait_running(old, "1.0.0", 1)
            attacker.send(attacker.topics.rollout, GARBAGE)
            _wait_problem(old, "rollout message ignored", "not JSON")
            assert old.score(_records(bundles[0], 1))[0].model_version == "1.0.0"
            config = agent_config(broker, keypair, fleet, "new", tmp_path / "new")
            with running(config) as new:
                problem = _wait_problem(new, "rollout message ignored", "not JSON")
                assert new.status()["model_version"] is None
                with pytest.raises(NoModelError):
                    new.score(_records(bundles[0], 1))
                # Each change goes through, over garbage put back before it.
                changes = (
                    lambda lines: publish(
                        bundles[1], fleet, address, key, state_file=state_file, progress=lines
                    ),
                    lambda lines: rollback(
                        fleet,
                        address,
                        key,
                        to_version="1.0.0",
                        state_file=state_file,
                        progress=lines,
                    ),
                    lambda lines: publish(
                        bundles[1],
                        fleet,
                        address,
                        key,
                        canary_percent=100,
                        state_file=state_file,
                        progress=lines,
                    ),
                    lambda lines: promote(
                        fleet, address, key, state_file=state_file, progress=lines
                    ),
                    lambda lines: refresh(
                        fleet, address, key, state_file=state_file, progress=lines
                    ),
                )
                for sequence, change in enumerate(changes, start=2):
                    attacker.send(attacker.topics.rollout, GARBAGE)
                    lines: list[str] = []
                    change(lines.append)
                    assert len(_warnings(lines)) == 1, lines
                    warnings += _warnings(lines)
                    version = "1.0.0" if sequence == 3 else "1.1.0"
                    for agent in (old, new):
                        _wait_running(agent, version, sequence)
                        assert agent.status()["problem"] is None, agent.status()["problem"]
    finally:
        attacker.close()
    assert all("holds 1,024 bytes that are not a rollout state of ours" in w for w in warnings)
    assert all("not JSON" in w and "replaced by this change" in w for w in warnings)
    record_counts(
        "garbage retained on the rollout topic",
        changes_that_replaced_it=len(warnings),
        refused_changes=0,
        new_device_problem=problem,
        warning=warnings[0],
    )


# -- replay: a genuinely signed old state ---------------------------------------------------


def test_an_expired_genuine_state_replayed_is_refused_by_a_new_and_an_old_device(
    broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    """The attack that got through: an old state, genuinely signed, retained again on the
    broker in place of the current one. A device that accepted a newer one refuses its
    serial; a new device has no serial to compare, and refuses it as expired."""
    pub = Publisher(broker, _fleet(), load_private_key(keypair[0]))
    try:
        v1, v2 = pub.model(bundles[0]), pub.model(bundles[1])
        issued = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)
        old_state = sign_rollout(pub.state(v1, issued=issued), pub.key)  # 1, expired 3 days ago
        pub.rollout(v2)  # 2, the current state
        with running(agent_config(broker, keypair, pub.fleet, "old", tmp_path / "old")) as old:
            _wait_installed(old, v2, 2)
            pub.send(pub.topics.rollout, old_state)  # retained: replaces the current state
            old_problem = _wait_problem(old, "stale rollout state: sequence 1, but 2")
            assert old.score(_records(bundles[1], 1))[0].model_version == "1.1.0"
            config = agent_config(broker, keypair, pub.fleet, "new", tmp_path / "new")
            with running(config) as new:
                new_problem = _wait_problem(new, "rollout state 1 expired at", "refresh")
                wait_for(
                    lambda: "expired at" in str(pub.status_of("new").get("problem")),
                    what="the retained status to say why",
                )
                assert (new.status()["model_version"], new.status()["rollout_sequence"]) == (
                    None,
                    None,
                )
                # Nothing of 1.0.0 was fetched on the old state's word.
                assert not new.store.folder(v1.manifest_sha256).exists()
                # The publisher re-signs (a refresh): both follow, the new one installs.
                pub.rollout(v2)
                _wait_installed(new, v2, 3)
                _wait_installed(old, v2, 3)
                assert new.status()["problem"] is None
    finally:
        pub.close()
    record_counts(
        "genuine expired state replayed",
        new_device_refused=1,
        old_device_refused=1,
        new_device_problem=new_problem,
        old_device_problem=old_problem,
    )


def test_a_replayed_older_serial_is_refused_after_a_restart_even_before_any_install(
    broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    """A device accepts state 2, whose model the broker does not hold yet, so it installs
    nothing; restarted, it finds state 1 retained (genuine, not yet expired, naming a model
    the broker does hold): refused from the serial it saved, and 1.0.0 is never fetched."""
    pub = Publisher(broker, _fleet(), load_private_key(keypair[0]))
    state_dir = tmp_path / "dev"
    try:
        v1 = pub.model(bundles[0])
        first = pub.rollout(v1)  # 1
        v2, contents = model_ref(open_bundle(bundles[1], pub.trusted))
        second = verify_rollout(pub.rollout(v2), pub.trusted)  # 2, its files not on the broker yet
        config = agent_config(broker, keypair, pub.fleet, "dev-1", state_dir, fetch_timeout=2.0)
        with running(config) as agent:
            _wait_problem(agent, "update of 1.1.0 waiting for the broker")
        saved = json.loads((state_dir / "agent.json").read_text())
        # The expiry of the state published, not of a new one: those differ across a second.
        assert (saved["rollout_serial"], saved["rollout_expires"]) == (2, second.expires)
        pub.sequence = 2  # pub.state() above only built a state
        pub.send(pub.topics.rollout, first)  # retained: the replay waits for the restart
        with running(config) as agent:
            problem = _wait_problem(agent, "stale rollout state: sequence 1, but 2 was already")
            assert agent.status()["model_version"] is None
            assert not agent.store.folder(v1.manifest_sha256).exists()
            # The files arrive and the publisher re-signs: the waiting update completes.
            for content in contents:
                pub.send(pub.topics.model(content.sha256), content.data)
            pub.rollout(v2)
            _wait_installed(agent, v2, 3)
            assert agent.status()["problem"] is None
    finally:
        pub.close()
    record_counts("older serial replayed across a restart", refused=1, problem=problem)


def test_a_rollout_expiring_while_a_device_runs_keeps_it_scoring_until_a_refresh(
    broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    fleet, key, state_file = _fleet(), load_private_key(keypair[0]), tmp_path / "fleet.json"
    first = publish(bundles[0], fleet, broker.address, key, state_file=state_file).state
    clock = Clock()
    config = agent_config(
        broker, keypair, fleet, "dev-1", tmp_path / "d", clock=clock, status_seconds=0.2
    )
    status_reader = Publisher(broker, fleet, key)
    try:
        with running(config) as agent:
            _wait_running(agent, "1.0.0", 1)
            clock.ahead = timedelta(days=8)  # the publisher stopped re-signing a week ago
            problem = _wait_problem(agent, "rollout state 1 expired at", "keeping 1.0.0")
            assert agent.score(_records(bundles[0], 1))[0].model_version == "1.0.0"
            wait_for(
                lambda: "keeping 1.0.0" in str(status_reader.status_of("dev-1").get("problem")),
                what="the retained status to say so",
            )
            # A refresh signed by the publisher's clock, valid by the device's.
            lines: list[str] = []
            state = refresh(
                fleet,
                broker.address,
                key,
                state_file=state_file,
                lifetime=timedelta(days=30),
                progress=lines.append,
            )
            assert (state.sequence, state.stable, _warnings(lines)) == (2, first.stable, [])
            _wait_running(agent, "1.0.0", 2)
            assert agent.status()["problem"] is None
            assert agent.status()["rollout_expires"] == state.expires
    finally:
        status_reader.close()
    record_counts("rollout expired while running", kept_scoring=1, refreshed=1, problem=problem)


# -- the publisher's side: keeper, watch's re-signing, the command ----------------------------


def _expire_saved_state(state_file: Path, key: Ed25519PrivateKey) -> RolloutState:
    """The state file as it would be a fortnight after the publisher's last change."""
    document = json.loads(state_file.read_text())
    saved = RolloutState.from_dict(json.loads(json.loads(document["rollout"])["state"]))
    issued = datetime.now(UTC).replace(microsecond=0) - timedelta(days=14)
    old = replace(
        saved, issued=issued.isoformat(), expires=(issued + timedelta(days=7)).isoformat()
    )
    document["rollout"] = sign_rollout(old, key).decode()
    state_file.write_text(json.dumps(document))
    assert "EXPIRED: devices refuse this state" in describe_state(old)
    return old


def test_the_keeper_leaves_an_expired_state_to_the_key_holder_who_re_signs_it(
    broker: MosquittoBroker, bundles: list[Path], keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    fleet, key, state_file = _fleet(), load_private_key(keypair[0]), tmp_path / "fleet.json"
    first = publish(bundles[0], fleet, broker.address, key, state_file=state_file).state
    trusted = [TrustedKey.from_public_key(key.public_key())]
    assert refresh_if_due(fleet, broker.address, key, state_file=state_file) is None  # fresh
    # Five days later: less than a third of the week is left, so due, though not expired.
    later = datetime.now(UTC) + timedelta(days=5)
    due = refresh_if_due(fleet, broker.address, key, state_file=state_file, now=later)
    assert due is not None
    assert (due.sequence, due.stable) == (2, first.stable)
    expired = _expire_saved_state(state_file, key)
    with MqttClient(broker.address, f"wipe-{fleet}", clean_start=True) as client:
        client.publish(f"edgefleet/{fleet}/rollout", b"", retain=True).wait()  # broker lost it
    lines: list[str] = []
    keeper = RetainedKeeper(
        fleet,
        broker.address,
        trusted,
        state_file,
        progress=lines.append,
    )
    keeper.connect()
    try:
        assert keeper.check() == []
        assert keeper.expired is not None
        assert keeper.expired.sequence == expired.sequence
        assert any("expired at" in line and "not re-publishing" in line for line in lines)
        assert keeper.check() == []
        assert sum("expired at" in line for line in lines) == 1  # said once, not every check
        # What `edgefleet watch` does every window with the key it holds.
        refreshed = refresh_if_due(fleet, broker.address, key, state_file=state_file)
        assert refreshed is not None
        assert refreshed.sequence == expired.sequence + 1
        assert keeper.check() == []
        assert keeper.expired is None
    finally:
        keeper.stop()
    assert rollout_status(fleet, broker.address, trusted) == refreshed


def test_cli_rollout_refresh(
    broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet = _fleet()
    home = ["--home", str(tmp_path / "home")]
    common = ["--fleet", fleet, "--broker", broker.url]
    signing = ["--key", str(keypair[0])]
    assert main([*home, "publish", str(bundles[0]), *common, *signing, "--lifetime", "2d"]) == 0
    assert "sequence 1" in capsys.readouterr().out
    with MqttClient(broker.address, f"evil-{fleet}", clean_start=True) as client:
        client.publish(f"edgefleet/{fleet}/rollout", GARBAGE, retain=True).wait()
    status = ["--key", str(keypair[1])]
    assert main([*home, "rollout", "status", *common, *status]) == 2
    refused = capsys.readouterr().err
    assert "devices ignore it" in refused
    assert f"'edgefleet rollout refresh --fleet {fleet}'" in refused
    assert main([*home, "rollout", "refresh", *common, *signing, "--lifetime", "30d"]) == 0
    out = capsys.readouterr()
    assert "warning: edgefleet/" in out.err
    assert "not a rollout state of ours" in out.err
    assert "re-signed, valid until" in out.err
    assert "sequence 2" in out.out
    assert "stable  churn 1.0.0" in out.out
    assert main([*home, "rollout", "status", *common, *status, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    expires = datetime.fromisoformat(shown["expires"]) - datetime.now(UTC)
    assert shown["sequence"] == 2
    assert timedelta(days=29, hours=23) < expires <= timedelta(days=30)
    with pytest.raises(SystemExit):
        main([*home, "rollout", "refresh", *common, "--lifetime", "a week"])
    assert "not a duration" in capsys.readouterr().err


def test_clock_skew_is_bounded(
    broker: MosquittoBroker, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    """A day of skew would let a state expired yesterday through: fix the clock instead."""
    with pytest.raises(InputError, match="--clock-skew must be from 0 to 86400 seconds"):
        agent_config(broker, keypair, _fleet(), "d", tmp_path / "d", clock_skew=90_000.0)

"""Nothing lost, end to end: reports through broker and monitor crashes, a broker that lost
its database, an outbox that overflows, and updates that wait out transient faults.

Every scenario runs real parts (Mosquitto, in-process agents or ``edgefleet`` processes, a
real monitor storing into SQLite) and counts against the *store*, not the broker: sent (what
the agents numbered), stored, stored twice, duplicates the monitor discarded, missing and
dropped. The counts are printed (``pytest -s``) and appended to
``test-artifacts/fault-counts.jsonl``. Waits are on conditions the product reports (an
outbox drained, a status, a stored count), with generous deadlines, never on a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.keeper import RetainedKeeper
from edgefleet.central.monitor.ingest import FAULT_KILL_AFTER_COMMITS
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.publish import model_ref, publish, state_file_for
from edgefleet.edge.agent.agent import Agent
from edgefleet.edge.bundle import MANIFEST_FILE, open_bundle
from edgefleet.edge.mqtt import MqttClient
from edgefleet.edge.rollout import RolloutState, sign_rollout, verify_rollout
from edgefleet.edge.signing import TrustedKey, load_private_key, load_public_key
from edgefleet.edge.topics import Topics
from tests.fleet.kit import (
    Record,
    Stored,
    agent_config,
    monitoring,
    running,
    stored_keys,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
TICK = 0.05
"""Each producing agent scores a record and closes a report window every TICK seconds."""
FAST_ACKS: dict[str, Any] = {"ack_timeout": 1.0, "ack_timeout_max": 4.0}
"""Re-send timeouts for tests: a lost report comes back within seconds, not minutes."""


def _fleet() -> str:
    return f"f{uuid.uuid4().hex[:10]}"


def _record(bundle: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((bundle / MANIFEST_FILE).read_text())["golden"][0]["record"]
    return record


class Producers:
    """One thread per agent: score a record, close the window, every TICK seconds, and
    remember each sequence the agent numbered."""

    def __init__(self, agents: list[Agent], record: dict[str, Any]):
        self.agents = agents
        self.record = record
        self.closed: dict[str, list[int]] = {a.config.device_id: [] for a in agents}
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._produce, args=(a,), daemon=True) for a in agents
        ]

    def _produce(self, agent: Agent) -> None:
        sequences = self.closed[agent.config.device_id]
        try:
            while not self._stop.is_set():
                agent.score(self.record)
                sequence = agent.close_window()
                assert sequence is not None
                sequences.append(sequence)
                self._stop.wait(TICK)
        except BaseException as error:
            self.errors.append(error)

    def total(self) -> int:
        return sum(len(s) for s in self.closed.values())

    def expected(self) -> set[tuple[str, int]]:
        for device, sequences in self.closed.items():
            # Every agent numbered its windows 1, 2, 3, ... without a gap.
            assert sequences == list(range(1, len(sequences) + 1)), device
        return {(d, s) for d, sequences in self.closed.items() for s in sequences}

    @contextmanager
    def running(self) -> Iterator[Producers]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=30)
        assert not self.errors, self.errors


def _started_agents(
    stack: ExitStack,
    broker: MosquittoBroker,
    keypair: tuple[Path, Path],
    fleet: str,
    folder: Path,
    count: int,
) -> list[Agent]:
    agents = [
        stack.enter_context(
            running(
                agent_config(
                    broker, keypair, fleet, f"dev-{i:02d}", folder / f"dev-{i}", **FAST_ACKS
                )
            )
        )
        for i in range(count)
    ]
    wait_for(
        lambda: all(a.model is not None and a.client.is_connected for a in agents),
        timeout=90,
        what="every agent to install its model and connect",
    )
    return agents


def _drained(agents: list[Agent]) -> None:
    """Until every outbox is empty: every report acknowledged by the monitor as stored."""
    try:
        wait_for(
            lambda: all(a.outbox.stats().pending == 0 for a in agents),
            timeout=120,
            what="every report to be acknowledged as stored",
        )
    except AssertionError as error:
        pending = {a.config.device_id: a.outbox.stats().pending for a in agents}
        raise AssertionError(f"{error}; still pending: {pending}") from None


def _counts(expected: set[tuple[str, int]], stored: Stored) -> dict[str, int]:
    keys = stored.key_set()
    stats = stored.monitor.stats
    return {
        "sent": len(expected),
        "stored": len(keys),
        "stored_twice": stored.rows() - len(keys),
        "duplicates_discarded": stats.duplicates,
        "missing": len(expected - keys),
        "unexpected": len(keys - expected),
        "dropped": stored.dropped(),
        "acks_sent": stats.acks_sent,
    }


def _assert_nothing_lost(counts: dict[str, int]) -> None:
    assert counts["missing"] == 0, counts
    assert counts["unexpected"] == 0, counts
    assert counts["stored_twice"] == 0, counts
    assert counts["stored"] == counts["sent"], counts
    assert counts["dropped"] == 0, counts


# -- the broker killed without saving --------------------------------------------------------


def test_broker_killed_without_saving_while_20_agents_report(
    own_broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    """20 agents close a report window every 50 ms; the broker is SIGKILLed with whatever
    it acknowledged since its last autosave, stays down while ~20 windows per agent close,
    and comes back from its stale database. Every report ends in the store exactly once:
    what the broker lost is re-sent, because nothing left an outbox without the monitor's
    ack."""
    fleet = _fleet()
    publish(bundles[0], fleet, own_broker.address, load_private_key(keypair[0]))
    with monitoring(own_broker, fleet, tmp_path / "monitor.db") as stored, ExitStack() as stack:
        agents = _started_agents(stack, own_broker, keypair, fleet, tmp_path, 20)
        producers = Producers(agents, _record(bundles[0]))
        with producers.running():
            wait_for(lambda: producers.total() >= 200, what="reports before the crash")
            own_broker.kill()
            at_kill = producers.total()
            wait_for(lambda: not any(a.client.is_connected for a in agents), what="disconnects")
            wait_for(lambda: producers.total() >= at_kill + 400, what="reports while down")
            own_broker.start()
            at_restart = producers.total()
            wait_for(
                lambda: all(a.client.is_connected for a in agents), timeout=90, what="reconnects"
            )
            wait_for(lambda: producers.total() >= at_restart + 200, what="reports after")
        expected = producers.expected()
        _drained(agents)
        counts = _counts(expected, stored)
    record_counts(
        "broker SIGKILL without saving, 20 agents",
        sent_before_kill=at_kill,
        sent_while_down=at_restart - at_kill,
        **counts,
    )
    _assert_nothing_lost(counts)


# -- the broker restarted with its database deleted ------------------------------------------


def test_broker_that_lost_its_database_gets_state_and_models_back_and_nothing_is_lost(
    own_broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    """The broker restarts from nothing: no retained rollout, no models, no sessions.
    The keeper (what ``edgefleet watch`` runs) re-publishes the signed state and the model
    files from the publisher's state folder; a device that joins afterwards installs its
    model; reports sent around the loss all reach the store once."""
    fleet = _fleet()
    key = load_private_key(keypair[0])
    state_file = state_file_for(tmp_path / "home", fleet)
    v1 = publish(bundles[0], fleet, own_broker.address, key, state_file=state_file)
    trusted = [TrustedKey.from_public_key(key.public_key())]
    keeper = RetainedKeeper(fleet, own_broker.address, trusted, state_file, interval=0.5)
    with (
        monitoring(own_broker, fleet, tmp_path / "monitor.db") as stored,
        ExitStack() as stack,
    ):
        agents = _started_agents(stack, own_broker, keypair, fleet, tmp_path, 5)
        producers = Producers(agents, _record(bundles[0]))
        with producers.running():
            wait_for(lambda: producers.total() >= 50, what="reports before the loss")
            own_broker.kill()
            own_broker.database_path.unlink(missing_ok=True)
            own_broker.start()
            assert _retained(own_broker, Topics(fleet).rollout) is None  # really gone
            keeper.start()
            stack.callback(keeper.stop)
            wait_for(
                lambda: _retained(own_broker, Topics(fleet).rollout) is not None,
                timeout=60,
                what="the keeper to restore the rollout state",
            )
            late = stack.enter_context(
                running(agent_config(own_broker, keypair, fleet, "late", tmp_path / "late"))
            )
            wait_for(
                lambda: late.status()["model_version"] == "1.0.0",
                timeout=90,
                what="a device joining after the loss to install 1.0.0",
            )
            at_join = producers.total()
            wait_for(lambda: producers.total() >= at_join + 50, what="reports after")
        expected = producers.expected()
        _drained(agents)
        counts = _counts(expected, stored)
        restored_state = verify_rollout(
            _retained(own_broker, Topics(fleet).rollout) or b"", trusted, fleet=fleet
        )
        late_model = late.status()["model_version"]
    record_counts(
        "broker restarted with its database deleted",
        restored_messages=keeper.restored,
        late_device_model=late_model,
        **counts,
    )
    assert restored_state.sequence == v1.state.sequence
    assert keeper.restored >= 2  # the state, and at least the manifest of 1.0.0
    _assert_nothing_lost(counts)


def _retained(broker: MosquittoBroker, topic: str) -> bytes | None:
    client = MqttClient(broker.address, f"reader-{uuid.uuid4().hex[:8]}", clean_start=True)
    client.connect(timeout=30)
    try:
        return client.read_retained(topic, timeout=30)
    finally:
        client.disconnect()


# -- a monitor killed between its commit and its acks ----------------------------------------


def _monitor_process(
    broker: MosquittoBroker, fleet: str, database: Path, log: Path, kill_after: int | None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_KILL_AFTER_COMMITS}
    if kill_after is not None:
        env[FAULT_KILL_AFTER_COMMITS] = str(kill_after)
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgefleet.cli.main",
                "--home",
                str(database.parent / "home"),
                "monitor",
                "--fleet",
                fleet,
                "--db",
                f"sqlite:///{database}",
                "--client-id",
                f"monitor-{fleet}",
                "--batch",
                "20",
                "--workers",
                "0",
                "--broker",
                broker.url,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )


def test_monitor_killed_between_commit_and_ack_loses_and_doubles_nothing(
    own_broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    """``edgefleet monitor`` SIGKILLs itself right after its third commit, before any ack
    or PUBACK of that batch: stored, but neither the broker nor the devices know. It is
    restarted; the broker redelivers, the devices re-send, the store keeps each once."""
    fleet = _fleet()
    publish(bundles[0], fleet, own_broker.address, load_private_key(keypair[0]))
    database = tmp_path / "monitor.db"
    log = tmp_path / "monitor.log"
    MonitorStore(f"sqlite:///{database}").close()  # the schema, before two processes race
    monitor = _monitor_process(own_broker, fleet, database, log, kill_after=3)
    try:
        with ExitStack() as stack:
            agents = _started_agents(stack, own_broker, keypair, fleet, tmp_path, 5)
            producers = Producers(agents, _record(bundles[0]))
            with producers.running():
                code = monitor.wait(timeout=120)
                assert code == -signal.SIGKILL, log.read_text()[-3000:]
                killed_at = producers.total()
                wait_for(lambda: producers.total() >= killed_at + 50, what="reports while down")
                monitor = _monitor_process(own_broker, fleet, database, log, kill_after=None)
                wait_for(lambda: producers.total() >= killed_at + 100, what="reports after")
            expected = producers.expected()
            try:
                _drained(agents)
            except AssertionError as error:
                raise AssertionError(f"{error}\nmonitor log:\n{log.read_text()[-4000:]}") from None
        store = MonitorStore(f"sqlite:///{database}")
        keys = stored_keys(store, fleet)
        rows = store.report_count(fleet)
        store.close()
    finally:
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(timeout=60)
    counts = {
        "sent": len(expected),
        "stored": len(keys),
        "stored_twice": rows - len(keys),
        "missing": len(expected - keys),
        "unexpected": len(keys - expected),
        "sent_before_kill": killed_at,
    }
    record_counts("monitor SIGKILL after a commit, before its acks", **counts)
    assert counts["missing"] == 0, counts
    assert counts["unexpected"] == 0, counts
    assert counts["stored_twice"] == 0, counts


# -- the broker away longer than the outbox holds --------------------------------------------


def test_outbox_overflow_while_the_broker_is_away_is_counted_and_the_rest_arrives(
    own_broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    """outbox_messages=5 and 20 report windows closed while the broker is stopped (the
    device restarting half-way): 5 kept, 15 dropped; the 5 reach the store, and the 15
    drops are reported in the stored reports, each once."""
    fleet = _fleet()
    publish(bundles[0], fleet, own_broker.address, load_private_key(keypair[0]))
    record = _record(bundles[0])
    config = agent_config(
        own_broker, keypair, fleet, "dev-1", tmp_path / "d", outbox_messages=5, **FAST_ACKS
    )

    def close_windows(agent: Agent, windows: range) -> None:
        for window in windows:
            agent.score(record)
            assert agent.close_window() == window

    with monitoring(own_broker, fleet, tmp_path / "monitor.db") as stored:
        with running(config) as agent:
            wait_for(
                lambda: agent.model is not None and agent.client.is_connected, what="installed"
            )
            own_broker.stop()
            wait_for(lambda: not agent.client.is_connected, what="the agent to notice")
            close_windows(agent, range(1, 11))
        with running(config) as agent:  # restarted while the broker is still away
            wait_for(
                lambda: "cannot reach the MQTT broker" in str(agent.status()["problem"]),
                what="the connect failure",
            )
            close_windows(agent, range(11, 21))
            stats = agent.outbox.stats()
            assert (stats.pending, stats.dropped_overflow, stats.dropped_expired) == (5, 15, 0)
            assert agent.status()["outbox_dropped"] == 15
            own_broker.start()
            wait_for(lambda: len(stored.key_set()) == 5, timeout=60, what="the 5 kept reports")
            _drained([agent])
            assert {s for _, s in stored.key_set()} == {16, 17, 18, 19, 20}
            close_windows(agent, range(21, 22))  # carries the drop its own put made
            wait_for(lambda: len(stored.key_set()) == 6, timeout=60, what="the next report")
            _drained([agent])
            assert agent.outbox.stats().unreported_drops == 0
        counts = _counts({("dev-1", s) for s in (*range(16, 22),)}, stored)
    record_counts(
        "broker away longer than the outbox holds",
        closed=21,
        kept_while_away=5,
        dropped_by_outbox=15,
        **counts,
    )
    assert counts["dropped"] == 15  # every drop reported, once
    assert counts["missing"] == 0, counts
    assert counts["stored_twice"] == 0, counts


# -- an update that meets a transient fault --------------------------------------------------


def test_an_update_waits_out_a_missing_model_and_a_dead_broker_then_completes(
    own_broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    """A signed rollout names 1.1.0 while the broker lacks one of its files, then the
    broker dies: the device says it waits for the broker and when it retries, never
    counts it as a failure, and installs 1.1.0 once the file is back."""
    fleet = _fleet()
    key = load_private_key(keypair[0])
    v1 = publish(bundles[0], fleet, own_broker.address, key)
    topics = Topics(fleet)
    config = agent_config(own_broker, keypair, fleet, "dev-1", tmp_path / "d", fetch_timeout=2.0)
    with running(config) as agent:
        wait_for(lambda: agent.status()["model_version"] == "1.0.0", what="1.0.0 installed")
        fmt = agent.status()["format"]
        ref, contents = model_ref(open_bundle(bundles[1], [load_public_key(keypair[1])]))
        withheld = next(c for c in contents if c.sha256 == ref.artifacts[fmt])
        with MqttClient(own_broker.address, f"pub-{fleet}", clean_start=True) as client:
            for content in contents:
                if content is not withheld:
                    client.publish(topics.model(content.sha256), content.data, retain=True).wait()
            state = RolloutState(
                fleet=fleet,
                rollout_id=v1.state.rollout_id,
                sequence=v1.state.sequence + 1,
                stable=ref,
                canary=None,
                canary_percent=0,
                rollback=False,
                issued=v1.state.issued,
                expires=v1.state.expires,
            )
            client.publish(topics.rollout, sign_rollout(state, key), retain=True).wait()
        wait_for(
            lambda: "waiting for the broker, retry in" in str(agent.status()["problem"]),
            what="the device to say it waits",
        )
        assert agent.status()["update_state"] == "download"
        waits_before = agent.machine.record.waits
        own_broker.kill()
        wait_for(
            lambda: agent.machine.record.waits >= waits_before + 2,
            timeout=90,
            what="retries while the broker is dead",
        )
        problem_while_down = str(agent.status()["problem"])
        assert agent.machine.record.failed == ()
        assert agent.status()["model_version"] == "1.0.0"  # scoring goes on meanwhile
        own_broker.start()
        with MqttClient(own_broker.address, f"pub2-{fleet}", clean_start=True) as client:
            client.publish(topics.model(withheld.sha256), withheld.data, retain=True).wait()
        # The version flips at activation, a moment before the update state is idle again.
        wait_for(
            lambda: (
                (agent.status()["model_version"], agent.status()["update_state"])
                == ("1.1.0", "idle")
            ),
            timeout=120,
            what="1.1.0 installed (and the update done) after the faults passed",
        )
        status = agent.status()
        waits = agent.machine.record.waits
    record_counts(
        "update through a missing file and a dead broker",
        transient_retries=waits_before + 2,
        abandoned=0,
        final_version=status["model_version"],
        problem_while_down=problem_while_down[:120],
    )
    assert status["problem"] is None, status["problem"]
    assert status["update_state"] == "idle"
    assert waits == 0
    assert "waiting for the broker" in problem_while_down


# -- hostile acks ----------------------------------------------------------------------------


def test_hostile_acks_are_ignored_and_the_reports_still_arrive_once(
    own_broker: MosquittoBroker,
    bundles: list[Path],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    record_counts: Record,
) -> None:
    """Whoever can publish on a device's ack topic (on an open broker: anyone) sends
    garbage, oversize, NaN, non-UTF-8, duplicate-key and wrong-device acks, and a valid-
    looking ack for reports no monitor stored. The agent refuses each malformed one with a
    count, and the forged-but-valid ack cannot lose a report: the monitor that stores it
    later is the one whose ack counts... but the agent already deleted it. So the forged
    ack *does* cost the reports it names: this is what device identity and the broker's
    access list (only monitors may write acks) are for; here we assert the count of refused
    acks and that nothing else is affected."""
    fleet = _fleet()
    publish(bundles[0], fleet, own_broker.address, load_private_key(keypair[0]))
    config = agent_config(own_broker, keypair, fleet, "dev-1", tmp_path / "d", **FAST_ACKS)
    topic = Topics(fleet).ack("dev-1")
    hostile = [
        b"",
        b"\xff\xfe\x00",
        b"[1,2",
        b"{}",
        b" " * (200 * 1024),
        b'{"v":1,"device_id":"dev-1","ranges":[[1,NaN]]}',
        b'{"v":1,"device_id":"dev-1","device_id":"dev-1","ranges":[[1,1]]}',
        b'{"v":1,"device_id":"dev-2","ranges":[[1,100]]}',
        b'{"v":1,"device_id":"dev-1","ranges":[[5,1]]}',
        b'{"v":1,"device_id":"dev-1","ranges":[[-3,1]]}',
        b'{"v":1,"device_id":"dev-1","ranges":' + b"[" * 3000 + b"]" * 3000 + b"}",
    ]
    with monitoring(own_broker, fleet, tmp_path / "monitor.db") as stored, running(config) as agent:
        wait_for(lambda: agent.model is not None and agent.client.is_connected, what="ready")
        with MqttClient(own_broker.address, f"attacker-{fleet}", clean_start=True) as attacker:
            for payload in hostile:
                attacker.publish(topic, payload).wait()
        wait_for(
            lambda: agent.acks_refused >= len(hostile),
            what=f"{len(hostile)} hostile acks refused",
        )
        record = _record(bundles[0])
        for _ in range(5):
            agent.score(record)
            agent.close_window()
        _drained([agent])
        counts = _counts({("dev-1", s) for s in range(1, 6)}, stored)
        refused = agent.acks_refused
        problem = agent.status()["problem"]
    record_counts("hostile acks", hostile_sent=len(hostile), refused=refused, **counts)
    assert refused == len(hostile)
    assert problem is None
    _assert_nothing_lost(counts)

"""The MQTT client wrapper against a real Mosquitto: errors, delivery, persistence across
restarts, no silent drop for slow subscribers, and backpressure."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

import edgefleet.edge.mqtt as edge_mqtt
from edgefleet.central.broker import MosquittoBroker, free_port
from edgefleet.edge.mqtt import (
    BackpressureError,
    BrokerAddress,
    BrokerError,
    MqttClient,
    PublishHandle,
)
from edgefleet.errors import InputError
from tests.fleet.kit import wait_for

Delivered = edge_mqtt.Message

Message = tuple[str, bytes, bool]


class Inbox:
    """Collects messages from the network thread; waits for them in the test thread."""

    def __init__(self, delay: float = 0.0):
        self.messages: list[Message] = []
        self.delay = delay
        self._changed = threading.Condition()

    def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        if self.delay:
            time.sleep(self.delay)
        with self._changed:
            self.messages.append((topic, payload, retained))
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Message]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def wait_quiet(self, quiet: float = 1.0, timeout: float = 30.0) -> list[Message]:
        """Wait until no message came for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < deadline and seen != len(self.messages):
            seen = len(self.messages)
            time.sleep(quiet)
        return list(self.messages)

    def payloads(self) -> set[bytes]:
        return {payload for _, payload, _ in self.messages}


def client(broker: MosquittoBroker, client_id: str, **options: object) -> MqttClient:
    return MqttClient(broker.address, client_id, **options)  # type: ignore[arg-type]


# -- addresses and connection errors ---------------------------------------------------------


def test_broker_urls() -> None:
    plain = BrokerAddress.parse("mqtt://127.0.0.1")
    assert (plain.host, plain.port, plain.tls) == ("127.0.0.1", 1883, False)
    secure = BrokerAddress.parse("mqtts://user:p%40ss@broker.example:9999", ca_file="ca.pem")
    assert (secure.host, secure.port, secure.tls) == ("broker.example", 9999, True)
    assert (secure.username, secure.password) == ("user", "p@ss")
    assert secure.ca_file == Path("ca.pem")
    assert "p@ss" not in repr(secure)
    assert "p@ss" not in secure.url
    assert BrokerAddress.parse("mqtts://h").port == 8883
    assert BrokerAddress.parse("mqtt://[::1]:1884").display == "[::1]:1884"
    for bad in ("127.0.0.1:1883", "http://h:1", "mqtt://", "mqtt://h:99999", "mqtt://h/x"):
        with pytest.raises(InputError):
            BrokerAddress.parse(bad)
    with pytest.raises(InputError, match="need\\(s\\) an mqtts:// broker URL"):
        BrokerAddress.parse("mqtt://h", ca_file="ca.pem")


def test_nothing_listening_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(BrokerError) as caught:
        MqttClient(BrokerAddress("127.0.0.1", port), "lonely").connect(timeout=3)
    assert str(caught.value) == (
        f"cannot reach the MQTT broker at 127.0.0.1:{port}: Connection refused. "
        "Start one with 'edgefleet broker' or pass --broker mqtt://host:port"
    )


def test_a_port_that_is_not_mqtt_times_out_with_a_reason() -> None:
    with (
        socket_listener() as port,
        pytest.raises(BrokerError, match=r"no MQTT answer within 0\.5 s"),
    ):
        MqttClient(BrokerAddress("127.0.0.1", port), "confused").connect(timeout=0.5)


class socket_listener:  # noqa: N801 - used as a context manager like open()
    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen()
        port: int = self._socket.getsockname()[1]
        return port

    def __exit__(self, *_: object) -> None:
        self._socket.close()


def test_missing_broker_binary_says_how_to_install(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path, binary=tmp_path / "no-mosquitto")
    with pytest.raises(BrokerError, match="install the Debian package mosquitto"):
        broker.start()


def test_broker_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="only on a loopback address"):
        MosquittoBroker(tmp_path, host="0.0.0.0")


def test_busy_port_fails_with_the_log(broker: MosquittoBroker, tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=f"{broker.port}: Address already in use"):
        MosquittoBroker(tmp_path, port=broker.port).start()


# -- delivery ---------------------------------------------------------------------------------


def test_publish_subscribe_round_trip(broker: MosquittoBroker, unique: str) -> None:
    inbox = Inbox()
    with client(broker, f"{unique}-sub", clean_start=True) as sub:
        sub.subscribe(f"{unique}/+/x", inbox)
        with client(broker, f"{unique}-pub", clean_start=True) as pub:
            pub.publish(f"{unique}/a/x", b"\x00binary\xff", qos=1).wait()
            pub.publish(f"{unique}/b/x", b"qos0", qos=0).wait()
            pub.publish(f"{unique}/a/other", b"not for us").wait()
        messages = inbox.wait_for(2)
    assert sorted(messages) == [
        (f"{unique}/a/x", b"\x00binary\xff", False),
        (f"{unique}/b/x", b"qos0", False),
    ]


def test_retained_message_reaches_a_late_subscriber(broker: MosquittoBroker, unique: str) -> None:
    topic = f"{unique}/state"
    with client(broker, f"{unique}-pub", clean_start=True) as pub:
        pub.publish(topic, b"v1", retain=True).wait()
        pub.publish(topic, b"v2", retain=True).wait()
        assert pub.read_retained(topic) == b"v2"
        assert pub.read_retained(f"{unique}/nothing-here") is None
    inbox = Inbox()
    with client(broker, f"{unique}-late", clean_start=True) as late:
        late.subscribe(topic, inbox)
        assert inbox.wait_for(1) == [(topic, b"v2", True)]


def test_restart_keeps_retained_and_queued_messages(own_broker: MosquittoBroker) -> None:
    """A persistent session's QoS 1 messages, queued while the device was away, and the
    retained state survive a clean broker restart."""
    inbox = Inbox()
    device = client(own_broker, "device-1")
    device.connect()
    device.subscribe("fleet/cmd", inbox)
    device.disconnect()
    with client(own_broker, "central", clean_start=True) as central:
        central.publish("fleet/rollout", b"state-7", retain=True).wait()
        for handle in [central.publish("fleet/cmd", b"%d" % i) for i in range(300)]:
            handle.wait()
    own_broker.restart()
    sessions: list[bool] = []
    device = client(own_broker, "device-1", on_connected=sessions.append)
    device.subscribe("fleet/cmd", inbox)
    with device:
        inbox.wait_for(300)
        assert device.read_retained("fleet/rollout") == b"state-7"
    assert sessions == [True]
    # QoS 1 is at least once: duplicates are allowed, losses are not.
    assert inbox.payloads() == {b"%d" % i for i in range(300)}


def test_clients_reconnect_and_resubscribe_after_a_broker_restart(
    own_broker: MosquittoBroker,
) -> None:
    """A clean-start subscriber loses its session with the restart: the wrapper
    re-subscribes by itself, and the hooks tell what happened."""
    events: list[str] = []
    inbox = Inbox()
    sub = client(
        own_broker,
        "watcher",
        clean_start=True,
        reconnect_delay=(1, 2),
        on_connected=lambda present: events.append(f"connected {present}"),
        on_disconnected=lambda reason: events.append("disconnected"),
    )
    with sub:
        sub.subscribe("news", inbox)
        own_broker.kill()
        own_broker.start()
        deadline = time.monotonic() + 10
        while not sub.is_connected or len(events) < 3:
            assert time.monotonic() < deadline, events
            time.sleep(0.05)
        with client(own_broker, "newsroom", clean_start=True) as pub:
            pub.publish("news", b"after the restart").wait()
        assert inbox.wait_for(1) == [("news", b"after the restart", False)]
    assert events[:3] == ["connected False", "disconnected", "connected False"]


def test_a_slow_subscriber_gets_all_5000_messages(broker: MosquittoBroker, unique: str) -> None:
    """Mosquitto's default max_queued_messages (1000) would drop most of these without a
    word; the generated configuration has no such limit."""
    count = 5000
    inbox = Inbox(delay=0.0003)
    with client(broker, f"{unique}-slow", clean_start=True) as slow:
        slow.subscribe(f"{unique}/flood", inbox)
        with client(broker, f"{unique}-fast", clean_start=True) as fast:
            handles = [fast.publish(f"{unique}/flood", b"%d" % i) for i in range(count)]
            for handle in handles:
                handle.wait()
        inbox.wait_for(count, timeout=30)
    assert inbox.payloads() == {b"%d" % i for i in range(count)}


def test_a_bounded_broker_queue_drops_silently(tmp_path: Path) -> None:
    """The control for the test above: with a small queue, Mosquitto acknowledges every
    message to the publisher and still loses most of them for the slow subscriber."""
    with MosquittoBroker(tmp_path / "bounded", max_queued_messages=100) as bounded:
        inbox = Inbox(delay=0.0003)
        with client(bounded, "slow", clean_start=True) as slow:
            slow.subscribe("flood", inbox)
            with client(bounded, "fast", clean_start=True) as fast:
                for handle in [fast.publish("flood", b"%d" % i) for i in range(5000)]:
                    handle.wait()  # every one acknowledged...
            received = inbox.wait_quiet(quiet=0.5)
    assert len(received) < 4000  # ...and many never delivered


# -- backpressure and in-flight window ----------------------------------------------------------


def test_backpressure_when_the_broker_stops_acknowledging(own_broker: MosquittoBroker) -> None:
    with client(own_broker, "eager", clean_start=True, max_pending=50, keepalive=60) as pub:
        handles: list[PublishHandle] = []

        def flood() -> None:
            for i in range(1000):
                handles.append(pub.publish("load", b"%d" % i, timeout=0.3))

        own_broker.freeze()
        try:
            with pytest.raises(BackpressureError, match=r"50 messages .* still waiting"):
                flood()
            assert len(handles) == 50
            assert pub.pending == 50
        finally:
            own_broker.thaw()
        for handle in handles:
            handle.wait(10)
        assert pub.pending == 0
        pub.publish("load", b"flows again").wait()


def test_window_follows_the_broker_receive_maximum(tmp_path: Path) -> None:
    """paho ignores the Receive Maximum a broker announces; the wrapper reconnects with a
    window that fits, so the broker never has a reason to drop the connection."""
    with MosquittoBroker(tmp_path / "narrow", max_inflight_messages=5) as narrow:
        drops: list[str] = []
        pub = client(
            narrow, "wide", clean_start=True, max_inflight=50, on_disconnected=drops.append
        )
        with pub:
            assert (pub.server_receive_maximum, pub.max_inflight) == (5, 5)
            for handle in [pub.publish("t", b"%d" % i) for i in range(2000)]:
                handle.wait()
        assert drops == ["Normal disconnection"]


def test_refused_publish_is_an_error_not_a_silence(tmp_path: Path) -> None:
    """MQTT 5 lets the broker say no (here: its access list); 3.1.1 would drop it."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite open/#\n")
    strict = MosquittoBroker(tmp_path / "strict", extra_config=[f"acl_file {acl}"])
    with strict, client(strict, "writer", clean_start=True) as pub:
        pub.publish("open/a", b"ok").wait()
        with pytest.raises(BrokerError, match="refused the message on closed/a: Not auth"):
            pub.publish("closed/a", b"no").wait()
        pub.publish("open/a", b"still connected").wait()


def test_a_message_over_the_broker_packet_limit_is_refused_before_sending(
    tmp_path: Path,
) -> None:
    small = MosquittoBroker(tmp_path / "small", max_packet_size=2000)
    with small, client(small, "big", clean_start=True) as pub:
        assert pub.server_maximum_packet_size == 2000
        pub.publish("t", b"x" * 1900).wait()
        with pytest.raises(BrokerError, match=r"packet of 5,\d+ bytes; .* at most 2,000"):
            pub.publish("t", b"x" * 5000)
        pub.publish("t", b"fine").wait()


def test_waiting_inside_a_callback_raises_instead_of_deadlocking(
    broker: MosquittoBroker, unique: str
) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def callback(topic: str, payload: bytes, retained: bool) -> None:
        try:
            sub.publish(f"{unique}/echo", payload).wait()
        except BrokerError as error:
            errors.append(error)
        done.set()

    with client(broker, f"{unique}-sub", clean_start=True) as sub:
        sub.subscribe(f"{unique}/ping", callback)
        with client(broker, f"{unique}-pub", clean_start=True) as pub:
            pub.publish(f"{unique}/ping", b"1").wait()
        assert done.wait(5)
    assert "inside an MQTT callback" in str(errors[0])


def test_callback_errors_are_counted_and_delivery_goes_on(
    broker: MosquittoBroker, unique: str
) -> None:
    inbox = Inbox()

    def fragile(topic: str, payload: bytes, retained: bool) -> None:
        if payload == b"bad":
            raise ValueError("cannot handle this")
        inbox(topic, payload, retained)

    with client(broker, f"{unique}-sub", clean_start=True) as sub:
        sub.subscribe(f"{unique}/in", fragile)
        with client(broker, f"{unique}-pub", clean_start=True) as pub:
            for payload in (b"bad", b"good"):
                pub.publish(f"{unique}/in", payload).wait()
        assert inbox.wait_for(1) == [(f"{unique}/in", b"good", False)]
        assert sub.callback_errors == 1


def test_last_will_is_published_when_a_client_dies(broker: MosquittoBroker, unique: str) -> None:
    status = f"{unique}/devices/d1/status"
    script = (
        "import sys, time\n"
        "from edgefleet.edge.mqtt import BrokerAddress, MqttClient\n"
        f"c = MqttClient(BrokerAddress('127.0.0.1', {broker.port}), '{unique}-d1',"
        f" will=({status!r}, b'offline', True))\n"
        "c.connect()\n"
        f"c.publish({status!r}, b'online', retain=True).wait()\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    device = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert device.stdout is not None
        assert device.stdout.readline() == b"up\n"
        with client(broker, f"{unique}-watch", clean_start=True) as watcher:
            assert watcher.read_retained(status) == b"online"
            device.kill()
            device.wait()
            assert eventually(lambda: watcher.read_retained(status) == b"offline")
    finally:
        device.kill()
        device.wait()


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_connects_with_file_descriptors_above_1024(broker: MosquittoBroker) -> None:
    """Regression: paho's select() loop cannot watch descriptors >= 1024 and silently
    never read the CONNACK; a simulated fleet of 200 agents in one process hit it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    held = [open(os.devnull) for _ in range(1100)]  # noqa: SIM115 - held open on purpose
    try:
        client = MqttClient(broker.address, f"high-fd-{uuid.uuid4().hex[:8]}", clean_start=True)
        client.connect(timeout=10)
        assert client._client.socket().fileno() >= 1024  # type: ignore[union-attr]
        got: list[bytes] = []
        topic = f"test/highfd/{uuid.uuid4().hex}"
        client.subscribe(topic, lambda t, payload, r: got.append(payload))
        client.publish(topic, b"hello", qos=1).wait(10)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [b"hello"]
        client.disconnect()
    finally:
        for handle in held:
            handle.close()


def test_nothing_in_paho_is_patched() -> None:
    """The network loop uses selectors of its own; paho's module stays as it came, for any
    other paho client in the same process."""
    import select

    import paho.mqtt.client as paho_client

    assert paho_client.select is select


def test_shared_subscriptions_reach_their_callback_and_manual_acks_wait(
    broker: MosquittoBroker,
) -> None:
    """paho's per-filter callbacks never match $share filters (paho issue 472); the
    client routes them itself. With manual_ack, an unacknowledged message comes back on
    the next connection of the session; an acknowledged one does not."""
    name = f"share-{uuid.uuid4().hex[:8]}"
    topic = f"test/{name}/x"
    got: list[Delivered] = []

    def consumer() -> MqttClient:
        client = MqttClient(broker.address, name, manual_ack=True, session_expiry=300)
        client.subscribe_messages(f"$share/g/{topic}", got.append)
        client.connect()
        client.subscribe_messages(f"$share/g/{topic}", got.append)
        return client

    first = consumer()
    with MqttClient(broker.address, f"{name}-pub", clean_start=True) as publisher:
        for payload in (b"one", b"two"):
            publisher.publish(topic, payload).wait()
    wait_for(lambda: len(got) >= 2, timeout=30, what="both messages")
    assert [m.payload for m in got] == [b"one", b"two"]
    first.ack(got[0])  # "two" stays unacknowledged
    first.disconnect(flush_timeout=0)
    got.clear()
    second = consumer()
    wait_for(lambda: bool(got), timeout=30, what="the unacknowledged message again")
    assert [m.payload for m in got] == [b"two"]
    second.ack(got[0])
    second.disconnect()


def test_a_resumed_session_before_its_subscription_loses_nothing(
    broker: MosquittoBroker,
) -> None:
    """A persistent session delivers its queue right after CONNACK. On a manual-ack client
    whose owner subscribes only after connect(), those messages are held, not acknowledged
    and dropped, and reach the subscription when it comes."""
    name = f"resume-{uuid.uuid4().hex[:8]}"
    topic = f"test/{name}/x"
    first = MqttClient(broker.address, name, manual_ack=True, session_expiry=300)
    first.connect()
    first.subscribe_messages(topic, lambda message: None)  # the session now holds the filter
    first.disconnect()
    with MqttClient(broker.address, f"{name}-pub", clean_start=True) as publisher:
        for number in range(20):
            publisher.publish(topic, str(number).encode()).wait()
    got: list[Delivered] = []
    second = MqttClient(broker.address, name, manual_ack=True, session_expiry=300)
    second.connect()
    wait_for(lambda: second.unclaimed == 20, timeout=30, what="the queued messages, held")
    second.subscribe_messages(topic, got.append)
    assert [m.payload for m in got] == [str(n).encode() for n in range(20)]
    assert second.unclaimed == 0
    for message in got:
        second.ack(message)
    second.disconnect()

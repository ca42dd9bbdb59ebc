"""A small MQTT client for devices and the central side: one wrapper over paho-mqtt 2.x in the
style of aiomqtt, where paho's return codes and exceptions become edgefleet errors at the
boundary and nothing is dropped without the caller hearing about it.

Protocol: MQTT 5, because

- a broker's refusal of a publish (message too large, quota exceeded, not authorised) comes
  back as a PUBACK reason code; MQTT 3.1.1 has no way to say it, so such messages vanish;
- a persistent session states its lifetime (Session Expiry Interval) instead of living
  forever on the broker;
- "retain handling" lets a re-subscription after a reconnect skip retained messages the
  session has already seen, while a first subscription still gets them;
- the broker announces its Receive Maximum (the in-flight window it accepts) and its Maximum
  Packet Size; paho heeds neither, this wrapper does both.

Backpressure: paho keeps unacknowledged QoS 1 messages in memory and its ``publish()``
returns ``MQTT_ERR_QUEUE_SIZE`` (rc 15) without raising once 65,535 are outstanding.
:meth:`MqttClient.publish` keeps its own window of ``max_pending`` unacknowledged messages:
when it is full, ``publish`` waits up to ``timeout`` for acknowledgements and then raises
:class:`BackpressureError`. paho's in-flight limit is set before ``connect`` (paho refuses
it later) and lowered to the broker's Receive Maximum when the broker announces a smaller
one: paho ignores that announcement, and a broker disconnects a client that exceeds it.

Threads: a :class:`edgefleet.edge.netloop.NetworkLoop` runs paho's network traffic on its
own thread (selectors, not paho's ``select()``, and nothing patched in paho), reconnects
with exponential backoff and calls every callback: message callbacks, ``on_connected`` and
``on_disconnected``. ``publish``, ``subscribe``, ``unsubscribe``, ``read_retained`` and
``disconnect`` may be called from any thread. A callback must return quickly (while it runs
no other message, and no acknowledgement of your own publishes, is processed) and must not
wait for the network: :meth:`PublishHandle.wait`, ``subscribe``'s wait for the broker's
answer and ``read_retained`` raise :class:`BrokerError` when called from a callback instead
of deadlocking. An exception escaping a message callback is logged on the
``edgefleet.mqtt`` logger and counted in :attr:`MqttClient.callback_errors`; the message is
acknowledged all the same (QoS 1 is at-least-once, not "until my code succeeds").
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgefleet.edge.broker_address import (
    DEFAULT_BROKER_URL,
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    BrokerAddress,
    bound_client_id,
    identity_secret,
)
from edgefleet.edge.mqtt_messages import Message, MessageCallback, Subscription, Will, packet_size
from edgefleet.edge.mqtt_paho import paho_client
from edgefleet.edge.mqtt_subscriptions import SubscriptionTable
from edgefleet.edge.mqtt_window import PublishHandle, PublishWindow
from edgefleet.edge.netloop import NetworkLoop
from edgefleet.edge.retained import read_retained
from edgefleet.edge.unclaimed import Unclaimed
from edgefleet.errors import BackpressureError, BrokerError, InputError

__all__ = [
    "DEFAULT_BROKER_URL",
    "DEFAULT_PORT",
    "DEFAULT_SESSION_EXPIRY",
    "DEFAULT_TLS_PORT",
    "START_HINT",
    "BrokerAddress",
    "Message",
    "MessageCallback",
    "MqttClient",
    "PublishHandle",
    "Will",
    "bound_client_id",
    "identity_secret",
]

logger = logging.getLogger("edgefleet.mqtt")


START_HINT = "Start one with 'edgefleet broker' or pass --broker mqtt://host:port"
DEFAULT_SESSION_EXPIRY = 7 * 24 * 3600
"""Seconds a persistent session (and the QoS 1 messages queued for it) outlives a
disconnection: a device may be away for a week and still get every message."""


class MqttClient:
    """One connection to a broker. See the module docstring for threads and backpressure.

    ``clean_start=False`` (the default) keeps a persistent session: the broker remembers
    the subscriptions and queues QoS 1 messages for ``session_expiry`` seconds while we are
    away, so ``client_id`` must be stable and unique. ``clean_start=True`` starts afresh on
    every connection (a publisher that only sends). ``will`` is published by the broker if
    the connection dies without :meth:`disconnect`. ``marker_base`` is the topic under which
    :meth:`read_retained` puts its markers (default: under the topic read), for a client
    whose access list allows it only a topic space of its own.

    Use as a context manager (``with MqttClient(...) as client:``) or call :meth:`connect`
    and :meth:`disconnect`.
    """

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        *,
        will: Will | tuple[str, bytes, bool] | None = None,
        clean_start: bool = False,
        session_expiry: int = DEFAULT_SESSION_EXPIRY,
        keepalive: int = 30,
        max_inflight: int = 20,
        max_pending: int = 1000,
        reconnect_delay: tuple[int, int] = (1, 30),
        connect_timeout: float = 10.0,
        on_connected: Callable[[bool], None] | None = None,
        on_disconnected: Callable[[str], None] | None = None,
        manual_ack: bool = False,
        marker_base: str | None = None,
    ):
        if not isinstance(client_id, str) or not 1 <= len(client_id) <= 128:
            raise InputError(f"MQTT client id {client_id!r} must have 1 to 128 characters")
        if not 1 <= max_inflight <= 65535:
            raise InputError(f"max_inflight must be 1..65535, not {max_inflight}")
        # Far below paho's 65,535 message ids, so an id is never reused while we still
        # track the message that had it.
        if not 1 <= max_pending <= 30000:
            raise InputError(f"max_pending must be 1..30000, not {max_pending}")
        self.address = address
        self.client_id = bound_client_id(address, client_id)
        self.clean_start = clean_start
        self.session_expiry = 0 if clean_start else session_expiry
        self.keepalive = keepalive
        self.max_inflight = max_inflight
        self.max_pending = max_pending
        self.connect_timeout = connect_timeout
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.manual_ack = manual_ack
        self._generation = 0
        self._unclaimed: Unclaimed[Message] = Unclaimed()
        self.marker_base = marker_base
        self.callback_errors = 0
        self.server_receive_maximum: int | None = None
        self.server_maximum_packet_size: int | None = None
        self._will = Will(*will) if isinstance(will, tuple) else will
        self._reconnect_delay = reconnect_delay
        self._subscriptions = SubscriptionTable()
        self._lock = threading.Lock()
        self._window = PublishWindow(max_pending)
        self._failures: dict[int, str] = {}
        self._connack = threading.Event()
        self._connack_error: str | None = None
        self._network_thread: int | None = None
        self._loop: NetworkLoop | None = None
        self._started = False
        # True while connect() may still redo the connection with a smaller window: the
        # hooks should see one connection, not the rehearsal.
        self._connecting = False
        self._client = self._make_client()

    # -- lifecycle -------------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        client = paho_client(
            self.address,
            self.client_id,
            manual_ack=self.manual_ack,
            max_inflight=self.max_inflight,
            reconnect_delay=self._reconnect_delay,
            will=self._will,
        )
        client.on_message = self._route
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def __enter__(self) -> MqttClient:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.disconnect()

    @property
    def display(self) -> str:
        """The broker's address as error messages show it."""
        return self.address.display

    @property
    def is_connected(self) -> bool:
        return self._client.is_connected()

    def connect(self, timeout: float | None = None) -> None:
        """Connect, or raise :class:`BrokerError` with the reason and what to do. After
        this, lost connections are re-established in the background."""
        if self._started:
            raise BrokerError(f"client {self.client_id} is connected already")
        timeout = self.connect_timeout if timeout is None else timeout
        self._connecting = True
        try:
            self._connect_once(timeout)
            if self._receive_maximum() < self.max_inflight:
                # The broker disconnects a client that exceeds its window (Mosquitto does
                # for QoS 2 and for resends); paho cannot change the window while connected.
                # QoS 1 messages of a persistent session that arrived in between come again
                # after the reconnect: at least once, as QoS 1 promises.
                logger.info(
                    "broker %s accepts %d messages in flight; reconnecting with that window",
                    self.address.display,
                    self._receive_maximum(),
                )
                self._stop()
                self.max_inflight = self._receive_maximum()
                self._client.max_inflight_messages_set(self.max_inflight)
                self._connect_once(timeout)
        finally:
            self._connecting = False

    def _receive_maximum(self) -> int:
        # MQTT 5: no Receive Maximum in CONNACK means 65,535.
        return self.server_receive_maximum or 65535

    def _connect_once(self, timeout: float) -> None:
        self._connack.clear()
        self._connack_error = None
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.session_expiry
        self._client.connect_timeout = timeout
        try:
            self._client.connect(
                self.address.host,
                self.address.port,
                keepalive=self.keepalive,
                clean_start=self.clean_start,
                properties=properties,
            )
        except (OSError, ValueError) as error:
            self._reset()
            raise BrokerError(self._unreachable(_reason(error))) from None
        self._loop = NetworkLoop(
            self._client,
            name=f"mqtt-{self.client_id}",
            reconnect_delay=self._reconnect_delay,
            on_thread=self._set_network_thread,
        )
        self._loop.start()
        self._started = True
        if not self._connack.wait(timeout):
            self._reset()
            raise BrokerError(
                self._unreachable(f"no MQTT answer within {timeout:g} s (is it an MQTT broker?)")
            )
        if self._connack_error is not None:
            reason = self._connack_error
            self._reset()
            raise BrokerError(
                f"the MQTT broker at {self.address.display} refused the connection: {reason}. "
                "Check the user name and password in --broker, and the TLS options"
            )

    def _unreachable(self, reason: str) -> str:
        return f"cannot reach the MQTT broker at {self.address.display}: {reason}. {START_HINT}"

    def _reset(self) -> None:
        """After a failed attempt: a new paho client. The old one may still finish its
        handshake in the background (a broker slow to answer under load), and paho then
        refuses to be reconfigured for the next attempt."""
        self._stop()
        self._client = self._make_client()

    def _stop(self) -> None:
        self._client.disconnect()
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
        self._started = False
        # A later thread may get the dead loop thread's id.
        self._network_thread = None

    def disconnect(self, flush_timeout: float = 5.0) -> int:
        """Wait up to ``flush_timeout`` for unacknowledged messages, then disconnect
        cleanly (no will). Returns how many messages were still unacknowledged and are
        abandoned (logged as a warning when not 0)."""
        if not self._started:
            return 0
        left = 0
        if not self._in_network_thread():
            left = self.flush(flush_timeout)
        if left:
            logger.warning(
                "disconnecting from %s with %d unacknowledged message(s)",
                self.address.display,
                left,
            )
        self._stop()
        self._window.clear()
        return left

    # -- callbacks (network thread) ----------------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._network_thread = threading.get_ident()
        if reason.is_failure:
            self._connack_error = str(reason)
            self._connack.set()
            logger.warning("broker %s refused the connection: %s", self.address.display, reason)
            return
        self.server_receive_maximum = getattr(properties, "ReceiveMaximum", None)
        self.server_maximum_packet_size = getattr(properties, "MaximumPacketSize", None)
        if self._connecting and self._receive_maximum() < self.max_inflight:
            self._connack.set()  # connect() reconnects with a smaller window: stay quiet
            return
        self._generation += 1
        self._unclaimed.clear()
        subscriptions = self._subscriptions.all()
        if subscriptions:
            # Every connect, whatever the session says (Mosquitto 2.0 may not restore a
            # $share subscription). Retain handling 1: retained messages only for
            # subscriptions the session lacks, so a reconnect does not replay them.
            rc, mid = client.subscribe(
                [
                    (entry.topic_filter, SubscribeOptions(qos=entry.qos, retainHandling=1))
                    for entry in subscriptions
                ]
            )
            if rc == paho.MQTT_ERR_SUCCESS and mid is not None:
                self._subscriptions.in_background(mid)
        self._connack.set()
        self._call_hook(self.on_connected, bool(flags.session_present))

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._connecting:
            return  # the rehearsal connection of connect(), or its failure: raised there
        self._call_hook(self.on_disconnected, str(reason))

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # Only failures are recorded (paho's message info tracks completion); the handle
        # picks its failure up by message id once it sees itself acknowledged.
        if reason.is_failure:
            with self._lock:
                self._failures[mid] = str(reason)
        self._window.notify()

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._subscriptions.answered(mid, reasons)

    def _call_hook(self, hook: Callable[[Any], None] | None, argument: object) -> None:
        if hook is None:
            return
        try:
            hook(argument)
        except Exception:
            self.callback_errors += 1
            logger.exception("connection hook %r failed", hook)

    def _route(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        """Every message to the callbacks whose filters match it; ``$share/{group}/``
        filters too, which paho's own per-filter callbacks never match (paho issue 472)."""
        try:
            topic = message.topic
        except UnicodeDecodeError:  # MQTT requires UTF-8; a broker should never send it
            self._acknowledge(message.mid, message.qos, self._generation)
            return
        delivered = Message(
            topic,
            bytes(message.payload),
            bool(message.retain),
            message.qos,
            message.mid,
            self._generation,
        )
        entries = self._subscriptions.matching(topic)
        if not entries and self.manual_ack and delivered.qos:
            self._hold(delivered)
            return
        raw = False
        for entry in entries:
            raw = raw or entry.raw
            self._deliver(entry, delivered)
        if self.manual_ack and not raw:
            self.ack(delivered)

    def _hold(self, message: Message) -> None:
        if not self._unclaimed.hold(message.topic, message):
            logger.warning(
                "%d messages wait for a subscription; %r stays unacknowledged (the broker "
                "sends it again on the next connection)",
                self._unclaimed.limit,
                message.topic,
            )

    @property
    def unclaimed(self) -> int:
        """Messages held, unacknowledged, until a subscription of this client matches them."""
        return len(self._unclaimed)

    def _claim_held(self, entry: Subscription) -> None:
        for message in self._unclaimed.claim(entry.matches):
            if message.generation == self._generation:
                self._deliver(entry, message)
                if not entry.raw:
                    self.ack(message)

    def _deliver(self, entry: Subscription, message: Message) -> None:
        try:
            if entry.raw:
                entry.callback(message)
            else:
                entry.callback(message.topic, message.payload, message.retained)
        except Exception:
            self.callback_errors += 1
            logger.exception("message callback for %r failed", message.topic)

    def ack(self, message: Message) -> None:
        """Acknowledge a message received with ``manual_ack`` (QoS 1: the broker may now
        forget it). A message of an earlier connection is not acknowledged here: the broker
        delivers it again on this one."""
        self._acknowledge(message.mid, message.qos, message.generation)

    def _acknowledge(self, mid: int, qos: int, generation: int) -> None:
        if self.manual_ack and qos and generation == self._generation:
            self._client.ack(mid, qos)

    def _set_network_thread(self, ident: int) -> None:
        self._network_thread = ident

    def _in_network_thread(self) -> bool:
        return threading.get_ident() == self._network_thread

    def forbid_in_network_thread(self, what: str) -> None:
        if self._in_network_thread():
            raise BrokerError(
                f"cannot {what} inside an MQTT callback: the callback runs on the thread "
                "that would receive the answer. Hand the work to another thread"
            )

    def take_failure(self, mid: int) -> str | None:
        with self._lock:
            return self._failures.pop(mid, None)

    # -- publishing --------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 30.0,
    ) -> PublishHandle:
        """Hand ``payload`` to the broker; ``handle.wait()`` for the acknowledgement.

        QoS 1 messages count against the window of ``max_pending`` unacknowledged ones:
        when it is full, this waits up to ``timeout`` s and then raises
        :class:`BackpressureError`. A QoS 1 message given while the connection is down is
        kept and sent on reconnect; a QoS 0 one raises :class:`BrokerError` (paho would
        drop it)."""
        if qos not in (0, 1):
            raise InputError(f"QoS must be 0 or 1, not {qos!r} (edgefleet does not use QoS 2)")
        if not self._started:
            raise BrokerError(f"client {self.client_id} is not connected: call connect() first")
        limit = self.server_maximum_packet_size
        if limit is not None and (size := packet_size(topic, payload, qos)) > limit:
            # paho would send it anyway; the broker would drop the connection, and paho
            # would re-send the same message after every reconnect.
            raise BrokerError(
                f"the message on {topic} makes a packet of {size:,} bytes; the MQTT broker "
                f"at {self.address.display} accepts at most {limit:,}"
            )
        if qos == 1:
            self._window.reserve(
                self.address.display, topic, timeout, may_wait=not self._in_network_thread()
            )
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, TypeError) as error:
            if qos == 1:
                self._window.release(None)
            raise InputError(f"cannot publish on {topic!r}: {error}") from None
        rc = info.rc
        if rc == paho.MQTT_ERR_QUEUE_SIZE:
            self._window.release(None)  # only QoS 1 gets here
            raise BackpressureError(
                f"paho holds 65,535 unacknowledged messages for {self.address.display}: "
                "slow down until the broker catches up"
            )
        if rc == paho.MQTT_ERR_NO_CONN and qos == 1:
            # paho keeps the message and re-sends it after reconnecting, but leaves rc at
            # NO_CONN, which would make is_published() raise forever (client.py,
            # _handle_connack). The message is queued, not failed: say so.
            info.rc = paho.MQTT_ERR_SUCCESS
        elif rc != paho.MQTT_ERR_SUCCESS:
            if qos == 1:
                self._window.release(None)
            if rc == paho.MQTT_ERR_NO_CONN:
                raise BrokerError(
                    f"not connected to the MQTT broker at {self.address.display}: the QoS 0 "
                    f"message on {topic} was not sent"
                )
            raise BrokerError(f"cannot publish on {topic}: {paho.error_string(rc)}")
        handle = PublishHandle(self, topic, qos, info)
        if qos == 1:
            self._window.release(handle)
        return handle

    @property
    def pending(self) -> int:
        """QoS 1 messages not yet acknowledged by the broker."""
        return self._window.pending()

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until every QoS 1 message is acknowledged, at most ``timeout`` s; returns
        how many are still unacknowledged."""
        self.forbid_in_network_thread("wait for acknowledgements")
        deadline = time.monotonic() + timeout
        while (left := self.pending) and time.monotonic() < deadline:
            self._window.wait_for_change(0.02)
        return left

    # -- subscribing -------------------------------------------------------------------------

    def subscribe(
        self,
        topic_filter: str,
        callback: MessageCallback,
        *,
        qos: int = 1,
        timeout: float = 10.0,
    ) -> None:
        """Call ``callback(topic, payload, retained)`` for every message matching
        ``topic_filter`` (``$share/{group}/...`` too), from now on and after every
        reconnect. Retained messages are delivered at once. Raises :class:`BrokerError` if
        the broker refuses. One callback per filter: subscribing the same filter again
        replaces it. With ``manual_ack``, the message is acknowledged when the callback
        returns."""
        self._subscribe(topic_filter, callback, qos=qos, timeout=timeout, raw=False)

    def subscribe_messages(
        self,
        topic_filter: str,
        callback: Callable[[Message], None],
        *,
        qos: int = 1,
        timeout: float = 10.0,
    ) -> None:
        """Like :meth:`subscribe`, with the whole :class:`Message`; on a ``manual_ack``
        client the callback's owner acknowledges it with :meth:`ack` when it is safe (a
        monitor: after its database commit)."""
        self._subscribe(topic_filter, callback, qos=qos, timeout=timeout, raw=True)

    def _subscribe(
        self,
        topic_filter: str,
        callback: Callable[..., None],
        *,
        qos: int,
        timeout: float,
        raw: bool,
    ) -> None:
        if qos not in (0, 1):
            raise InputError(f"QoS must be 0 or 1, not {qos!r}")
        if not isinstance(topic_filter, str) or not topic_filter:
            raise InputError("a topic filter must be a non-empty string")
        entry = Subscription(topic_filter, qos, callback, raw)
        self._subscriptions.add(entry)
        self._claim_held(entry)
        if not self._started:
            return  # sent by _on_connect when the connection comes up
        try:
            rc, mid = self._client.subscribe(
                (topic_filter, SubscribeOptions(qos=qos, retainHandling=0))
            )
        except ValueError as error:
            self._forget(topic_filter)
            raise InputError(f"cannot subscribe to {topic_filter!r}: {error}") from None
        if rc == paho.MQTT_ERR_NO_CONN:
            return  # re-subscribed on reconnect
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            self._forget(topic_filter)
            raise BrokerError(f"cannot subscribe to {topic_filter}: {paho.error_string(rc)}")
        if self._in_network_thread():
            self._subscriptions.in_background(mid)
            return
        reasons = self._subscriptions.wait_answer(
            mid,
            f"the MQTT broker at {self.address.display} did not answer the subscription to "
            f"{topic_filter}",
            timeout,
        )
        failed = [r for r in reasons if r.is_failure]
        if failed:
            self._forget(topic_filter)
            raise BrokerError(
                f"the MQTT broker at {self.address.display} refused the subscription to "
                f"{topic_filter}: {failed[0]}"
            )

    def _forget(self, topic_filter: str) -> None:
        self._subscriptions.forget(topic_filter)

    def unsubscribe(self, topic_filter: str) -> None:
        self._forget(topic_filter)
        if self._started:
            self._client.unsubscribe(topic_filter)

    def read_retained(self, topic: str, timeout: float = 10.0) -> bytes | None:
        """The message retained on ``topic``, or None if there is none
        (:func:`edgefleet.edge.retained.read_retained` says how)."""
        self.forbid_in_network_thread("read a retained message")
        if not self._started:
            raise BrokerError(f"client {self.client_id} is not connected: call connect() first")
        if topic in self._subscriptions:
            raise InputError(f"{topic} is subscribed already; its callback gets the value")
        return read_retained(self, topic, timeout)


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed ({error.reason or error})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__

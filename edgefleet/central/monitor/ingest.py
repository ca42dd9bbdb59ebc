"""Ingest: a fleet's reports from MQTT into the :class:`MonitorStore`, each counted once.

::

    broker --$share/{group}/{prefix}/{fleet}/devices/+/report--> network thread (paho)
        -> bounded queue -> writer thread: store.ingest_many(batch) -> commit -> PUBACK

- **Shared subscription** (MQTT 5): every monitor of one ``group`` subscribes to
  ``$share/{group}/...``, and the broker hands each report to one of them, so several
  monitor processes split a fleet. They may write to the same database: the store's
  ``INSERT ... ON CONFLICT DO NOTHING`` keeps a report that reaches two of them (a device's
  retry, a redelivery after a reconnect) to one row.
- **Acknowledged after the commit, end to end**: after each commit the monitor tells every
  device of the batch which of its sequences are now in the store, on the device's ``ack``
  topic (:mod:`edgefleet.edge.ack`: one message per device per batch, ranges merged), and
  only then sends the broker its PUBACKs (manual acknowledgements, in arrival order, as MQTT
  requires). The device deletes a report from its outbox on that ack alone, so a broker
  that dies with reports it had acknowledged, or a monitor that dies between its commit and
  its acks, loses nothing: the device re-sends, the store counts a duplicate, and the
  duplicate is acknowledged. Several monitors on one database agree, since each acknowledges
  what it found in the store, stored by itself or by another.
- **Persistent session** with a stable client id (the caller's): the subscription and the
  reports queued for it outlive a restart. Mosquitto also gives an *offline* member of a
  shared subscription its share, queued until it returns (or its session expires), so a
  monitor that is retired for good should be stopped with ``stop(leave=True)``, which
  unsubscribes first.
- **Backpressure**: Mosquitto 2.0 stops honouring the client's Receive Maximum after the
  first acknowledgement (measured here: with 50 announced, it sent all 300 queued), so the
  bound is ours: at most ``max_queued`` reports wait in memory; past that the network thread
  waits, TCP pushes back, and the broker queues (it is configured without a limit).
- **Never stops**: a report that fails validation is quarantined by the store; a failing
  database is retried with backoff (nothing is acknowledged meanwhile); a batch that fails
  three times is stored one report at a time, and a report the database refuses on its own is
  quarantined with the database's reason, so one poisonous message cannot stall a fleet.
- **Decode workers** (``workers=N``): validating a report (JSON parse and every check)
  costs about as much CPU as receiving and storing it, and one Python process runs one
  thread at a time; with workers, batch k+1 is validated in a worker process (spawned: this
  process already runs paho's thread) while batch k is committed here, in arrival order.
  The registry check stays here (the callback need not cross processes). If the workers
  die, validation falls back to this process. ``edgefleet monitor`` uses one worker on a
  machine of two cores or more.
- **Device status**: the monitor also reads every device's retained status (a plain
  subscription: each monitor keeps all of them) and keeps the latest per device in the
  store, for the dashboard (how many reports wait for an ack, the update state, the
  problem). A status is checked like a report (:class:`edgefleet.edge.status.DeviceStatus`)
  and a bad one only counted; losing one costs nothing, the device refreshes it.
- One MQTT client for the product: :class:`edgefleet.edge.mqtt.MqttClient` with
  ``manual_ack`` (reports are acknowledged after the commit, statuses at once), which
  routes ``$share/`` filters itself and subscribes again on every connect.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections import defaultdict, deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

from edgefleet.central.monitor.known_versions import CachedVersions
from edgefleet.central.monitor.store import (
    IngestCounts,
    KnownVersion,
    MonitorStore,
    PreparedBatch,
    prepare,
)
from edgefleet.central.monitor.subscription import DEFAULT_GROUP, monitor_group, share_filter
from edgefleet.edge.ack import Ack
from edgefleet.edge.mqtt import (
    DEFAULT_SESSION_EXPIRY,
    BrokerAddress,
    Message,
    MqttClient,
)
from edgefleet.edge.status import DeviceStatus
from edgefleet.edge.topics import DEFAULT_PREFIX, Topics
from edgefleet.errors import BackpressureError, BrokerError, InputError

__all__ = ["DEFAULT_GROUP", "CachedVersions", "Monitor", "MonitorStats", "share_filter"]

logger = logging.getLogger("edgefleet.monitor")

FAULT_KILL_AFTER_COMMITS = "EDGEFLEET_FAULT_MONITOR_KILL_AFTER_COMMITS"
"""Fault injection for the crash tests: when set to N, the monitor sends itself SIGKILL
right after its N-th commit, before any ack or PUBACK of that batch went out: the worst
moment, with reports stored that nobody was told about."""
_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_MAX_STATUSES = 100_000
"""Statuses held between two writes; more are refused (a flood of made-up devices)."""
_ONE_BY_ONE_AFTER = 3


@dataclass(frozen=True)
class MonitorStats:
    """Counters since the monitor started. ``received`` counts deliveries (a redelivered
    report twice); stored + duplicates + quarantined is what has been committed."""

    received: int
    stored: int
    duplicates: int
    quarantined: int
    store_errors: int
    queued: int
    connected: bool
    acks_sent: int = 0
    """Ack messages sent to devices (one per device per committed batch, at least)."""
    statuses_refused: int = 0
    """Device status messages that were malformed or named another device."""

    @property
    def processed(self) -> int:
        return self.stored + self.duplicates + self.quarantined

    def line(self) -> str:
        return (
            f"received {self.received:,}  stored {self.stored:,}  duplicates "
            f"{self.duplicates:,}  quarantined {self.quarantined:,}  queued {self.queued:,}"
            + (f"  database errors {self.store_errors:,}" if self.store_errors else "")
            + ("" if self.connected else "  (broker disconnected)")
        )


_Delivery = Message
"""A report as it arrived (with what acknowledging it to the broker needs)."""


class Monitor:
    """Subscribes to a fleet's reports and stores them; see the module docstring.

    ``client_id`` names the persistent session: give each monitor process its own, the same
    across restarts. Without one, a random id and a session that ends with the connection.
    ``batch`` reports (or whatever arrived within ``flush_seconds`` of the first) go to the
    database per transaction.
    """

    def __init__(
        self,
        fleet: str,
        broker_address: BrokerAddress,
        store: MonitorStore,
        *,
        group: str | None = None,
        batch: int = 500,
        flush_seconds: float = 0.2,
        known_version: KnownVersion | None = None,
        client_id: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        max_queued: int | None = None,
        session_expiry: int = DEFAULT_SESSION_EXPIRY,
        keepalive: int = 30,
        connect_timeout: float = 10.0,
        workers: int = 0,
    ) -> None:
        if not 1 <= batch <= 100_000:
            raise InputError(f"batch must be 1 to 100,000 reports, not {batch}")
        if not 0 < flush_seconds <= 60:
            raise InputError(f"flush_seconds must be above 0 and at most 60, not {flush_seconds}")
        self.fleet = fleet
        self.topics = Topics(fleet, prefix)
        group = group or monitor_group(broker_address, fleet)
        self.filter = share_filter(group, fleet, prefix)
        self.address = broker_address
        self.store = store
        self.group = group
        self.batch = batch
        self.flush_seconds = flush_seconds
        self.known_version = known_version
        self.client_id = client_id or f"edgefleet-monitor-{uuid.uuid4().hex[:12]}"
        self.session_expiry = session_expiry if client_id else 0
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        if not 0 <= workers <= 64:
            raise InputError(f"workers must be 0 to 64, not {workers}")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self.max_queued = max_queued or 4 * batch
        # A deque and an event rather than queue.Queue: appending takes no lock and wakes
        # nobody, and the writer is woken once per batch instead of once per report (at
        # thousands of reports per second the per-item handshake cost a third of the time).
        self._pending: deque[_Delivery] = deque()
        self._batch_ready = threading.Event()
        self._closing = threading.Event()  # no new deliveries are taken
        self._abandon = threading.Event()  # the writer gives up (stop timed out)
        self._writer: threading.Thread | None = None
        self._client: MqttClient | None = None
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)
        self._received = 0
        self._counts = IngestCounts()
        self._store_errors = 0
        self._acks_sent = 0
        self._commits = 0
        self._statuses: dict[str, DeviceStatus] = {}
        self._statuses_refused = 0
        # What the batch being written found in the store (writer thread only).
        self._committed: list[tuple[str, str, int]] = []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Monitor:
        """Connect, subscribe and start storing; :class:`BrokerError` if the broker cannot
        be reached or refuses the connection or the subscription."""
        if self._client is not None:
            return self
        client = self._make_client()
        self._client = client
        # The callbacks before the connection: a resumed session delivers at once.
        client.subscribe_messages(self.filter, self._on_report)
        client.subscribe(self.topics.all_status, self._on_status)
        if self.workers:
            # spawn, not fork: this process already runs the network thread.
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        # The writer runs before the connection: a persistent session may bring more
        # queued reports than max_queued before the SUBACK, and the network thread waits
        # for the writer to make room.
        self._writer = threading.Thread(
            target=self._write_loop, name=f"monitor-writer-{self.fleet}", daemon=True
        )
        self._writer.start()
        try:
            client.connect()
            # Again, now waiting for the broker's answer: a refusal (not authorised to
            # read reports) is an error here, not a silent monitor.
            client.subscribe_messages(self.filter, self._on_report, timeout=self.connect_timeout)
            client.subscribe(self.topics.all_status, self._on_status, timeout=self.connect_timeout)
        except BaseException:
            self._abandon.set()
            self._writer.join(5.0)
            self._client = None
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            with contextlib.suppress(BrokerError):
                client.disconnect(flush_timeout=0)
            raise
        logger.info("monitor %s subscribed to %s", self.client_id, self.filter)
        return self

    def stop(self, timeout: float = 30.0, *, leave: bool = False) -> MonitorStats:
        """Store and acknowledge every report received so far, then disconnect. Reports
        arriving meanwhile are left unacknowledged: the broker keeps them for this session.
        ``leave=True`` first unsubscribes, so the session stops collecting a share of the
        fleet (for a monitor retired for good)."""
        client = self._client
        if client is None:
            return self.stats
        if leave:
            with contextlib.suppress(Exception):
                client.unsubscribe(self.filter)
        self._closing.set()
        writer = self._writer
        if writer is not None:
            writer.join(timeout)
            if writer.is_alive():
                logger.warning(
                    "monitor %s: the database did not take the last %d report(s) within "
                    "%g s; they stay unacknowledged and come back on the next start",
                    self.client_id,
                    len(self._pending),
                    timeout,
                )
                self._abandon.set()
                writer.join(5.0)
        # The acks of the last batches go out before the connection closes.
        client.disconnect(flush_timeout=10.0)
        self._client = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        return self.stats

    def run_until(self, stop_event: threading.Event, timeout: float = 30.0) -> MonitorStats:
        """Start (if need be), run until ``stop_event`` is set, then :meth:`stop`."""
        self.start()
        try:
            while not stop_event.wait(0.5):
                pass
        finally:
            stats = self.stop(timeout)
        return stats

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- state ---------------------------------------------------------------------------

    @property
    def stats(self) -> MonitorStats:
        with self._lock:
            return MonitorStats(
                received=self._received,
                stored=self._counts.stored,
                duplicates=self._counts.duplicates,
                quarantined=self._counts.quarantined,
                store_errors=self._store_errors,
                queued=len(self._pending),
                connected=self._client is not None and self._client.is_connected,
                acks_sent=self._acks_sent,
                statuses_refused=self._statuses_refused,
            )

    def wait_processed(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until ``count`` deliveries have been committed (stored, duplicate or
        quarantined); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._progress:
            while self._counts.total < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(remaining)
        return True

    # -- network thread ------------------------------------------------------------------

    def _make_client(self) -> MqttClient:
        return MqttClient(
            self.address,
            self.client_id,
            clean_start=self.session_expiry == 0,
            session_expiry=self.session_expiry,
            keepalive=self.keepalive,
            connect_timeout=self.connect_timeout,
            manual_ack=True,
            on_disconnected=self._on_disconnected,
        )

    def _on_disconnected(self, reason: str) -> None:
        if not self._closing.is_set():
            logger.warning("monitor %s lost the broker (%s); reconnecting", self.client_id, reason)

    def _on_report(self, message: Message) -> None:
        if self._closing.is_set():
            return  # not acknowledged: the broker redelivers it to this session later
        self._received += 1  # written by this thread only
        pending = self._pending
        pending.append(message)
        if len(pending) >= self.batch:
            self._batch_ready.set()
        # A full queue holds this thread: paho stops reading, TCP pushes back on the broker.
        while len(pending) >= self.max_queued and not self._abandon.is_set():
            self._batch_ready.set()
            time.sleep(0.002)

    def _on_status(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            device_id = self.topics.device_id_from(topic)
            status = DeviceStatus.decode(payload, device_id)
            if len(self._statuses) >= _MAX_STATUSES and device_id not in self._statuses:
                raise InputError("too many device statuses waiting to be written")
            self._statuses[device_id] = status
        except InputError as error:
            self._statuses_refused += 1
            logger.debug("monitor %s: status on %s refused: %s", self.client_id, topic, error)

    # -- writer thread -------------------------------------------------------------------

    def _write_statuses(self) -> None:
        if not self._statuses:
            return
        statuses, self._statuses = self._statuses, {}
        try:
            self.store.put_statuses(self.fleet, list(statuses.values()))
        except Exception as error:  # a status is refreshed by its device: not worth a retry
            logger.warning("monitor %s: device status not stored: %s", self.client_id, error)

    def _take_batch(self) -> list[_Delivery]:
        """Up to ``batch`` reports: at once if that many wait, else whatever arrived within
        ``flush_seconds``."""
        self._write_statuses()
        pending = self._pending
        if len(pending) < self.batch and not self._closing.is_set():
            self._batch_ready.wait(self.flush_seconds)
        # A set() between the wait and this clear() is not lost: the length is checked
        # before every wait, and a wait ends after flush_seconds anyway.
        self._batch_ready.clear()
        popleft = pending.popleft
        return [popleft() for _ in range(min(self.batch, len(pending)))]

    def _write_loop(self) -> None:
        if self.workers:
            self._write_loop_pipelined()
            return
        while not self._abandon.is_set():
            closing = self._closing.is_set()  # read first: then an empty queue is final
            items = self._take_batch()
            if not items:
                if closing:
                    return
                continue
            if not self._store(items):
                return  # abandoned: nothing acknowledged, the broker keeps them
            self._acknowledge(items)

    def _write_loop_pipelined(self) -> None:
        """With decode workers: batch k+1 is validated in a worker process while batch k
        is committed here, and batches are committed (and acknowledged) in arrival order."""
        inflight: deque[tuple[list[_Delivery], Future[PreparedBatch] | None]] = deque()
        while not self._abandon.is_set():
            closing = self._closing.is_set()
            items = self._take_batch() if len(inflight) <= self.workers else []
            if items:
                inflight.append((items, self._submit(items)))
            if not inflight:
                if closing and not items:
                    return
                continue
            head_done = inflight[0][1] is None or inflight[0][1].done()
            if items and len(inflight) <= self.workers and not head_done:
                continue  # keep the workers busy; the head is not ready yet
            batch, future = inflight.popleft()
            if not self._store(batch, self._prepared(batch, future)):
                return
            self._acknowledge(batch)

    def _submit(self, items: list[_Delivery]) -> Future[PreparedBatch] | None:
        pool = self._pool
        if pool is None:
            return None
        try:
            return pool.submit(
                prepare,
                [(d.topic, d.payload) for d in items],
                fleet=self.fleet,
                prefix=self.topics.prefix,
                rollups=self.store.rollups,
            )
        except Exception as error:  # a broken pool: carry on without it
            self._drop_pool(error)
            return None

    def _prepared(
        self, items: list[_Delivery], future: Future[PreparedBatch] | None
    ) -> PreparedBatch:
        if future is not None:
            try:
                return future.result()
            except Exception as error:
                self._drop_pool(error)
        return prepare(
            [(d.topic, d.payload) for d in items],
            fleet=self.fleet,
            prefix=self.topics.prefix,
            rollups=self.store.rollups,
        )

    def _drop_pool(self, error: Exception) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            logger.warning(
                "monitor %s: decode workers failed (%s); decoding in this process",
                self.client_id,
                error,
            )
            pool.shutdown(wait=False, cancel_futures=True)

    def _ingest(self, items: list[_Delivery]) -> IngestCounts:
        return self.store.ingest_many(
            [(d.topic, d.payload) for d in items],
            known_version=self.known_version,
            fleet=self.fleet,
            prefix=self.topics.prefix,
        )

    def _count(self, counts: IngestCounts) -> None:
        self._committed.extend(counts.committed)
        with self._progress:
            self._counts = self._counts + counts
            self._progress.notify_all()

    def _failed(self, what: str, error: Exception, attempt: int) -> bool:
        """Log, count and wait before the next attempt; False if abandoned meanwhile."""
        with self._lock:
            self._store_errors += 1
        delay = _RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)]
        logger.warning(
            "monitor %s: %s failed (%s); retrying in %g s", self.client_id, what, error, delay
        )
        return not self._abandon.wait(delay)

    def _store(self, items: list[_Delivery], prepared: PreparedBatch | None = None) -> bool:
        for attempt in range(_ONE_BY_ONE_AFTER):
            try:
                if prepared is None:
                    self._count(self._ingest(items))
                else:
                    counts = self.store.store_prepared(prepared, known_version=self.known_version)
                    self._count(counts)
                return True
            except Exception as error:
                if not self._failed(f"storing {len(items)} report(s)", error, attempt):
                    return False
        # Perhaps one report the database cannot take: find it by going one at a time.
        return all(self._store_one(item) for item in items)

    def _store_one(self, item: _Delivery) -> bool:
        attempt = 0
        while True:
            refusal: Exception | None = None
            for _ in range(2):
                try:
                    self._count(self._ingest([item]))
                    return True
                except Exception as error:
                    refusal = error
                    if not self._failed("storing one report", error, attempt):
                        return False
                    attempt += 1
            try:
                # The database answers but will not take this one report: keep it aside.
                self.store.quarantine_message(
                    item.topic,
                    item.payload,
                    f"the database refused it: {refusal}",
                    fleet=self.fleet,
                )
                self._count(IngestCounts(quarantined=1))
                return True
            except Exception as error:  # the database is down: try the report again
                if not self._failed("quarantining a report", error, attempt):
                    return False
                attempt += 1

    def _acknowledge(self, items: list[_Delivery]) -> None:
        self._commits += 1
        if os.environ.get(FAULT_KILL_AFTER_COMMITS) == str(self._commits):
            os.kill(os.getpid(), signal.SIGKILL)
        committed, self._committed = self._committed, []
        client = self._client
        if client is None:
            return
        try:
            self._send_acks(client, committed)
        except Exception:  # never stop storing over an ack: the devices re-send
            logger.exception("monitor %s: sending acks failed", self.client_id)
        for item in items:
            # One of an earlier connection is not acknowledged (MqttClient.ack): the broker
            # redelivers it on this one, and it is acknowledged then, as a duplicate.
            client.ack(item)

    def _send_acks(self, client: MqttClient, committed: list[tuple[str, str, int]]) -> None:
        """Tell each device which of its reports the store now holds. An ack that cannot
        go out is only logged: the device re-sends, and the re-send is acknowledged.

        Never waits for room in the publish window: the room comes from PUBACKs that the
        network thread reads, and that thread may itself be waiting for this writer to
        drain a full queue (a deadlock that only the 5 s timeouts broke, one ack at a
        time: a 6,000-report burst from 300 devices stalled for minutes)."""
        by_device: defaultdict[str, list[int]] = defaultdict(list)
        for _, device_id, sequence in committed:
            by_device[device_id].append(sequence)
        sent = deferred = 0
        for device_id, sequences in by_device.items():
            for ack in Ack.from_sequences(device_id, sequences):
                try:
                    client.publish(self.topics.ack(device_id), ack.encode(), qos=1, timeout=0.0)
                    sent += 1
                except BackpressureError:
                    deferred += 1
                except BrokerError as error:
                    logger.warning(
                        "monitor %s: ack to %s not sent: %s", self.client_id, device_id, error
                    )
        if deferred:
            logger.info(
                "monitor %s: %d acks not sent (publish window full); their devices re-send",
                self.client_id,
                deferred,
            )
        with self._lock:
            self._acks_sent += sent

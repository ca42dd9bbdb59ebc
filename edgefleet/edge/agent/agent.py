"""The edge agent: one device of a fleet.

It follows the fleet's signed rollout state (retained on ``.../rollout``), works out its
own target (stable or canary, by the deterministic rule), installs it through the update
lifecycle, and scores locally with the active model whatever the network does. Every
window (``report_seconds`` or ``report_records``, whichever comes first) it rolls its
sketches into a report and puts it in the on-disk outbox; a sender thread publishes the
outbox in order at QoS 1, and a report leaves the outbox only when a monitor acknowledges
that it is *stored* (:mod:`edgefleet.edge.ack`, on the device's ``ack`` topic). A report
not acknowledged within ``ack_timeout`` is sent again, with the timeout doubling (up to
``ack_timeout_max``) and jittered. So nothing is lost while the broker or the network is
away, nor when the broker dies with reports it had acknowledged, nor when the agent dies.

Threads: paho's network thread only enqueues (rollout messages, acks); one update thread
runs installs; one sender thread drains the outbox and applies acks; one timer thread
closes report windows and refreshes the retained status. Scoring runs on the caller's
thread.

Its parts, by what they do: following the rollout (:mod:`.following`), sending the outbox
(:mod:`.sender`), what the window counts per task (:mod:`.counting`), the configuration
(:mod:`.config`); scoring, outcomes and the report window stay here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from edgefleet.edge.ack import Ack
from edgefleet.edge.agent.answers import Outcome, Prediction, answers
from edgefleet.edge.agent.config import AgentConfig, NoModelError
from edgefleet.edge.agent.counting import (
    OpenWindow,
    Remembered,
    RememberedPrediction,
    outcome_of,
    paired_losses,
    remembered,
    task_outcome,
    window_rows,
    window_scores,
)
from edgefleet.edge.agent.following import RolloutFollowing
from edgefleet.edge.agent.installer import ActiveModel, Installer
from edgefleet.edge.agent.lifecycle import State, UpdateMachine, UpdateRecord
from edgefleet.edge.agent.sender import OutboxSender
from edgefleet.edge.agent.store import ModelStore, atomic_write
from edgefleet.edge.mqtt import MqttClient, Will
from edgefleet.edge.outbox import Outbox
from edgefleet.edge.report import Report
from edgefleet.edge.rollout import (
    Cohort,
)
from edgefleet.edge.schema import FeatureSchema
from edgefleet.edge.segments import levels_of, segment_features
from edgefleet.edge.shadow import ShadowCounter
from edgefleet.edge.sketch import ReportBody
from edgefleet.edge.sketch_builder import SketchBuilder
from edgefleet.edge.topics import Topics, validate_device_id
from edgefleet.errors import BrokerError, InputError, RecordError

logger = logging.getLogger("edgefleet.agent")

__all__ = ["Agent", "AgentConfig", "NoModelError"]

PREDICTION_MEMORY = 50_000
"""Predictions remembered for outcome feedback; older ones can no longer get a label."""


def _saved_time(value: object) -> str | None:
    """An ISO time with a zone from agent.json, or None: a hand-edited or older file must
    not make every status() raise."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return value if parsed.tzinfo is not None else None


class Agent(RolloutFollowing):
    def __init__(self, config: AgentConfig):
        validate_device_id(config.device_id)
        self.config = config
        self.topics = Topics(config.fleet, config.prefix)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = ModelStore(config.state_dir)
        self.outbox = Outbox(
            config.state_dir / "outbox.db",
            max_messages=config.outbox_messages,
            max_bytes=config.outbox_bytes,
            ttl_seconds=config.outbox_ttl_seconds,
        )
        self.installer = Installer(
            self.store, config.trusted_keys, self._fetch, on_activate=self._on_activate
        )
        self.machine = UpdateMachine(
            config.state_dir / "update.json",
            self.installer.steps(),
            observer=self._on_update_record,
        )
        self._state_path = config.state_dir / "agent.json"
        saved = self._load_state()
        self._sequence: int = saved.get("sequence", 0)
        self._applied_rollout: int | None = saved.get("applied_rollout")
        # The highest serial accepted (docs/architecture.md §6): a state below it is a
        # replay. Files written before it existed know only the applied one.
        self._serial: int | None = saved.get("rollout_serial", self._applied_rollout)
        self._expires: str | None = _saved_time(saved.get("rollout_expires"))
        self._cohort: Cohort = "canary" if saved.get("cohort") == "canary" else "stable"
        self.last_problem: str | None = None
        self._window: OpenWindow | None = None
        self._window_lock = threading.Lock()
        self._sequence_lock = threading.Lock()
        # id -> (score, model version, its record's segment levels, the challenger's score
        # and version on a shadow device): enough to count the outcome when it comes back,
        # in its segments and under both models too.
        self._predictions: OrderedDict[str, RememberedPrediction] = OrderedDict()
        self._rollouts: queue.Queue[bytes | None] = queue.Queue()
        self._stop = threading.Event()
        self.acks_refused = 0
        self._threads: list[threading.Thread] = []
        self._activation_listeners: list[Callable[[ActiveModel], None]] = []
        self.client = MqttClient(
            config.broker,
            f"edgefleet-{config.fleet}-{config.device_id}",
            will=Will(
                self.topics.status(config.device_id),
                json.dumps({"device_id": config.device_id, "state": "offline"}).encode(),
            ),
            on_connected=lambda _: self._sender.ready.set(),
            marker_base=self.topics.markers(config.device_id),
        )
        self._sender = OutboxSender(
            self.outbox,
            self.client,
            self._stop,
            device_id=config.device_id,
            ack_timeout=config.ack_timeout,
            ack_timeout_max=config.ack_timeout_max,
        )
        self._outbox_ready = self._sender.ready
        problem = self.installer.load_active(self._format_for)
        if problem is not None and self.store.pointer().active is not None:
            self.last_problem = f"stored model unusable: {problem}"

    # -- persistence -------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads(self._state_path.read_text())
            return loaded
        except (FileNotFoundError, ValueError):
            return {}

    def _save_state(self) -> None:
        atomic_write(
            self._state_path,
            json.dumps(
                {
                    "sequence": self._sequence,
                    "applied_rollout": self._applied_rollout,
                    "rollout_serial": self._serial,
                    "rollout_expires": self._expires,
                    "cohort": self._cohort,
                }
            ).encode(),
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (retrying in the background while the broker is away), follow the
        rollout, and start reporting. Scoring works before and without a connection."""
        loops = (self._connect_loop, self._update_loop, self._sender.run, self._window_loop)
        names = ("connect", "update", "send", "window")
        for target, name in zip(loops, names, strict=True):
            thread = threading.Thread(
                target=target, name=f"{name}-{self.config.device_id}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, *, flush_timeout: float = 5.0) -> None:
        """Close the report window into the outbox, try to send what was never sent, and
        disconnect cleanly. Reports waiting for a monitor's ack stay in the outbox: the
        next start sends them again if the ack does not come."""
        self.close_window()
        deadline = time.monotonic() + flush_timeout
        while self._unsent() and time.monotonic() < deadline and self.client.is_connected:
            self._outbox_ready.set()
            time.sleep(0.05)
        self._stop.set()
        self._rollouts.put(None)
        self._outbox_ready.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self.client.is_connected:
            self._publish_status("offline")
        with contextlib.suppress(BrokerError):
            self.client.disconnect()
        self.outbox.close()

    def _unsent(self) -> int:
        stats = self.outbox.stats()
        return stats.pending - stats.awaiting_ack

    def _connect_loop(self) -> None:
        delay = 0.5
        failure: str | None = None
        while not self._stop.is_set():
            try:
                self.client.connect(timeout=10)
                break
            except Exception as error:
                # BrokerError is the expected case; anything else is logged with its
                # traceback, and the device keeps trying rather than stay offline for good.
                if not isinstance(error, BrokerError):
                    logger.exception("%s: unexpected connect failure", self.config.device_id)
                self.last_problem = failure = str(error)
                logger.info(
                    "%s: broker unreachable, retrying in %.1f s", self.config.device_id, delay
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 15.0)
        if self._stop.is_set():
            return
        if failure is not None and self.last_problem == failure:
            self.last_problem = None  # connected now: "unreachable" is no longer true
        self.client.subscribe(self.topics.ack(self.config.device_id), self._on_ack_message)
        self.client.subscribe(self.topics.rollout, self._on_rollout_message)
        self._publish_status("online")

    def _on_rollout_message(self, topic: str, payload: bytes, retained: bool) -> None:
        self._rollouts.put(payload)  # never verify or download on the network thread

    def _on_ack_message(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            ack = Ack.decode(payload)
            if ack.device_id != self.config.device_id:
                raise InputError(f"the ack names device {ack.device_id!r}")
        except InputError as error:
            self.acks_refused += 1
            logger.warning("%s: ack ignored: %s", self.config.device_id, error)
            return
        self._sender.acks.append(ack.ranges)
        self._outbox_ready.set()

    def _on_update_record(self, record: UpdateRecord) -> None:
        # The record after a rollback no longer names its target: the problem set while
        # it did (with the version) stands. A wait for the broker is not a failure:
        # status() words it with the time of the next try.
        if record.retry_at is not None:
            self._publish_status_soon()
        elif record.error and record.target is not None:
            self.last_problem = f"update of {record.target.version} failed: {record.error}"
            if record.state is State.ROLLBACK:
                logger.warning("%s: %s", self.config.device_id, self.last_problem)
        if record.state in (State.IDLE, State.ROLLBACK) and self.client.is_connected:
            self._publish_status("online")

    def _on_activate(self, old: ActiveModel | None, new: ActiveModel) -> None:
        self.close_window()
        with self._window_lock:
            self._window = OpenWindow(
                SketchBuilder.from_manifest(new.scorer.manifest),
                new.scorer.manifest,
                self._cohort,
                shadow=self._shadow_counter(),
            )
        for listener in list(self._activation_listeners):
            listener(new)

    def _shadow_counter(self) -> ShadowCounter | None:
        challenger, active = self.installer.challenger, self.installer.active
        if challenger is None or (
            active is not None
            and active.scorer.manifest.version == (challenger.scorer.manifest.version)
        ):
            return None  # a model is never its own challenger
        task = active.scorer.manifest.schema.task if active is not None else "binary"
        return ShadowCounter(challenger.scorer.manifest.version, task)

    def add_activation_listener(self, listener: Callable[[ActiveModel], None]) -> None:
        """Call ``listener(model)`` whenever a model becomes active (the scoring service
        hands it to its worker processes), and at once for the model active now."""
        self._activation_listeners.append(listener)
        active = self.installer.active
        if active is not None:
            listener(active)

    # -- scoring -----------------------------------------------------------------------------

    @property
    def model(self) -> ActiveModel | None:
        return self.installer.active

    def score(self, records: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Prediction]:
        """Score one record or many with the active model; raises :class:`RecordError`
        naming the record and field of a bad one (and counts it as failed)."""
        active = self.installer.active
        if active is None:
            raise NoModelError(
                "no verified model is installed yet: the agent is waiting for the fleet's rollout"
            )
        batch = [records] if isinstance(records, Mapping) else list(records)
        scorer = active.scorer
        started = time.perf_counter()
        try:
            encoded = scorer.encoder.encode(batch)
        except RecordError:
            self._count_failed(len(batch))
            raise
        outputs = scorer.backend.predict_proba(encoded)
        latency = time.perf_counter() - started
        manifest = scorer.manifest
        # The champion's answer, always: the challenger's is only counted.
        predictions = answers(
            manifest.schema, manifest.version, outputs, [uuid.uuid4().hex for _ in batch]
        )
        levels = levels_of(segment_features(manifest.schema), encoded)
        shadow, challenger_outputs = self._shadow_scores(batch, manifest.schema)
        for i, (prediction, level) in enumerate(zip(predictions, levels, strict=True)):
            identifier = prediction.id
            paired = (
                None
                if shadow is None
                else (remembered(manifest.schema, challenger_outputs[i]), shadow[0])
            )
            self._predictions[identifier] = (
                remembered(manifest.schema, outputs[i]),
                manifest.version,
                tuple(map(int, level)),
                paired,
            )
        while len(self._predictions) > PREDICTION_MEMORY:
            self._predictions.popitem(last=False)
        self._add_to_window(encoded, window_rows(manifest.schema, outputs), latency, shadow)
        return predictions

    def _shadow_scores(
        self, batch: Sequence[Mapping[str, Any]], champion: FeatureSchema
    ) -> tuple[tuple[str, np.ndarray[Any, Any]] | None, np.ndarray[Any, Any]]:
        """The challenger's version and window scores of ``batch`` on a shadow device, and
        its outputs; None without a challenger, one of another task (or classes), or when
        it fails (the champion's answers stand regardless)."""
        challenger = self.installer.challenger
        nothing = np.zeros((0, 0))
        if challenger is None:
            return None, nothing
        scorer = challenger.scorer
        schema = scorer.manifest.schema
        if schema.task != champion.task or (
            champion.task == "multiclass" and schema.classes != champion.classes
        ):
            self.last_problem = (
                f"challenger {scorer.manifest.version} is not scored: a {schema.task} model of "
                f"classes {list(schema.classes)} cannot pair with the running one's"
            )
            return None, nothing
        try:
            outputs = scorer.backend.predict_proba(scorer.encoder.encode(batch))
            scores = window_scores(schema, outputs)
        except Exception as error:  # the challenger must never break the champion's answer
            self.last_problem = f"challenger {scorer.manifest.version} failed to score: {error}"
            return None, nothing
        return (scorer.manifest.version, np.asarray(scores, dtype=np.float64)), outputs

    def outcome(self, prediction_id: str, label: Outcome) -> None:
        """Attach the true label to an earlier prediction (the customer did churn)."""
        remembered = self._predictions.pop(prediction_id, None)
        if remembered is None:
            raise InputError(f"no recent prediction has id {prediction_id!r}")
        score, version, levels, paired = remembered
        counted = self.record_outcome(score, version, label, levels)
        active = self.installer.active
        if not counted or paired is None or active is None:
            return
        schema = active.scorer.manifest.schema
        with self._window_lock:
            shadow = None if self._window is None else self._window.shadow
            if shadow is None or shadow.model_version != paired[1]:
                return
            if schema.task != "binary":
                losses = paired_losses(schema, score, paired[0], label)
                if losses is not None:
                    shadow.add_losses(*losses)
                return
            value = outcome_of(schema, label)
            if value is not None and isinstance(score, float) and isinstance(paired[0], float):
                shadow.add_outcome(score, paired[0], value)

    def record_outcome(
        self,
        score: Remembered,
        version: str,
        label: Outcome,
        segment_levels: Sequence[int] | None = None,
    ) -> bool:
        """Count the true label of a prediction of ``score`` made by ``version`` elsewhere
        (the scoring service's workers, whose signed prediction ids carry both).
        ``segment_levels`` (the record's level of each segment feature, when known) counts
        it in its segments too; without them it counts fleet-wide only. Whether it was
        counted (not when the model changed since). A multi-class model's ``score`` is
        every class's probability, a regressor's its predicted value (counting.py)."""
        active = self.installer.active
        if active is None or active.scorer.manifest.version != version:
            return False  # the model changed since; its window is reported already
        schema = active.scorer.manifest.schema
        value = outcome_of(schema, label)
        if value is not None and isinstance(score, float):
            scores, values = [score], [value]
        elif value is None and (counted := task_outcome(schema, score, label)) is not None:
            scores, values = counted
        else:
            return False
        with self._window_lock:
            if self._window is None:
                return False
            self._window.builder.add_outcomes(
                scores, values, None if segment_levels is None else [segment_levels]
            )
        return True

    def _add_to_window(
        self,
        encoded: np.ndarray[Any, Any],
        probabilities: np.ndarray[Any, Any],
        latency: float,
        shadow: tuple[str, np.ndarray[Any, Any]] | None = None,
    ) -> None:
        full = False
        with self._window_lock:
            if self._window is not None:
                self._window.builder.add(encoded, probabilities, latency)
                counter = self._window.shadow
                if shadow is not None and counter is not None:
                    counter.add_scores(shadow[1], shadow[0])
                self._window.records += len(encoded)
                full = self._window.records >= self.config.report_records
        if full:
            self.close_window()

    def _count_failed(self, count: int) -> None:
        with self._window_lock:
            if self._window is not None:
                self._window.builder.add(
                    np.zeros((0, self._window.manifest.schema.n_features), dtype=np.float32),
                    np.zeros(0, dtype=np.float32),
                    None,
                    n_failed=count,
                )

    # -- reporting ---------------------------------------------------------------------------

    def close_window(self) -> int | None:
        """Roll the open window into a report in the outbox; its sequence number, or None
        when the window was empty."""
        with self._window_lock:
            window = self._window
            if window is None:
                return None
            body = window.builder.roll()
            if window.shadow is not None:
                body = replace(body, shadow=window.shadow.roll(body))
            window.records = 0
            window.started = time.monotonic()
            cohort = window.cohort
        return self._queue_report(body, cohort)

    def merge_counts(self, body: ReportBody) -> None:
        """Add a window measured by another process of this member (a worker of the
        scoring service) to the open window; counts of a model no longer active (a worker
        finishing its last batches after a swap) go out as a report of their own."""
        full = False
        with self._window_lock:
            window = self._window
            cohort = window.cohort if window is not None else self._cohort
            same = window is not None and window.manifest.version == body.model_version
            if window is not None and same:
                window.builder.merge(body)
                window.records += body.scored
                full = window.records >= self.config.report_records
        if not same:
            self._queue_report(body, cohort)
        elif full:
            self.close_window()

    def _queue_report(self, body: ReportBody, cohort: Cohort) -> int | None:
        if body.scored == 0 and body.failed == 0 and body.outcomes.total == 0:
            return None
        with self._sequence_lock:  # windows close on several threads
            self._sequence += 1
            sequence = self._sequence
            self._save_state()

        def build(dropped: int) -> bytes:
            return Report.from_body(
                body,
                fleet=self.config.fleet,
                device_id=self.config.device_id,
                sequence=sequence,
                cohort=cohort,
                device_group=self.config.device_group,
                dropped_reports=dropped,
            ).encode()

        self.outbox.put_report(self.topics.report(self.config.device_id), build, sequence=sequence)
        self._outbox_ready.set()
        return sequence

    def _window_loop(self) -> None:
        last_status = time.monotonic()
        while not self._stop.wait(min(1.0, self.config.report_seconds)):
            with self._window_lock:
                due = (
                    self._window is not None
                    and time.monotonic() - self._window.started >= self.config.report_seconds
                )
            if due:
                self.close_window()
            if time.monotonic() - last_status >= self.config.status_seconds:
                last_status = time.monotonic()
                if self.client.is_connected:
                    self._publish_status("online")

    def _publish_status_soon(self) -> None:
        if self.client.is_connected:
            self._publish_status("online")

    def _problem(self) -> str | None:
        record = self.machine.record
        wait = self.machine.seconds_until_retry()
        waiting = None
        if wait is not None and record.target is not None:
            waiting = (
                f"update of {record.target.version} waiting for the broker, retry in "
                f"{wait:.0f} s ({record.error})"
            )
        # A message ignored while an update waits is news too: both are said.
        parts = (self.last_problem, waiting, self._expired_note())
        return "; ".join(part for part in parts if part) or None

    def _expired_note(self) -> str | None:
        """What the device runs on once its rollout state expired: the verified model it
        has (scoring never stops), until the publisher re-signs."""
        if self._expires is None or self._serial is None:
            return None
        skew = timedelta(seconds=self.config.clock_skew)
        if self._now() <= datetime.fromisoformat(self._expires) + skew:
            return None
        active = self.installer.active
        keeping = active.scorer.manifest.version if active else "no model"
        return (
            f"rollout state {self._serial} expired at {self._expires}; keeping {keeping} "
            "until the publisher re-signs it (edgefleet rollout refresh)"
        )

    def status(self) -> dict[str, Any]:
        active = self.installer.active
        record = self.machine.record
        stats = self.outbox.stats()
        return {
            "device_id": self.config.device_id,
            "fleet": self.config.fleet,
            "state": "online" if self.client.is_connected else "offline",
            "model": active.scorer.manifest.label if active else None,
            "model_version": active.scorer.manifest.version if active else None,
            "format": active.scorer.format if active else None,
            "cohort": self._cohort,
            "challenger": (
                None
                if self.installer.challenger is None
                else self.installer.challenger.scorer.manifest.label
            ),
            "device_group": self.config.device_group,
            "update_state": record.state.value,
            "problem": self._problem(),
            "rollout_sequence": self._applied_rollout,
            "rollout_expires": self._expires,
            "reports_stored": self._sequence - stats.pending,
            "outbox_pending": stats.pending,
            "outbox_awaiting_ack": stats.awaiting_ack,
            "outbox_dropped": stats.dropped_overflow + stats.dropped_expired,
            "time": time.time(),
        }

    def _publish_status(self, state: str) -> None:
        status = {**self.status(), "state": state}
        try:
            self.client.publish(
                self.topics.status(self.config.device_id),
                json.dumps(status).encode(),
                qos=1,
                retain=True,
            )
        except BrokerError as error:
            logger.info("%s: status not published: %s", self.config.device_id, error)

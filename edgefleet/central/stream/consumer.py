"""A long-running consumer of new-data events: JSON records arriving on an MQTT topic are
scored in micro-batches and upserted into the operational table by key.

Nothing lost, nothing doubled (docs/architecture.md §13): the client acknowledges
manually, and an event's PUBACK goes to the broker only after its row is committed. A
consumer killed at any instant leaves its unacknowledged events with the broker (a
persistent session), which delivers them again when it comes back; rows already committed
are upserted again by key, not added. Several consumers split a topic through an MQTT 5
shared subscription (``$share/{group}/{topic}``).

An event is one JSON object (a record with the key column) or an array of them. An event
that can never be scored is written to ``{table}_rejected`` with the reason, in the same
transaction, and acknowledged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edgefleet.central.predictions import Prediction, check_key, predictions_from_scores
from edgefleet.central.stream.sink import Rejected, StreamTable
from edgefleet.edge.agent.answers import Prediction as Answer
from edgefleet.edge.encoding import RecordEncoder
from edgefleet.edge.mqtt import Message, MqttClient
from edgefleet.edge.schema import FeatureSchema
from edgefleet.edge.scorer import Scorer
from edgefleet.edge.wirejson import loads_strict
from edgefleet.errors import EdgefleetError, InputError, RecordError

logger = logging.getLogger("edgefleet.stream")


@dataclass(frozen=True)
class ScoredBatch:
    """A micro-batch's model outputs ``[N, n_outputs]`` (class probabilities, or a
    regressor's value) and the model that made them."""

    probabilities: npt.NDArray[np.float64]
    model: str
    version: str
    classes: tuple[str, ...]


class Scoring(Protocol):
    """What scores a micro-batch: a verified bundle, or a fleet member's agent."""

    def encoder(self) -> RecordEncoder: ...

    def score(self, records: Sequence[dict[str, Any]]) -> ScoredBatch: ...


class BundleScoring:
    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def encoder(self) -> RecordEncoder:
        return self.scorer.encoder

    def score(self, records: Sequence[dict[str, Any]]) -> ScoredBatch:
        manifest = self.scorer.manifest
        probabilities = self.scorer.score(list(records)).astype(np.float64)
        return ScoredBatch(probabilities, manifest.name, manifest.version, manifest.schema.classes)


class AgentScoring:
    """Scores with the fleet member's active model; the agent counts and reports them."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def encoder(self) -> RecordEncoder:
        model = self.agent.model
        if model is None:
            raise EdgefleetError("no model installed yet: waiting for the fleet's rollout")
        encoder: RecordEncoder = model.scorer.encoder
        return encoder

    def score(self, records: Sequence[dict[str, Any]]) -> ScoredBatch:
        manifest = self.agent.model.scorer.manifest
        predictions = self.agent.score(list(records))
        version = predictions[0].model_version if predictions else manifest.version
        outputs = outputs_of(predictions, manifest.schema)
        return ScoredBatch(outputs, manifest.name, version, manifest.schema.classes)


def outputs_of(predictions: Sequence[Answer], schema: FeatureSchema) -> npt.NDArray[np.float64]:
    """The model's outputs ``[N, n_outputs]`` back from the agent's answers, per task
    (edge/agent/answers.py): binary [1 - p, p], every class's probability, or [value]."""
    if schema.task == "regression":
        return np.array([[p.value] for p in predictions], dtype=np.float64).reshape(-1, 1)
    if schema.task == "multiclass":
        rows = [list((p.probabilities or p.scores or {}).values()) for p in predictions]
        return np.array(rows, dtype=np.float64).reshape(-1, schema.n_outputs)
    positive = np.array(
        [p.score if p.probability is None else p.probability for p in predictions],
        dtype=np.float64,
    )
    return np.column_stack((1 - positive, positive))


@dataclass(frozen=True)
class StreamSettings:
    key: str
    batch_size: int = 500
    """Most events in one micro-batch (one scoring call, one transaction)."""
    batch_wait: float = 0.02
    """Seconds a micro-batch waits for more events after its first."""
    max_event_bytes: int = 1 << 20
    max_records: int = 1000
    retry_seconds: float = 2.0
    """Wait before trying a batch again when the database refuses it."""

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 100_000:
            raise InputError(f"--batch-size must be from 1 to 100000, not {self.batch_size}")
        if not 0 <= self.batch_wait <= 60:
            raise InputError("--batch-wait must be from 0 to 60000 ms")


@dataclass
class Counts:
    events: int = 0
    rows: int = 0
    rejected: int = 0
    batches: int = 0
    db_failures: int = 0


class StreamConsumer:
    def __init__(
        self,
        client: MqttClient,
        topic_filter: str,
        scoring: Scoring,
        table: StreamTable,
        settings: StreamSettings,
        *,
        on_batch: Callable[[Counts], None] = lambda counts: None,
    ) -> None:
        if not client.manual_ack:
            raise InputError("the stream's MQTT client must acknowledge manually")
        self.client = client
        self.topic_filter = topic_filter
        self.scoring = scoring
        self.table = table
        self.settings = settings
        self.on_batch = on_batch
        self.counts = Counts()
        self._inbox: queue.Queue[Message] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stream-consumer", daemon=True)

    def start(self) -> None:
        """Start the writer and register the subscription; call it *before* the client
        connects. A resumed persistent session delivers its queued events right after the
        CONNACK, and an event with no subscription registered yet would be acknowledged
        unprocessed (lost): the client subscribes on every connect, ours included."""
        self._thread.start()
        self.client.subscribe_messages(self.topic_filter, self._inbox.put)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _take(self) -> list[Message]:
        try:
            first = self._inbox.get(timeout=0.5)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.settings.batch_wait
        while len(batch) < self.settings.batch_size:
            try:
                batch.append(self._inbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._take()
            while batch and not self._stop.is_set():
                if self._process(batch):
                    break
                self._stop.wait(self.settings.retry_seconds)  # keep them: never ack unwritten

    def _process(self, messages: list[Message]) -> bool:
        """Score and commit ``messages``, then acknowledge them; False to try again later
        (no model yet, the model swapped mid-batch, the database away)."""
        try:
            rows, rejected = self._score(messages)
            self.table.write(rows, rejected)
        except EdgefleetError as error:
            self.counts.db_failures += 1
            logger.warning("a batch of %d events waits: %s", len(messages), error)
            return False
        for message in messages:  # only now may the broker forget them
            self.client.ack(message)
        self.counts.events += len(messages)
        self.counts.rows += len(rows)
        self.counts.rejected += len(rejected)
        self.counts.batches += 1
        self.on_batch(self.counts)
        return True

    def _score(self, messages: list[Message]) -> tuple[list[Prediction], list[Rejected]]:
        events: list[tuple[list[str], list[dict[str, Any]]]] = []
        rejected: list[Rejected] = []
        encoder = self.scoring.encoder()
        for message in messages:
            try:
                keys, records = self._parse(message.payload)
                encoder.encode(records)  # a bad field rejects its event, not the batch
            except InputError as error:
                rejected.append(_rejected(message, str(error)))
                continue
            events.append((keys, records))
        keys = [k for event_keys, _ in events for k in event_keys]
        records = [r for _, event_records in events for r in event_records]
        if not records:
            return [], rejected
        batch = self.scoring.score(records)
        rows = predictions_from_scores(
            keys,
            batch.probabilities,
            classes=batch.classes,
            model=batch.model,
            version=batch.version,
        )
        return rows, rejected

    def _parse(self, payload: bytes) -> tuple[list[str], list[dict[str, Any]]]:
        value = loads_strict(payload, max_bytes=self.settings.max_event_bytes, what="event")
        records = value if isinstance(value, list) else [value]
        if not records or len(records) > self.settings.max_records:
            raise InputError(f"an event holds 1 to {self.settings.max_records} records")
        keys = []
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise RecordError("a record is a JSON object", record=index)
            key = record.get(self.settings.key)
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise RecordError(
                    "the key is missing (text or a whole number)",
                    record=index,
                    field=self.settings.key,
                )
            try:
                keys.append(check_key(key))
            except InputError as error:
                raise RecordError(str(error), record=index, field=self.settings.key) from None
        return keys, records


def _rejected(message: Message, reason: str) -> Rejected:
    return Rejected(message.topic, message.payload, reason)


__all__ = ["AgentScoring", "BundleScoring", "Counts", "StreamConsumer", "StreamSettings"]

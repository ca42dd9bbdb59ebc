"""The update lifecycle as one table of transitions (mender's style).

    Idle -update-> Download -ok-> Verify -ok-> SelfTest -ok-> Activate -ok-> Commit -ok-> Idle
                      |              |             |               |
                      +---failure----+------+------+---------------+--> Rollback --> Idle

Each state is a step that returns an event; the next state comes only from
:data:`TRANSITIONS`. The record (state, target, attempts, last error) is saved atomically
*before* each step runs, and every step is idempotent, so a process killed at any instant
resumes from the step it was in: downloads are content-addressed and skip complete files,
verification and self-test are pure, activation re-points the same pointer. A target that
keeps failing (``max_attempts`` starts, e.g. a model that crashes the process) is rolled
back and remembered as failed, so the device does not loop on it.

Transient failures are not failures: a step that raises :class:`TRANSIENT` (the broker is
away, not connected, did not answer in time, or no longer holds a model it will get back)
leaves the record in its state with ``retry_at`` set, and :meth:`UpdateMachine.retry` runs
it again after a doubling, jittered delay (up to ``max_retry_delay``). Only deterministic
failures (hash, signature, downgrade, self-test) and process deaths count toward
``max_attempts``. Whoever drives the machine abandons a waiting target (:meth:`abandon`)
when the rollout no longer names it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from edgefleet.edge.agent.store import atomic_write
from edgefleet.errors import BrokerError

TRANSIENT: tuple[type[Exception], ...] = (BrokerError,)
"""Step failures that say nothing about the model: retried, never counted."""


class State(StrEnum):
    IDLE = "idle"
    DOWNLOAD = "download"
    VERIFY = "verify"
    SELF_TEST = "self_test"
    ACTIVATE = "activate"
    COMMIT = "commit"
    ROLLBACK = "rollback"


class Event(StrEnum):
    UPDATE = "update"
    OK = "ok"
    FAILURE = "failure"


TRANSITIONS: Mapping[tuple[State, Event], State] = {
    (State.IDLE, Event.UPDATE): State.DOWNLOAD,
    (State.DOWNLOAD, Event.OK): State.VERIFY,
    (State.DOWNLOAD, Event.FAILURE): State.ROLLBACK,
    (State.VERIFY, Event.OK): State.SELF_TEST,
    (State.VERIFY, Event.FAILURE): State.ROLLBACK,
    (State.SELF_TEST, Event.OK): State.ACTIVATE,
    (State.SELF_TEST, Event.FAILURE): State.ROLLBACK,
    (State.ACTIVATE, Event.OK): State.COMMIT,
    (State.ACTIVATE, Event.FAILURE): State.ROLLBACK,
    (State.COMMIT, Event.OK): State.IDLE,
    (State.COMMIT, Event.FAILURE): State.ROLLBACK,
    (State.ROLLBACK, Event.OK): State.IDLE,
    (State.ROLLBACK, Event.FAILURE): State.IDLE,
}


@dataclass(frozen=True)
class Target:
    """The model an update installs: its manifest, signature and one artifact, each
    content-addressed by sha256."""

    name: str
    version: str
    format: str
    manifest_sha256: str
    signature_sha256: str
    artifact_sha256: str
    rollback_allowed: bool = False
    # The rollout state that asked for it: a failure is remembered for this state only.
    rollout_sequence: int = 0

    @property
    def failure_key(self) -> str:
        return f"{self.manifest_sha256}@{self.rollout_sequence}"


@dataclass(frozen=True)
class UpdateRecord:
    state: State = State.IDLE
    target: Target | None = None
    attempts: int = 0
    error: str | None = None
    # Targets that failed, as failure keys: not retried under the same rollout state (a
    # model that kills the process must not loop), retried when a new state names them.
    failed: tuple[str, ...] = ()
    # Set while the step of ``state`` waits to be retried after a transient failure: the
    # wall-clock time of the next try, and how many tries in a row have failed so.
    retry_at: float | None = None
    waits: int = 0

    def to_json(self) -> bytes:
        data: dict[str, Any] = asdict(self)
        data["state"] = self.state.value
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> UpdateRecord:
        raw = json.loads(data)
        target = Target(**raw["target"]) if raw.get("target") else None
        return cls(
            state=State(raw["state"]),
            target=target,
            attempts=int(raw["attempts"]),
            error=raw.get("error"),
            failed=tuple(raw.get("failed", ())),
            retry_at=raw.get("retry_at"),
            waits=int(raw.get("waits", 0)),
        )


FAULT_ENVIRONMENT = "EDGEFLEET_FAULT_KILL_AT"
"""Fault injection for the crash tests: when set to a state's name, the process sends
itself SIGKILL as that step begins (after its record was saved). A real SIGKILL at an
exact point of the lifecycle, instead of a timer that races the step."""


def _maybe_kill_self(state: State) -> None:
    if os.environ.get(FAULT_ENVIRONMENT) == state.value:
        os.kill(os.getpid(), signal.SIGKILL)


Step = Callable[[Target], None]
"""A step does its work or raises; any exception is the FAILURE event, with its message."""


@dataclass(frozen=True)
class Steps:
    download: Step
    verify: Step
    self_test: Step
    activate: Step
    commit: Step
    rollback: Step

    def for_state(self, state: State) -> Step:
        return {
            State.DOWNLOAD: self.download,
            State.VERIFY: self.verify,
            State.SELF_TEST: self.self_test,
            State.ACTIVATE: self.activate,
            State.COMMIT: self.commit,
            State.ROLLBACK: self.rollback,
        }[state]


Observer = Callable[[UpdateRecord], None]


class UpdateMachine:
    """Runs targets through the lifecycle, persisting the record in ``path``."""

    FAILED_MEMORY = 16

    def __init__(
        self,
        path: Path,
        steps: Steps,
        *,
        max_attempts: int = 3,
        observer: Observer = lambda _: None,
        first_retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
    ):
        self.path = Path(path)
        self.steps = steps
        self.max_attempts = max_attempts
        self.first_retry_delay = first_retry_delay
        self.max_retry_delay = max_retry_delay
        self.observer = observer
        self.record = self._load()

    def _load(self) -> UpdateRecord:
        try:
            return UpdateRecord.from_json(self.path.read_bytes())
        except FileNotFoundError:
            return UpdateRecord()
        except (ValueError, KeyError, TypeError):
            # Atomic writes make this unreachable short of disk corruption: start clean.
            return UpdateRecord(error="the update record was unreadable and was reset")

    def _save(self, record: UpdateRecord) -> None:
        atomic_write(self.path, record.to_json())
        self.record = record
        self.observer(record)

    def has_failed(self, target: Target) -> bool:
        return target.failure_key in self.record.failed

    def start(self, target: Target) -> None:
        """Begin installing ``target`` (only from Idle) and run it to the end."""
        if self.record.state is not State.IDLE:
            raise RuntimeError(f"an update is already in state {self.record.state}")
        state = TRANSITIONS[(State.IDLE, Event.UPDATE)]
        self._save(replace(self.record, state=state, target=target, attempts=1, error=None))
        self.run()

    @property
    def waiting(self) -> bool:
        """True while a step waits to be retried after a transient failure."""
        return self.record.retry_at is not None

    def seconds_until_retry(self) -> float | None:
        """Seconds until :meth:`retry` is due (0 if overdue), None when not waiting."""
        retry_at = self.record.retry_at
        return None if retry_at is None else max(0.0, retry_at - time.time())

    def retry(self) -> None:
        """Run the waiting step again now."""
        if self.waiting:
            self._save(replace(self.record, retry_at=None, error=None))
            self.run()

    def abandon(self) -> None:
        """Drop a target that waits for a transient fault to pass (the rollout moved on):
        back to Idle, not remembered as failed, since nothing said it was bad."""
        if self.waiting:
            self._save(replace(self.record, state=State.IDLE, target=None, retry_at=None, waits=0))

    def resume(self) -> None:
        """After a restart: continue an interrupted update, or give up on one that has been
        started too often (it may be what killed the process). A step that was waiting
        out a transient fault did not kill anything: its retry does not count."""
        if self.record.state is State.IDLE or self.record.target is None:
            return
        if self.waiting:
            self.retry()
            return
        attempts = self.record.attempts + 1
        if attempts > self.max_attempts and self.record.state is not State.ROLLBACK:
            self._save(
                replace(
                    self.record,
                    state=State.ROLLBACK,
                    attempts=attempts,
                    error=f"gave up after {self.max_attempts} interrupted attempts",
                )
            )
        else:
            self._save(replace(self.record, attempts=attempts))
        self.run()

    def run(self) -> None:
        while self.record.state is not State.IDLE:
            target = self.record.target
            assert target is not None  # every non-idle record names its target
            state = self.record.state
            error: str | None = None
            _maybe_kill_self(state)
            try:
                self.steps.for_state(state)(target)
                event = Event.OK
            except TRANSIENT as failure:
                self._wait(f"{state.value}: {failure}")
                return
            except Exception as failure:  # a step's failure of any kind is the FAILURE event
                event = Event.FAILURE
                error = f"{state.value}: {failure}"
            next_state = TRANSITIONS[(state, event)]
            record = replace(
                self.record,
                state=next_state,
                error=error if error is not None else self.record.error,
                waits=0,
            )
            if state is State.ROLLBACK:
                failed = (*self.record.failed, target.failure_key)[-self.FAILED_MEMORY :]
                record = replace(record, target=None, failed=failed)
            elif state is State.COMMIT and event is Event.OK:
                record = replace(record, target=None, error=None)
            self._save(record)

    def _wait(self, error: str) -> None:
        waits = self.record.waits + 1
        delay = min(self.max_retry_delay, self.first_retry_delay * 2.0 ** (waits - 1))
        delay *= random.uniform(0.8, 1.2)  # a fleet that lost its broker retries spread out
        self._save(replace(self.record, error=error, retry_at=time.time() + delay, waits=waits))

"""The update lifecycle's transition table, one scenario per fault.

These use recording steps (a fake beside the real thing): the real steps are exercised
against Mosquitto and real bundles in tests/fleet.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.edge.agent.lifecycle import (
    TRANSITIONS,
    Event,
    State,
    Steps,
    Target,
    UpdateMachine,
)
from edgefleet.errors import BrokerError

TARGET = Target("churn", "1.1.0", "onnx", "a" * 64, "b" * 64, "c" * 64)


class Crash(BaseException):
    """Stands for the process dying mid-step (not an Exception: no step may catch it)."""


class Recorder:
    def __init__(self, fail_at: State | None = None, crash_at: State | None = None):
        self.fail_at, self.crash_at = fail_at, crash_at
        self.calls: list[State] = []

    def step(self, state: State):  # type: ignore[no-untyped-def]
        def run(target: Target) -> None:
            assert target == TARGET
            self.calls.append(state)
            if state is self.crash_at:
                self.crash_at = None  # the process restarts healthy
                raise Crash
            if state is self.fail_at:
                raise ValueError(f"{state} broke")

        return run

    def steps(self) -> Steps:
        return Steps(
            *(
                self.step(s)
                for s in (
                    State.DOWNLOAD,
                    State.VERIFY,
                    State.SELF_TEST,
                    State.ACTIVATE,
                    State.COMMIT,
                    State.ROLLBACK,
                )
            )
        )


HAPPY = [State.DOWNLOAD, State.VERIFY, State.SELF_TEST, State.ACTIVATE, State.COMMIT]


def test_every_state_has_a_way_back_to_idle() -> None:
    for state in State:
        if state is State.IDLE:
            continue
        assert (state, Event.FAILURE) in TRANSITIONS
        assert (state, Event.OK) in TRANSITIONS


def test_happy_path(tmp_path: Path) -> None:
    recorder = Recorder()
    machine = UpdateMachine(tmp_path / "update.json", recorder.steps())
    machine.start(TARGET)
    assert recorder.calls == HAPPY
    assert machine.record.state is State.IDLE
    assert machine.record.error is None


@pytest.mark.parametrize("fail_at", HAPPY)
def test_failure_in_any_step_rolls_back_and_remembers(tmp_path: Path, fail_at: State) -> None:
    recorder = Recorder(fail_at=fail_at)
    machine = UpdateMachine(tmp_path / "update.json", recorder.steps())
    machine.start(TARGET)
    assert recorder.calls == [*HAPPY[: HAPPY.index(fail_at) + 1], State.ROLLBACK]
    assert machine.record.state is State.IDLE
    assert machine.record.error == f"{fail_at.value}: {fail_at} broke"
    assert machine.has_failed(TARGET)


@pytest.mark.parametrize("crash_at", HAPPY)
def test_crash_in_any_step_resumes_that_step_after_restart(tmp_path: Path, crash_at: State) -> None:
    recorder = Recorder(crash_at=crash_at)
    with pytest.raises(Crash):
        UpdateMachine(tmp_path / "update.json", recorder.steps()).start(TARGET)
    restarted = UpdateMachine(tmp_path / "update.json", recorder.steps())
    assert restarted.record.state is crash_at
    restarted.resume()
    crashed = HAPPY.index(crash_at)
    assert recorder.calls == [*HAPPY[: crashed + 1], *HAPPY[crashed:]]
    assert restarted.record.state is State.IDLE
    assert not restarted.has_failed(TARGET)


def _start_or_resume(machine: UpdateMachine) -> None:
    if machine.record.state is State.IDLE:
        machine.start(TARGET)
    else:
        machine.resume()


def test_a_target_that_keeps_killing_the_process_is_abandoned(tmp_path: Path) -> None:
    path = tmp_path / "update.json"
    for _ in range(3):
        recorder = Recorder(crash_at=State.SELF_TEST)
        machine = UpdateMachine(path, recorder.steps(), max_attempts=3)
        with pytest.raises(Crash):
            _start_or_resume(machine)
    recorder = Recorder()
    machine = UpdateMachine(path, recorder.steps(), max_attempts=3)
    machine.resume()
    assert recorder.calls == [State.ROLLBACK]
    assert machine.has_failed(TARGET)
    assert "gave up after 3 interrupted attempts" in (machine.record.error or "")


def test_only_idle_starts_an_update(tmp_path: Path) -> None:
    recorder = Recorder(crash_at=State.VERIFY)
    machine = UpdateMachine(tmp_path / "update.json", recorder.steps())
    with pytest.raises(Crash):
        machine.start(TARGET)
    with pytest.raises(RuntimeError, match="already in state verify"):
        machine.start(TARGET)


# -- transient faults: waited out, never counted -----------------------------------------------


class Flaky(Recorder):
    """Download raises BrokerError ``times`` times, then works."""

    def __init__(self, times: int):
        super().__init__()
        self.times = times

    def step(self, state: State):  # type: ignore[no-untyped-def]
        inner = super().step(state)

        def run(target: Target) -> None:
            if state is State.DOWNLOAD and self.times > 0:
                self.times -= 1
                self.calls.append(state)
                raise BrokerError("client x is not connected: call connect() first")
            inner(target)

        return run


def test_a_transient_failure_waits_and_retries_instead_of_rolling_back(tmp_path: Path) -> None:
    recorder = Flaky(times=5)
    machine = UpdateMachine(tmp_path / "update.json", recorder.steps(), first_retry_delay=2.0)
    machine.start(TARGET)
    assert machine.record.state is State.DOWNLOAD
    assert machine.waiting
    assert "not connected" in str(machine.record.error)
    delay = machine.seconds_until_retry()
    assert delay is not None
    assert 1.0 < delay <= 2.4
    for _ in range(4):
        machine.retry()
        assert machine.waiting
    assert machine.record.waits == 5
    assert machine.seconds_until_retry() is not None
    assert machine.seconds_until_retry() > 10  # type: ignore[operator]  # doubled 4 times
    machine.retry()
    assert recorder.calls == [State.DOWNLOAD] * 6 + HAPPY[1:]
    assert machine.record.state is State.IDLE
    assert not machine.waiting
    assert machine.record.failed == ()  # nothing was held against the target


def test_a_restart_while_waiting_does_not_count_toward_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "update.json"
    UpdateMachine(path, Flaky(times=1).steps(), max_attempts=1).start(TARGET)
    for _ in range(3):  # three restarts while the broker stays away
        machine = UpdateMachine(path, Flaky(times=1).steps(), max_attempts=1)
        machine.resume()
        assert machine.waiting
        assert machine.record.attempts == 1
    machine = UpdateMachine(path, Recorder().steps(), max_attempts=1)
    machine.resume()
    assert machine.record.state is State.IDLE
    assert machine.record.failed == ()


def test_a_waiting_target_the_rollout_left_is_abandoned_not_failed(tmp_path: Path) -> None:
    machine = UpdateMachine(tmp_path / "update.json", Flaky(times=1).steps())
    machine.start(TARGET)
    machine.abandon()
    assert machine.record.state is State.IDLE
    assert machine.record.target is None
    assert not machine.has_failed(TARGET)

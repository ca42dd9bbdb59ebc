"""How an agent follows its fleet's rollout (docs/architecture.md §6): the signed state
retained on ``.../rollout`` is verified, checked for replay and expiry, and turned into
this device's target (stable or canary, by the deterministic rule) and challenger (a
shadow device's, §17), which the update lifecycle installs.

:class:`RolloutFollowing` is a part of :class:`~edgefleet.edge.agent.agent.Agent`, split
out by what it does; it runs on the agent's update thread, never on the network thread
(which only queues the messages), and uses the agent's state, declared below.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from edgefleet.edge.agent.installer import ActiveModel, Installer
from edgefleet.edge.agent.lifecycle import State, Target, UpdateMachine
from edgefleet.edge.backends.base import choose_format
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.mqtt import MqttClient
from edgefleet.edge.rollout import (
    Cohort,
    ModelRef,
    RolloutState,
    challenger_for,
    check_fresh,
    check_sequence,
    check_version,
    target_for,
    verify_rollout,
)
from edgefleet.edge.shadow import ShadowCounter
from edgefleet.edge.topics import Topics
from edgefleet.errors import BrokerError, EdgefleetError, InputError

if TYPE_CHECKING:
    from edgefleet.edge.agent.config import AgentConfig
    from edgefleet.edge.agent.counting import OpenWindow

logger = logging.getLogger("edgefleet.agent")


class RolloutFollowing:
    """Following the rollout (module docstring)."""

    # The agent's state this part reads and writes (set in Agent.__init__).
    config: AgentConfig
    topics: Topics
    client: MqttClient
    machine: UpdateMachine
    installer: Installer
    last_problem: str | None
    _rollouts: queue.Queue[bytes | None]
    _stop: threading.Event
    _serial: int | None
    _applied_rollout: int | None
    _expires: str | None
    _cohort: Cohort
    _window: OpenWindow | None
    _window_lock: threading.Lock
    # ... and what the agent does that following needs.
    close_window: Callable[[], int | None]
    _save_state: Callable[[], None]
    _publish_status: Callable[[str], None]
    _shadow_counter: Callable[[], ShadowCounter | None]

    def _update_loop(self) -> None:
        if self.machine.record.state is not State.IDLE:
            self.machine.resume()  # an update interrupted by a crash, or waiting to retry
        while not self._stop.is_set():
            try:
                payload = self._rollouts.get(timeout=self.machine.seconds_until_retry())
            except queue.Empty:
                self.machine.retry()  # a transient fault (the broker away) may have passed
                continue
            if payload is None:
                return
            try:
                self._follow(verify_rollout(payload, self.config.trusted_keys))
            except EdgefleetError as error:
                self.last_problem = f"rollout message ignored: {error}"
                logger.warning("%s: %s", self.config.device_id, self.last_problem)
                self._publish_status("online")

    def _format_for(self, manifest: Manifest | ModelRef) -> str:
        formats = (
            manifest.formats() if isinstance(manifest, Manifest) else tuple(manifest.artifacts)
        )
        return choose_format(formats, self.config.format)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.config.clock(), UTC)

    def _accept(self, state: RolloutState) -> bool:
        """Whether ``state`` is to be followed: :class:`StaleRolloutError` for a serial
        below the highest accepted (a replay) or an expired state; False for the state
        followed already, re-delivered (retained, on reconnect). An accepted serial is
        saved before anything is downloaded, so a replay is refused after a restart too."""
        if state.fleet != self.config.fleet:
            raise InputError(f"the rollout is for fleet {state.fleet!r}, not {self.config.fleet!r}")
        newer = check_sequence(state, self._serial)
        if not newer and state.sequence == self._applied_rollout:
            return False
        check_fresh(state, self._now(), skew=timedelta(seconds=self.config.clock_skew))
        self._serial, self._expires = state.sequence, state.expires
        self._save_state()
        return True

    def _follow(self, state: RolloutState) -> None:
        if not self._accept(state):
            # The state followed already, re-delivered (after a restart too): the
            # challenger slot is not saved, so it is filled again from the store.
            self._follow_challenger(state)
            return
        # A new state: the problems of earlier messages are history; this one's follow.
        self.last_problem = None
        ref, cohort = target_for(state, self.config.device_id)
        if cohort != self._cohort:
            # A promotion moves a device from canary to stable without a new model: the
            # reports so far belong to the old cohort, the next ones to the new.
            self.close_window()
            with self._window_lock:
                if self._window is not None:
                    self._window.cohort = cohort
        self._cohort = cohort
        # The challenger first: a challenger made the canary is dropped from the shadow
        # slot before it becomes the model this device runs.
        self._follow_challenger(state)
        self._settle_waiting(ref)
        active = self.installer.active
        if (
            not self.machine.waiting
            and ref is not None
            and (active is None or active.manifest_sha256 != ref.manifest_sha256)
        ):
            # Refuse a downgrade before downloading anything (verify checks it again on
            # the signed manifest itself).
            check_version(state, ref, active.scorer.manifest.version if active else None)
            target = self._target(ref, state, rollback_allowed=state.rollback)
            if self.machine.has_failed(target):
                # Abandoned under this state (e.g. it kept killing the process): say so,
                # the device does not run what the fleet asks for.
                self.last_problem = (
                    f"update of {target.version} abandoned under rollout {state.sequence}: "
                    f"{self.machine.record.error or 'it failed before'}"
                )
            else:
                self.machine.start(target)
        self._applied_rollout = state.sequence
        self._save_state()
        self._publish_status("online")

    def _follow_challenger(self, state: RolloutState) -> None:
        """Install (or drop) the challenger this device scores in shadow under ``state``:
        the same download, verification and self-test as the model it runs."""
        ref = challenger_for(state, self.config.device_id)
        current = self.installer.challenger
        if ref is None:
            if current is not None:
                self._set_shadow(None)
            return
        if current is not None and current.manifest_sha256 == ref.manifest_sha256:
            return
        # Never activated: the version order does not apply.
        target = self._target(ref, state, rollback_allowed=True)
        try:
            self._set_shadow(self.installer.install_challenger(target))
        except EdgefleetError as error:
            self.installer.challenger = None
            self.last_problem = f"challenger {ref.version} not installed: {error}"
            logger.warning("%s: %s", self.config.device_id, self.last_problem)

    def _target(self, ref: ModelRef, state: RolloutState, *, rollback_allowed: bool) -> Target:
        """What the update lifecycle installs for ``ref``: its artifact in this device's
        format."""
        fmt = self._format_for(ref)
        return Target(
            name=ref.name,
            version=ref.version,
            format=fmt,
            manifest_sha256=ref.manifest_sha256,
            signature_sha256=ref.signature_sha256,
            artifact_sha256=ref.artifacts[fmt],
            rollback_allowed=rollback_allowed,
            rollout_sequence=state.sequence,
        )

    def _set_shadow(self, model: ActiveModel | None) -> None:
        """Start a window whose shadow counts belong to ``model`` (None: no shadow)."""
        if model is None:
            self.installer.challenger = None
        self.close_window()
        with self._window_lock:
            if self._window is not None:
                self._window.shadow = self._shadow_counter()

    def _settle_waiting(self, ref: ModelRef | None) -> None:
        """A new rollout state while an update waits out a transient fault: retry it now
        if the state still names that model, else abandon it for what the state says."""
        waiting = self.machine.record.target if self.machine.waiting else None
        if waiting is None:
            return
        if ref is not None and ref.manifest_sha256 == waiting.manifest_sha256:
            self.machine.retry()
        else:
            self.machine.abandon()

    def _fetch(self, sha256: str) -> bytes:
        # An update resumed right after a restart runs before the connect thread got
        # through: wait for the connection (within the fetch timeout) instead of failing.
        deadline = time.monotonic() + self.config.fetch_timeout
        while not self.client.is_connected:
            if self._stop.is_set() or time.monotonic() > deadline:
                raise BrokerError(
                    f"not connected to the broker within {self.config.fetch_timeout:g} s: "
                    f"cannot fetch {sha256[:12]}..."
                )
            self._stop.wait(0.1)
        data = self.client.read_retained(
            self.topics.model(sha256), timeout=self.config.fetch_timeout
        )
        if data is None:
            raise BrokerError(f"nothing is published under {self.topics.model(sha256)}")
        return data

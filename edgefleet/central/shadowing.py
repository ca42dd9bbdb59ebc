"""Publishing a challenger for shadow scoring, and ending the shadow test
(docs/architecture.md §17).

A shadow test names a challenger beside the stable model: the devices of the shadow cohort
(``shadow_percent`` %, :func:`edgefleet.edge.rollout.in_shadow`) fetch and verify it like
any model and score every record with both, acting on the stable model's answer only.
It ends one of two ways: the challenger becomes the canary (:func:`shadow_to_canary`),
or it is dropped (:func:`end_shadow`). Any other change of the state (publish, promote,
rollback) ends it too.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.central.publish import (
    FleetControl,
    Progress,
    PublishResult,
    model_key,
    model_ref,
    new_rollout_id,
)
from edgefleet.edge.bundle import open_bundle
from edgefleet.edge.mqtt import BrokerAddress
from edgefleet.edge.rollout import DEFAULT_LIFETIME, RolloutState
from edgefleet.edge.topics import DEFAULT_PREFIX
from edgefleet.errors import InputError


def _control(
    fleet: str,
    broker: BrokerAddress,
    private_key: Ed25519PrivateKey,
    prefix: str,
    state_file: Path | None,
    progress: Progress,
    lifetime: timedelta,
) -> FleetControl:
    return FleetControl(
        fleet,
        broker,
        private_key,
        prefix=prefix,
        state_file=state_file,
        progress=progress,
        lifetime=lifetime,
    )


def check_percent(percent: int, flag: str = "--percent") -> None:
    if type(percent) is not int or not 1 <= percent <= 100:
        raise InputError(f"{flag} must be a percentage from 1 to 100, not {percent!r}")


def publish_shadow(
    bundle_dir: str | Path,
    fleet: str,
    broker: BrokerAddress,
    private_key: Ed25519PrivateKey,
    *,
    shadow_percent: int,
    prefix: str = DEFAULT_PREFIX,
    state_file: Path | None = None,
    progress: Progress = lambda _: None,
    lifetime: timedelta = DEFAULT_LIFETIME,
) -> PublishResult:
    """Publish a bundle as the fleet's challenger, scored in shadow by ``shadow_percent`` %
    of the devices that run the stable model. Stable must exist, no canary may be out, and
    the challenger must be higher than stable (it is meant to replace it)."""
    check_percent(shadow_percent)
    control = _control(fleet, broker, private_key, prefix, state_file, progress, lifetime)
    bundle = open_bundle(bundle_dir, control.trusted)
    ref, contents = model_ref(bundle)
    progress(f"{ref.label}: signature and {len(ref.artifacts)} artifact(s) verified")
    with control.connected():
        current, models = control.current()
        _check_shadowable(current, ref.version_tuple, ref.label, fleet)
        assert current is not None
        sent, topics = control.send_contents(contents)
        state = control.commit(
            current,
            {**models, model_key(ref): ref},
            stable=current.stable,
            canary=None,
            canary_percent=0,
            rollback=False,
            rollout_id=new_rollout_id(),
            challenger=ref,
            shadow_percent=shadow_percent,
        )
    progress(
        f"rollout state {state.sequence}: {ref.label} in shadow on {shadow_percent}% of {fleet}"
    )
    return PublishResult(model=ref, state=state, bytes_sent=sent, topics=topics)


def _check_shadowable(
    current: RolloutState | None, version: tuple[int, int, int], label: str, fleet: str
) -> None:
    if current is None or current.stable is None:
        raise InputError(
            f"fleet {fleet} has no stable model to compare {label} with: publish one first "
            f"(edgefleet publish BUNDLE --fleet {fleet})"
        )
    if current.canary is not None:
        raise InputError(
            f"fleet {fleet} has a canary out ({current.canary.label}): promote or roll it "
            "back before a shadow test"
        )
    if version <= current.stable.version_tuple:
        raise InputError(
            f"{label} is not higher than the stable {current.stable.label}: a challenger "
            "is a candidate to replace it"
        )


def shadow_to_canary(
    fleet: str,
    broker: BrokerAddress,
    private_key: Ed25519PrivateKey,
    *,
    canary_percent: int,
    prefix: str = DEFAULT_PREFIX,
    state_file: Path | None = None,
    progress: Progress = lambda _: None,
    lifetime: timedelta = DEFAULT_LIFETIME,
) -> RolloutState:
    """The challenger becomes the canary for ``canary_percent`` % of the devices (the next
    stage: now devices act on its answers)."""
    check_percent(canary_percent, "--canary")
    control = _control(fleet, broker, private_key, prefix, state_file, progress, lifetime)
    with control.connected():
        current, models = control.current()
        if current is None or current.challenger is None:
            raise InputError(f"fleet {fleet} has no challenger in shadow")
        progress(f"{current.challenger.label}: from shadow to canary on {canary_percent}%")
        return control.commit(
            current,
            models,
            stable=current.stable,
            canary=current.challenger,
            canary_percent=canary_percent,
            rollback=False,
            rollout_id=new_rollout_id(),
        )


def end_shadow(
    fleet: str,
    broker: BrokerAddress,
    private_key: Ed25519PrivateKey,
    *,
    prefix: str = DEFAULT_PREFIX,
    state_file: Path | None = None,
    progress: Progress = lambda _: None,
    lifetime: timedelta = DEFAULT_LIFETIME,
) -> RolloutState:
    """Drop the challenger: the shadow devices stop scoring with it (nothing they acted on
    changes, so no rollback permission is needed)."""
    control = _control(fleet, broker, private_key, prefix, state_file, progress, lifetime)
    with control.connected():
        current, models = control.current()
        if current is None or current.challenger is None:
            raise InputError(f"fleet {fleet} has no challenger in shadow")
        progress(f"dropping challenger {current.challenger.label}")
        return control.commit(
            current,
            models,
            stable=current.stable,
            canary=current.canary,
            canary_percent=current.canary_percent,
            rollback=current.rollback,
        )

"""The freshness of a signed rollout state (docs/architecture.md §6): the serial, the expiry,
the clock skew a device allows, when the publisher re-signs, and a property test that no
bytes on the rollout topic get further than a verified state or a refusal."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.cli.lifetime import parse_lifetime
from edgefleet.edge.rollout import (
    CLOCK_SKEW,
    DEFAULT_LIFETIME,
    ModelRef,
    RolloutState,
    check_fresh,
    check_sequence,
    is_expired,
    needs_refresh,
    sign_rollout,
    verify_rollout,
)
from edgefleet.edge.signing import TrustedKey, sign
from edgefleet.errors import RolloutError, SignatureError, StaleRolloutError

KEY = Ed25519PrivateKey.generate()
TRUSTED = [TrustedKey.from_public_key(KEY.public_key())]
ISSUED = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def state(sequence: int = 4, lifetime: timedelta = DEFAULT_LIFETIME) -> RolloutState:
    return RolloutState(
        fleet="shops",
        rollout_id="r1",
        sequence=sequence,
        stable=ModelRef("churn", "1.0.0", "a" * 64, {"onnx": "c" * 64}, "e" * 64),
        canary=None,
        canary_percent=0,
        rollback=False,
        issued=ISSUED.isoformat(),
        expires=(ISSUED + lifetime).isoformat(),
    )


# -- the codec ----------------------------------------------------------------------------


def test_serial_and_expiry_travel_signed() -> None:
    original = state()
    received = verify_rollout(sign_rollout(original, KEY), TRUSTED, fleet="shops")
    assert received == original
    assert (received.sequence, received.expires_at) == (4, ISSUED + timedelta(days=7))
    assert json.loads(original.to_bytes())["expires"] == "2025-03-08T12:00:00+00:00"


@pytest.mark.parametrize(
    ("expires", "message"),
    [
        ("2025-03-08T12:00:00", "'expires' '2025-03-08T12:00:00' lacks a time zone"),
        ("next week", "is not an ISO 8601 time"),
        (
            "2025-03-01T12:00:00+00:00",
            r"expires \(2025-03-01T12:00:00\+00:00\) before it is issued",
        ),
        ("2025-02-01T12:00:00+00:00", "before it is issued"),
    ],
)
def test_an_expiry_that_cannot_be_judged_is_refused(expires: str, message: str) -> None:
    with pytest.raises(RolloutError, match=message):
        replace(state(), expires=expires)


def test_a_state_without_an_expiry_is_refused() -> None:
    """Signed before states carried one (or by a publisher that left it out): no device
    can tell how old it is, so none follows it."""
    raw = state().to_dict()
    del raw["expires"]
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    envelope = {"state": text, "signature": json.loads(sign(text.encode(), KEY))}
    with pytest.raises(RolloutError, match="lacks the field 'expires'"):
        verify_rollout(json.dumps(envelope).encode(), TRUSTED)


def test_a_lower_serial_is_stale_the_same_one_a_no_op() -> None:
    assert check_sequence(state(5), None) is True
    assert check_sequence(state(5), 4) is True
    assert check_sequence(state(5), 5) is False
    with pytest.raises(StaleRolloutError, match="sequence 5, but 6 was already accepted"):
        check_sequence(state(5), 6)


# -- expiry and clock skew ----------------------------------------------------------------


def test_expiry_allows_five_minutes_of_clock_skew() -> None:
    """A device whose clock runs a few minutes ahead of the publisher's still accepts a
    state in its last minutes; past the skew it refuses, saying what to run."""
    expires = ISSUED + DEFAULT_LIFETIME
    assert timedelta(minutes=5) == CLOCK_SKEW
    check_fresh(state(), expires)
    check_fresh(state(), expires + timedelta(minutes=4, seconds=59))
    assert not is_expired(state(), expires + CLOCK_SKEW)
    with pytest.raises(StaleRolloutError) as refused:
        check_fresh(state(), expires + timedelta(minutes=5, seconds=1))
    message = str(refused.value)
    assert "rollout state 4 expired at 2025-03-08T12:00:00+00:00" in message
    assert "this device's clock: 2025-03-08T12:05:01+00:00" in message
    assert "edgefleet rollout refresh --fleet shops" in message
    with pytest.raises(StaleRolloutError):
        check_fresh(state(), expires + timedelta(seconds=1), skew=timedelta(0))


def test_a_device_clock_behind_the_publisher_accepts_a_state_issued_in_its_future() -> None:
    """Only the expiry is judged: a device an hour behind must not refuse a fresh state."""
    check_fresh(state(), ISSUED - timedelta(hours=1))


def test_refresh_is_due_when_a_third_of_the_lifetime_is_left() -> None:
    assert not needs_refresh(state(), ISSUED)
    assert not needs_refresh(state(), ISSUED + timedelta(days=4, hours=15))
    assert needs_refresh(state(), ISSUED + timedelta(days=4, hours=17))
    assert needs_refresh(state(), ISSUED + timedelta(days=30))  # expired: due too
    short = state(lifetime=timedelta(hours=3))
    assert (
        needs_refresh(short, ISSUED + timedelta(hours=1)),
        needs_refresh(short, ISSUED + timedelta(hours=2, minutes=1)),
    ) == (False, True)


def test_lifetime_option() -> None:
    assert parse_lifetime("7d") == DEFAULT_LIFETIME  # the CLI's default, without importing it
    assert parse_lifetime(" 36H ") == timedelta(hours=36)
    assert parse_lifetime("90m") == timedelta(minutes=90)
    for wrong in ("7", "d", "1.5d", "-1d", "7 days"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
            parse_lifetime(wrong)


# -- any bytes on the rollout topic ---------------------------------------------------------

NOW = ISSUED + timedelta(days=1)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _judge(payload: bytes) -> RolloutState:
    """What a device does with a rollout message before following it."""
    received = verify_rollout(payload, TRUSTED, fleet="shops")
    check_fresh(received, NOW)
    return received


def _signed(text: str) -> bytes:
    """An envelope the trusted key signed: whatever is inside passed the signature check,
    so the state's own validation is all that stands between it and a device."""
    signature = json.loads(sign(text.encode("utf-8"), KEY))
    return json.dumps({"state": text, "signature": signature}).encode()


def _mutated(field: str, value: Any) -> bytes:
    raw = state().to_dict()
    raw[field] = value
    return _signed(json.dumps(raw, sort_keys=True, separators=(",", ":")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.just(sign_rollout(state(), KEY)),  # the accepted case is reached too
        st.binary(max_size=600),
        _json.map(lambda v: json.dumps(v).encode()),
        st.builds(
            lambda state, signature: json.dumps({"state": state, "signature": signature}).encode(),
            st.text(max_size=60) | _json,
            _json,
        ),
        _json.map(lambda v: _signed(json.dumps(v))),
        st.builds(
            _mutated,
            st.sampled_from(sorted(state().to_dict())),
            _json,
        ),
        st.builds(
            lambda value: _mutated("stable", {**state().to_dict()["stable"], **value}),
            st.dictionaries(
                st.sampled_from(
                    ["name", "version", "artifacts", "manifest_sha256", "signature_sha256"]
                ),
                _json,
                max_size=2,
            ),
        ),
    )
)
def test_any_bytes_are_a_verified_state_or_a_refusal(payload: bytes) -> None:
    try:
        received = _judge(payload)
    except (RolloutError, SignatureError):
        return  # the refusal: a device logs it, says so in its status, keeps its model
    assert isinstance(received, RolloutState)
    assert received.fleet == "shops"
    assert received.sequence >= 0
    assert not is_expired(received, NOW)

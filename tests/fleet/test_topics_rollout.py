"""Topic names and the signed rollout state: validation, signatures, canary membership."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.edge.rollout import (
    ModelRef,
    RolloutError,
    RolloutState,
    check_sequence,
    check_version,
    in_canary,
    sign_rollout,
    target_for,
    verify_rollout,
)
from edgefleet.edge.signing import TrustedKey, sign
from edgefleet.edge.topics import Topics, validate_device_id
from edgefleet.errors import DowngradeError, InputError, SignatureError

SHA = "ab" * 32
KEY = Ed25519PrivateKey.generate()
TRUSTED = [TrustedKey.from_public_key(KEY.public_key())]


def ref(version: str, digit: str = "a") -> ModelRef:
    return ModelRef(
        name="churn",
        version=version,
        manifest_sha256=digit * 64,
        artifacts={"onnx": "c" * 64, "tflite": "d" * 64},
        signature_sha256="e" * 64,
    )


def state(**changes: object) -> RolloutState:
    base = RolloutState(
        fleet="shops",
        rollout_id="r1",
        sequence=3,
        stable=ref("1.0.0"),
        canary=ref("1.1.0", "b"),
        canary_percent=20,
        rollback=False,
        issued="2025-01-02T03:04:05+00:00",
        expires="2025-01-09T03:04:05+00:00",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# -- topics -------------------------------------------------------------------------------


def test_topic_layout() -> None:
    topics = Topics("shops")
    assert topics.rollout == "edgefleet/shops/rollout"
    assert topics.model(SHA) == f"edgefleet/shops/models/{SHA}"
    assert topics.report("pump-1") == "edgefleet/shops/devices/pump-1/report"
    assert topics.status("pump-1") == "edgefleet/shops/devices/pump-1/status"
    assert topics.all_reports == "edgefleet/shops/devices/+/report"
    assert topics.all_status == "edgefleet/shops/devices/+/status"
    assert Topics("shops", prefix="acme").rollout == "acme/shops/rollout"
    assert topics.device_id_from(topics.report("pump-1")) == "pump-1"
    assert topics.device_id_from(topics.status("a.b_c-9")) == "a.b_c-9"
    assert topics.sha256_from(topics.model(SHA)) == SHA


@pytest.mark.parametrize("name", ["", "a+b", "a#", "a/b", "x" * 65, "$SYS", "a\nb", "tab\t"])
def test_bad_fleet_names_and_prefixes_are_refused(name: str) -> None:
    with pytest.raises(InputError):
        Topics(name)
    with pytest.raises(InputError):
        Topics("shops", prefix=name)


@pytest.mark.parametrize(
    "topic",
    [
        "edgefleet/shops/rollout",
        "edgefleet/other/devices/pump-1/report",
        "edgefleet/shops/devices/pump-1/telemetry",
        "edgefleet/shops/devices/pump-1/report/extra",
        "edgefleet/shops/devices/+/report",
        "edgefleet/shops/devices//report",
    ],
)
def test_device_id_from_refuses_other_topics(topic: str) -> None:
    with pytest.raises(InputError, match="not a device report or status topic"):
        Topics("shops").device_id_from(topic)


def test_device_ids() -> None:
    for good in ("a", "pump-17", "A.b_C-9", "x" * 64):
        assert validate_device_id(good) == good
    for bad in ("", "x" * 65, "a b", "a/b", "a+b", "#", "pümp", "a\n"):
        with pytest.raises(InputError, match="1 to 64 characters"):
            validate_device_id(bad)
    with pytest.raises(InputError):
        Topics("shops").report("a/b")
    with pytest.raises(InputError, match="not a sha256"):
        Topics("shops").model("ABC")


# -- signing and verification ---------------------------------------------------------------


def test_sign_and_verify_round_trip() -> None:
    original = state()
    payload = sign_rollout(original, KEY)
    assert verify_rollout(payload, TRUSTED) == original
    assert verify_rollout(payload, TRUSTED, fleet="shops") == original
    # The signed bytes are exactly the state's canonical bytes.
    envelope = json.loads(payload)
    assert envelope["state"].encode() == original.to_bytes()
    assert set(envelope) == {"state", "signature"}


def test_tampered_state_is_refused() -> None:
    envelope = json.loads(sign_rollout(state(), KEY))
    envelope["state"] = envelope["state"].replace('"canary_percent":20', '"canary_percent":90')
    with pytest.raises(SignatureError, match="bad signature"):
        verify_rollout(json.dumps(envelope).encode(), TRUSTED)


def test_wrong_key_is_refused() -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError, match="not trusted"):
        verify_rollout(sign_rollout(state(), other), TRUSTED)


def test_unsigned_state_is_refused() -> None:
    payload = json.dumps({"state": state().to_bytes().decode()}).encode()
    with pytest.raises(SignatureError, match="unsigned"):
        verify_rollout(payload, TRUSTED)


def test_oversize_message_is_refused_before_parsing() -> None:
    payload = sign_rollout(state(), KEY)
    with pytest.raises(RolloutError, match="more than the limit of 100 bytes"):
        verify_rollout(payload, TRUSTED, max_bytes=100)
    with pytest.raises(RolloutError, match="more than the limit of 65,536 bytes"):
        verify_rollout(b"{" + b" " * 70_000 + b"}", TRUSTED)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe\x00garbage",
        b"not json",
        b"[]",
        b"{}",
        b'{"state": 7, "signature": {}}',
        b"[" * 30_000 + b"]" * 30_000,
    ],
)
def test_garbage_is_refused(payload: bytes) -> None:
    with pytest.raises(RolloutError):
        verify_rollout(payload, TRUSTED)


def test_validly_signed_but_invalid_state_is_refused() -> None:
    """The signature is checked first, the content after: a signed mistake is still
    refused with its reason."""
    raw = state().to_dict()
    raw["canary_percent"] = 300
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    envelope = {"state": text, "signature": json.loads(sign(text.encode(), KEY))}
    with pytest.raises(RolloutError, match="canary percent must be an integer from 0 to 100"):
        verify_rollout(json.dumps(envelope).encode(), TRUSTED)


def test_state_for_another_fleet_is_refused() -> None:
    with pytest.raises(RolloutError, match="for fleet 'shops', not 'farms'"):
        verify_rollout(sign_rollout(state(), KEY), TRUSTED, fleet="farms")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"canary_percent": 101}, "from 0 to 100"),
        ({"canary_percent": True}, "from 0 to 100"),
        ({"canary": None}, "canary percent without a canary"),
        ({"sequence": -1}, "sequence"),
        ({"sequence": True}, "sequence"),
        ({"issued": "2025-01-02T03:04:05"}, "time zone"),
        ({"issued": "yesterday"}, "ISO 8601"),
        ({"rollout_id": "a/b"}, "invalid rollout state"),
        ({"fleet": "a+b"}, "invalid rollout state"),
        ({"rollback": 1}, "rollback"),
    ],
)
def test_invalid_states_cannot_be_built(changes: dict[str, object], message: str) -> None:
    with pytest.raises(RolloutError, match=message):
        state(**changes)


def test_model_refs_validate_themselves() -> None:
    with pytest.raises(RolloutError, match="not a sha256"):
        replace(ref("1.0.0"), manifest_sha256="nothex")
    with pytest.raises(RolloutError, match=r"MAJOR\.MINOR\.PATCH"):
        replace(ref("1.0.0"), version="1.0")
    with pytest.raises(RolloutError, match="format 'exe'"):
        replace(ref("1.0.0"), artifacts={"exe": SHA})
    artifacts = {"onnx": SHA}
    frozen = replace(ref("1.0.0"), artifacts=artifacts)
    artifacts["onnx"] = "0" * 64
    assert frozen.artifacts["onnx"] == SHA  # a copy, not the caller's dict


# -- canary membership ----------------------------------------------------------------------


def test_canary_membership_is_the_documented_hash() -> None:
    for device in ("pump-1", "pump-2", "x"):
        bucket = int.from_bytes(hashlib.sha256(f"r9:{device}".encode()).digest()[:8], "big") % 100
        for percent in (0, 1, 37, 99, 100):
            assert in_canary(device, "r9", percent) is (bucket < percent)
            assert in_canary(device, "r9", percent) is in_canary(device, "r9", percent)


@pytest.mark.parametrize("percent", [1, 5, 25, 50, 90])
def test_canary_share_is_the_percentage(percent: int) -> None:
    devices = [f"device-{i}" for i in range(10_000)]
    share = sum(in_canary(d, "rollout-7", percent) for d in devices) / len(devices)
    assert abs(share - percent / 100) <= 0.02


def test_raising_the_percentage_only_adds_devices() -> None:
    devices = [f"d{i}" for i in range(2000)]
    at_10 = {d for d in devices if in_canary(d, "r1", 10)}
    at_30 = {d for d in devices if in_canary(d, "r1", 30)}
    assert at_10 < at_30


def test_a_new_rollout_draws_a_new_sample() -> None:
    devices = [f"d{i}" for i in range(10_000)]
    first = {d for d in devices if in_canary(d, "r1", 10)}
    second = {d for d in devices if in_canary(d, "r2", 10)}
    # Independent samples overlap by ~1 % of the fleet, not 10 %.
    assert len(first & second) / len(devices) < 0.02


def test_bad_percentages_are_refused() -> None:
    for percent in (-1, 101, 5.5):
        with pytest.raises(InputError):
            in_canary("d", "r", percent)  # type: ignore[arg-type]


def test_target_for() -> None:
    everyone = state(canary_percent=100)
    nobody = state(canary_percent=0)
    assert target_for(everyone, "pump-1") == (everyone.canary, "canary")
    assert target_for(nobody, "pump-1") == (nobody.stable, "stable")
    plain = state(canary=None, canary_percent=0)
    assert target_for(plain, "pump-1") == (plain.stable, "stable")
    empty = state(stable=None, canary=None, canary_percent=0)
    assert target_for(empty, "pump-1") == (None, "stable")
    devices = [f"pump-{i}" for i in range(1000)]
    cohorts = [target_for(state(), d)[1] for d in devices]
    assert 150 <= cohorts.count("canary") <= 250  # 20 % of 1000


def test_sequence_and_version_rules() -> None:
    current = state(sequence=5)
    assert check_sequence(current, None) is True
    assert check_sequence(current, 4) is True
    assert check_sequence(current, 5) is False
    with pytest.raises(RolloutError, match="stale rollout state: sequence 5, but 6"):
        check_sequence(current, 6)
    check_version(current, ref("1.1.0"), "1.0.0")
    with pytest.raises(DowngradeError, match="without a signed rollback"):
        check_version(current, ref("1.0.0"), "1.1.0")
    check_version(state(rollback=True), ref("1.0.0"), "1.1.0")

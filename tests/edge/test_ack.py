"""The end-to-end ack message: ranges from sequences, a strict decoder for hostile bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.edge.ack import MAX_ACK_RANGES, Ack
from edgefleet.errors import InputError


def test_sequences_become_merged_ranges_and_round_trip() -> None:
    (ack,) = Ack.from_sequences("pos-1", [5, 1, 2, 3, 3, 9, 10])
    assert ack.ranges == ((1, 3), (5, 5), (9, 10))
    assert ack.count == 6
    assert ack.covers(2)
    assert ack.covers(10)
    assert not ack.covers(4)
    assert Ack.decode(ack.encode()) == ack
    assert Ack.from_sequences("pos-1", []) == []


def test_many_holes_split_into_several_acks() -> None:
    acks = Ack.from_sequences("d", range(0, 4 * MAX_ACK_RANGES + 2, 2))
    assert [len(a.ranges) for a in acks] == [MAX_ACK_RANGES, MAX_ACK_RANGES, 1]
    assert sum(a.count for a in acks) == 2 * MAX_ACK_RANGES + 1


@given(st.sets(st.integers(min_value=0, max_value=10**6), max_size=300))
def test_ranges_cover_exactly_the_sequences(sequences: set[int]) -> None:
    covered = {
        s
        for ack in Ack.from_sequences("d", sequences)
        for low, high in Ack.decode(ack.encode()).ranges
        for s in range(low, high + 1)
    }
    assert covered == sequences


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"[1,", "not JSON"),
        (b"[]", "JSON object, not array"),
        (b'{"v":1,"device_id":"d","ranges":[[1,2]],"x":1}', "unknown field 'x'"),
        (b'{"v":1,"device_id":"d"}', "lacks the field 'ranges'"),
        (b'{"v":2,"device_id":"d","ranges":[[1,2]]}', "version 2"),
        (b'{"v":1,"device_id":"d/#","ranges":[[1,2]]}', "device_id"),
        (b'{"v":1,"device_id":"d","ranges":[[2,1]]}', "runs upwards"),
        (b'{"v":1,"device_id":"d","ranges":[[-1,1]]}', "integer from 0"),
        (b'{"v":1,"device_id":"d","ranges":[[1.5,2]]}', "integer from 0"),
        (b'{"v":1,"device_id":"d","ranges":[[true,2]]}', "integer from 0"),
        (b'{"v":1,"device_id":"d","ranges":[[1,2,3]]}', "not 3 values"),
        (b'{"v":1,"device_id":"d","ranges":[]}', "1 to 4096 ranges"),
        (b'{"v":1,"device_id":"d","ranges":[[1,NaN]]}', "NaN"),
        (b'{"v":1,"v":1,"device_id":"d","ranges":[[1,2]]}', "appears twice"),
        (b'{"v":1,"device_id":"d","ranges":' + b"[" * 5000 + b"]" * 5000 + b"}", "JSON"),
        (b" " * (200 * 1024), "exceeds"),
    ],
)
def test_hostile_acks_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        Ack.decode(payload)


@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_an_ack_or_a_refusal(payload: bytes) -> None:
    try:
        ack = Ack.decode(payload)
    except InputError:
        return
    assert json.loads(ack.encode())["device_id"] == ack.device_id

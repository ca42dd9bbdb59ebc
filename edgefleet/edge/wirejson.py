"""Strict JSON for messages that arrive from the network (reports, acks, status).

Every such payload is hostile until checked: :func:`loads_strict` checks the size before
parsing and refuses what parsers disagree on or a message never holds: text that is not
UTF-8, NaN and Infinity, a key repeated in one object (read differently by different
parsers), integers of more digits than Python converts, and arrays nested thousands deep.
Each refusal is an :class:`edgefleet.errors.InputError` that names the message kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NoReturn

from edgefleet.errors import InputError

__all__ = ["exact_keys", "json_type", "loads_strict"]


class _RefusedJSONError(ValueError):
    """JSON that parses but that no edgefleet message holds."""


def _refuser(what: str) -> Callable[[str], NoReturn]:
    def refuse(name: str) -> NoReturn:
        raise _RefusedJSONError(f"{name} is not a number a {what} may hold")

    return refuse


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _RefusedJSONError(f"the key {key[:40]!r} appears twice in one object")
        result[key] = value
    return result


def loads_strict(payload: object, *, max_bytes: int, what: str) -> Any:
    """Parse ``payload`` (bytes) as strict JSON; ``what`` names the message in errors."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise InputError(f"a {what} payload is bytes, not {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise InputError(f"{what} payload of {len(payload)} bytes exceeds {max_bytes}")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{what} payload is not UTF-8 text (byte {error.start})") from None
    try:
        return json.loads(text, parse_constant=_refuser(what), object_pairs_hook=_no_repeats)
    except _RefusedJSONError as error:
        raise InputError(f"{what} payload: {error}") from None
    except json.JSONDecodeError as error:
        raise InputError(
            f"{what} payload is not JSON: {error.msg} at character {error.pos}"
        ) from None
    except (ValueError, RecursionError) as error:
        raise InputError(f"{what} payload is not usable JSON: {type(error).__name__}") from None


def json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def exact_keys(raw: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """:class:`InputError` unless ``raw`` has exactly ``keys``."""
    missing = [k for k in keys if k not in raw]
    if missing:
        raise InputError(f"{where} lacks the field {missing[0]!r}")
    unknown = [k for k in raw if k not in keys]
    if unknown:
        raise InputError(f"{where} has an unknown field {unknown[0][:40]!r}")

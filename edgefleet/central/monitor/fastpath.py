"""The fast path of report validation (docs/architecture.md §5): the same verdicts as
:meth:`edgefleet.edge.report.Report.decode`, at about a third of its cost.

Decoding a 4 KB report through :class:`Report` costs about 330 us, which alone would cap a
monitor near 3,000 reports/s; :func:`fast_decode` checks the same rules in about a third of
that: booleans and negative numbers are ruled out on the bytes before parsing, then whole
columns of the parsed JSON are checked at once by type sets, sums and comparisons that run
in C. It only ever *accepts*: anything it doubts goes through ``Report.decode``, which
refuses with the exact reason (or accepts, if the fast path was merely cautious).
``tests/monitor/test_store.py`` holds the two to the same verdicts.

The store uses it twice: on every message before it is stored, and on every stored report
before it is merged (rows written by an older edgefleet or by hand are not trusted).
"""

from __future__ import annotations

import json
import operator
from itertools import repeat
from typing import Any

from edgefleet.edge.manifest import parse_version
from edgefleet.edge.report import (
    COHORTS,
    MAX_FEATURES,
    MAX_REPORT_BYTES,
    MAX_TIME,
    REPORT_FIELDS,
    SCHEMA_VERSION,
)
from edgefleet.edge.sketch import (
    LATENCY_BUCKETS,
    MAX_BINS,
    MAX_COUNT,
    MAX_NAME_LENGTH,
    SCORE_BINS,
    check_name,
)
from edgefleet.edge.topics import check_identifier
from edgefleet.errors import InputError

__all__ = ["fast_check", "fast_decode", "may_hold_negative"]


class _RefusedError(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _RefusedError(name)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # dict() in C, then one length comparison: a repeated key shrinks the dict.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _RefusedError("repeated key")
    return result


# The fast path accepts exactly the report's fields, no more, no fewer.
_FIELD_SET = frozenset(REPORT_FIELDS)
_NUMERIC_KEYS = frozenset(("name", "kind", "bins", "missing", "out_of_range"))
_CATEGORICAL_KEYS = frozenset(("name", "kind", "bins", "missing", "unknown"))
_SCORE_KEYS = frozenset(("counts", "by_label"))
_LATENCY_KEYS = frozenset(("counts",))
_TIME_TYPES = (int, float)
_JSON_SPACE = b" \t\r\n"
_BEFORE_A_VALUE = b":[,"
_MAX_DASHES = 64
_INT_ONLY = {int}
_STR_ONLY = {str}
_LIST_ONLY = {list}
_DICT_ONLY = {dict}


def fast_decode(payload: bytes | bytearray | memoryview) -> dict[str, Any] | None:
    """The parsed report if it certainly passes ``Report.decode``; None if in any doubt."""
    data = bytes(payload)
    # A JSON boolean is always spelled as these very bytes, and a report holds none: with
    # neither present, every int the parser returns is a real int, never a bool, and the
    # count checks below can rely on sum() alone for types (see _sum_counts).
    if len(data) > MAX_REPORT_BYTES or b"true" in data or b"false" in data:
        return None
    if may_hold_negative(data):
        return None
    try:
        raw = json.loads(
            data.decode("utf-8"), parse_constant=_refuse_constant, object_pairs_hook=_unique_keys
        )
        return raw if fast_check(raw) else None
    # ValueError covers UnicodeDecodeError and JSONDecodeError; the others are what the
    # checks raise on values of the wrong type (sum of a string, check_name of a list).
    except (ValueError, RecursionError, InputError, TypeError, KeyError, OverflowError):
        return None


def may_hold_negative(data: bytes) -> bool:
    """False only if no number in the JSON text is negative: a negative number starts with
    '-' right after ':', '[' or ',' (whitespace between allowed). A report has a few dashes,
    in names ("pos-0042"); a text with many goes the slow way rather than loop here. (A
    regular expression over the ~1,000 commas of a report costs 30 us; this, about 1.)"""
    if data.count(b"-") > _MAX_DASHES:
        return True
    at = data.find(b"-")
    while at != -1:
        before = at - 1
        while before >= 0 and data[before] in _JSON_SPACE:
            before -= 1
        if before < 0 or data[before] in _BEFORE_A_VALUE:
            return True
        at = data.find(b"-", at + 1)
    return False


def _sum_counts(values: Any, length: int | None) -> int | None:
    """The total of a JSON array of 1..MAX_BINS counts (exactly ``length`` if given), or
    None. Types by sum() alone: a string, null, array or object raises TypeError, a float
    makes the sum a float, and booleans were excluded before parsing. Each count is at most
    the total, so a total within MAX_COUNT bounds them all, negatives being excluded
    before parsing."""
    if type(values) is not list or not 0 < len(values) <= MAX_BINS:
        return None
    if length is not None and len(values) != length:
        return None
    total = sum(values)
    if type(total) is not int or total > MAX_COUNT:
        return None
    return total


def _is_count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT


def _score_sketch_ok(raw: Any) -> int | None:
    """The total of a valid score sketch, else None."""
    if type(raw) is not dict or raw.keys() != _SCORE_KEYS:
        return None
    counts, by_label = raw["counts"], raw["by_label"]
    if type(by_label) is not list or len(by_label) != 2:
        return None
    negative, positive = by_label
    total = _sum_counts(counts, SCORE_BINS)
    if (
        total is None
        or _sum_counts(negative, SCORE_BINS) is None
        or _sum_counts(positive, SCORE_BINS) is None
    ):
        return None
    if any(map(operator.gt, map(operator.add, negative, positive), counts)):
        return None
    return total


def fast_check(raw: Any) -> bool:
    """True only if :meth:`Report.from_dict` accepts ``raw`` (see the module docstring);
    the checks follow report.py's and sketch.py's, rule for rule, a whole column of
    features at a time. Booleans and negative numbers must have been excluded before
    parsing (see :func:`fast_decode`)."""
    if type(raw) is not dict or raw.keys() != _FIELD_SET:
        return False
    version = raw["schema_version"]
    if type(version) is not int or version != SCHEMA_VERSION:
        return False
    check_identifier(raw["fleet"], "fleet")
    check_identifier(raw["device_id"], "device_id")
    check_identifier(raw["device_group"], "device_group")
    check_name(raw["model_name"], "model_name")
    parse_version(raw["model_version"])
    scored = raw["scored"]
    if not (
        _is_count(raw["sequence"])
        and _is_count(scored)
        and _is_count(raw["failed"])
        and _is_count(raw["dropped_reports"])
    ):
        return False
    start, end = raw["window_start"], raw["window_end"]
    # type() excludes bool; comparing ints with floats is exact in Python (no float() of a
    # 400-digit int, which overflows); NaN fails every comparison.
    if type(start) not in _TIME_TYPES or type(end) not in _TIME_TYPES:
        return False
    if not (0 <= start <= end <= MAX_TIME):
        return False
    cohort = raw["cohort"]
    if type(cohort) is not str or cohort not in COHORTS:
        return False
    features = raw["features"]
    if type(features) is not list or not 0 < len(features) <= MAX_FEATURES:
        return False
    if set(map(type, features)) != _DICT_ONLY:
        return False
    numeric = [f for f in features if f.get("kind") == "numeric"]
    categorical = [f for f in features if f.get("kind") == "categorical"]
    if len(numeric) + len(categorical) != len(features):
        return False
    if not all(map(operator.eq, map(dict.keys, numeric), repeat(_NUMERIC_KEYS))):
        return False
    if not all(map(operator.eq, map(dict.keys, categorical), repeat(_CATEGORICAL_KEYS))):
        return False
    # Names (check_name's rules): text of 1..MAX_NAME_LENGTH printable characters without
    # edge spaces, and no name twice.
    names = [f["name"] for f in features]
    if set(map(type, names)) != _STR_ONLY or len(set(names)) != len(names):
        return False
    lengths = list(map(len, names))
    if min(lengths) < 1 or max(lengths) > MAX_NAME_LENGTH:
        return False
    if not "".join(names).isprintable() or list(map(str.strip, names)) != names:
        return False
    # Counts of each feature: bins (total of every bin), missing, out_of_range, unknown.
    bins = [f["bins"] for f in features]
    if set(map(type, bins)) != _LIST_ONLY:
        return False
    bin_counts = list(map(len, bins))
    if min(bin_counts) < 1 or max(bin_counts) > MAX_BINS:
        return False
    in_bins = list(map(sum, bins))  # TypeError for a string, null, array or object
    missing = [f["missing"] for f in features]
    out_of_range = [f.get("out_of_range", 0) for f in features]
    unknown = [f.get("unknown", 0) for f in features]
    scalars = in_bins + missing + out_of_range + unknown
    # A float anywhere makes its sum a float; every count is at most its bin total or
    # ``scored``, so the totals bound them all.
    if set(map(type, scalars)) != _INT_ONLY or min(scalars) < 0 or max(scalars) > MAX_COUNT:
        return False
    if any(map(operator.gt, out_of_range, in_bins)):
        return False
    totals = map(operator.add, map(operator.add, in_bins, missing), unknown)
    if any(map(operator.ne, totals, repeat(scored))):
        return False
    if _score_sketch_ok(raw["scores"]) != scored or _score_sketch_ok(raw["outcomes"]) is None:
        return False
    latency = raw["latency"]
    if type(latency) is not dict or latency.keys() != _LATENCY_KEYS:
        return False
    return _sum_counts(latency["counts"], LATENCY_BUCKETS) is not None

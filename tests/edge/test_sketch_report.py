"""Sketches and the report message: merging is an exact monoid, the builder bins exactly as
the reference profile does, and decoding refuses anything a device should not send."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import encode_features, load_training_table
from edgefleet.central.trainer import reference_profile
from edgefleet.edge.aggregate import Aggregate, merge, merge_all
from edgefleet.edge.profile import (
    SCORE_BINS,
    CategoricalProfile,
    NumericProfile,
    ReferenceProfile,
    ScoreProfile,
    categorical_counts,
    numeric_bin_counts,
    score_histogram,
)
from edgefleet.edge.report import MAX_FEATURES, Report
from edgefleet.edge.schema import (
    UNKNOWN_CODE,
    CategoricalFeature,
    FeatureSchema,
    NumericFeature,
)
from edgefleet.edge.sketch import (
    LATENCY_BUCKETS,
    LATENCY_MAX_SECONDS,
    LATENCY_MIN_SECONDS,
    LATENCY_RELATIVE_ERROR,
    FeatureSketch,
    Histogram,
    LatencySketch,
    ScoreSketch,
)
from edgefleet.edge.sketch_builder import SketchBuilder
from edgefleet.errors import InputError, ManifestError

# A small schema: bounded, unbounded, missing-allowed and clipped numerics, two vocabularies.
SCHEMA = FeatureSchema(
    features=(
        NumericFeature("tenure", minimum=0, maximum=100),
        NumericFeature("charges", minimum=0.1, maximum=500, allow_missing=True),
        NumericFeature("free", allow_missing=True),
        NumericFeature("calls", minimum=0, maximum=10, out_of_range="clip"),
        CategoricalFeature("contract", ("monthly", "yearly", "two-year")),
        CategoricalFeature("region", ("north", "south"), allow_missing=True),
    ),
    target="churn",
    classes=("No", "Yes"),
)
EDGES: dict[str, tuple[float, ...]] = {
    "tenure": (5.0, 12.0, 24.0, 48.0),
    "charges": (20.0, 50.5, 80.0),
    "free": (-1.0, 0.0, 1.0),
    "calls": (1.0, 2.0),
}


def _reference(schema: FeatureSchema = SCHEMA) -> ReferenceProfile:
    features: list[NumericProfile | CategoricalProfile] = []
    for feature in schema.features:
        if isinstance(feature, NumericFeature):
            edges = EDGES[feature.name]
            features.append(
                NumericProfile(feature.name, edges, (1,) * (len(edges) + 1), 0, 0.0, 1.0)
            )
        else:
            features.append(CategoricalProfile(feature.name, (1,) * len(feature.vocabulary), 0))
    empty = (0,) * SCORE_BINS
    return ReferenceProfile(
        rows=10, features=tuple(features), scores=ScoreProfile(empty, (empty, empty))
    )


REFERENCE = _reference()


def _reference_with(**edges: tuple[float, ...]) -> ReferenceProfile:
    saved = dict(EDGES)
    EDGES.update(edges)
    try:
        return _reference()
    finally:
        EDGES.clear()
        EDGES.update(saved)


LAYOUT = [
    (f.name, f.kind, len(EDGES[f.name]) + 1 if isinstance(f, NumericFeature) else len(f.vocabulary))
    for f in SCHEMA.features
]


def _builder(clock: Any = time.time) -> SketchBuilder:
    return SketchBuilder(SCHEMA, REFERENCE, model_name="churn", model_version="1.2.0", clock=clock)


def _random_rows(rng: np.random.Generator, n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Encoded rows with the awkward cases: NaN, out-of-range values, values on edges,
    unknown and NaN category codes."""
    columns = [
        rng.choice([-3.0, 0.0, 5.0, 12.0, 47.9, 48.0, 100.0, 250.0, math.inf], n),
        np.where(rng.random(n) < 0.2, np.nan, rng.uniform(-10, 600, n)),
        np.where(rng.random(n) < 0.1, np.nan, rng.normal(0, 2, n)),
        rng.choice([0.0, 1.0, 2.0, 10.0], n),
        rng.choice([0.0, 1.0, 2.0, UNKNOWN_CODE], n),
        rng.choice([0.0, 1.0, UNKNOWN_CODE, np.nan], n),
    ]
    return np.stack(columns, axis=1).astype(np.float32)


def _report(
    seed: int = 0,
    *,
    fleet: str = "acme",
    version: str = "1.2.0",
    reference: ReferenceProfile = REFERENCE,
    device_id: str = "dev-1",
    sequence: int = 1,
) -> Report:
    """A deterministic report, measured by a builder on random rows."""
    rng = np.random.default_rng(seed)
    builder = SketchBuilder(
        SCHEMA, reference, model_name="churn", model_version=version, clock=lambda: 1.7e9
    )
    builder.add(_random_rows(rng, 200), rng.random(200), rng.lognormal(-7, 1, 10), 3)
    builder.add_outcomes(rng.random(50), rng.integers(0, 2, 50))
    return Report.from_body(
        builder.snapshot(),
        fleet=fleet,
        device_id=device_id,
        sequence=sequence,
        cohort="stable",
        device_group="default",
    )


# --- strategies -----------------------------------------------------------------------


def _partition(rng: np.random.Generator, total: int, parts: int) -> list[int]:
    return [int(c) for c in rng.multinomial(total, np.full(parts, 1.0 / parts))]


@st.composite
def histograms(draw: st.DrawFn, bins: int = 7) -> Histogram:
    return Histogram(tuple(draw(st.lists(st.integers(0, 10**12), min_size=bins, max_size=bins))))


@st.composite
def feature_sketches(draw: st.DrawFn, kind: str) -> FeatureSketch:
    bins = draw(histograms(5))
    return FeatureSketch(
        name="f",
        kind="numeric" if kind == "numeric" else "categorical",
        bins=bins,
        missing=draw(st.integers(0, 10**9)),
        out_of_range=draw(st.integers(0, bins.total)) if kind == "numeric" else 0,
        unknown=draw(st.integers(0, 10**9)) if kind == "categorical" else 0,
    )


@st.composite
def score_sketches(draw: st.DrawFn) -> ScoreSketch:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    counts = rng.integers(0, 1000, SCORE_BINS)
    negative = rng.binomial(counts, 0.3)
    positive = rng.binomial(counts - negative, 0.5)
    return ScoreSketch(
        counts=Histogram.from_array(counts),
        by_label=(Histogram.from_array(negative), Histogram.from_array(positive)),
    )


@st.composite
def latency_sketches(draw: st.DrawFn) -> LatencySketch:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return LatencySketch.of(rng.lognormal(-7, 2, draw(st.integers(0, 50))))


IDENTIFIERS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)
TIMES = st.floats(0, 4e9, allow_nan=False)


@st.composite
def reports(draw: st.DrawFn, fleet: str = "acme", version: str = "1.2.0") -> Report:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scored = draw(st.integers(0, 10**6))
    features = []
    for name, kind, bins in LAYOUT:
        parts = _partition(rng, scored, bins + 2)
        in_bins = sum(parts[:bins])
        features.append(
            FeatureSketch(
                name=name,
                kind="numeric" if kind == "numeric" else "categorical",
                bins=Histogram(tuple(parts[:bins])),
                missing=parts[bins] + (parts[bins + 1] if kind == "numeric" else 0),
                out_of_range=int(rng.integers(0, in_bins + 1)) if kind == "numeric" else 0,
                unknown=parts[bins + 1] if kind == "categorical" else 0,
            )
        )
    start, end = sorted((draw(TIMES), draw(TIMES)))
    return Report(
        fleet=fleet,
        device_id=draw(IDENTIFIERS),
        sequence=draw(st.integers(0, 2**63 - 1)),
        window_start=start,
        window_end=end,
        model_name="churn",
        model_version=version,
        cohort=draw(st.sampled_from(["stable", "canary"])),
        device_group=draw(IDENTIFIERS),
        scored=scored,
        failed=draw(st.integers(0, 1000)),
        dropped_reports=draw(st.integers(0, 1000)),
        features=tuple(features),
        scores=ScoreSketch(
            counts=Histogram(tuple(_partition(rng, scored, SCORE_BINS))),
            by_label=(Histogram.empty(SCORE_BINS), Histogram.empty(SCORE_BINS)),
        ),
        outcomes=draw(score_sketches()),
        latency=draw(latency_sketches()),
    )


# --- merging is an exact, commutative monoid -----------------------------------------


@given(histograms(), histograms(), histograms())
def test_histogram_merge_is_associative_commutative_with_identity(
    a: Histogram, b: Histogram, c: Histogram
) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(b) == b.merge(a)
    assert a.merge(Histogram.empty(a.bins)) == a


@pytest.mark.parametrize("kind", ["numeric", "categorical"])
@given(data=st.data())
def test_feature_sketch_merge_laws(kind: str, data: st.DataObject) -> None:
    a, b, c = (data.draw(feature_sketches(kind)) for _ in range(3))
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(b) == b.merge(a)
    assert a.merge(FeatureSketch.empty("f", a.kind, 5)) == a
    assert a.merge(b).total == a.total + b.total


@given(score_sketches(), score_sketches(), score_sketches())
def test_score_sketch_merge_laws(a: ScoreSketch, b: ScoreSketch, c: ScoreSketch) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(b) == b.merge(a)
    assert a.merge(ScoreSketch.empty()) == a


@given(latency_sketches(), latency_sketches(), latency_sketches())
def test_latency_sketch_merge_laws(a: LatencySketch, b: LatencySketch, c: LatencySketch) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(b) == b.merge(a)
    assert a.merge(LatencySketch.empty()) == a


@given(
    st.lists(st.floats(0, 100, allow_nan=False), max_size=30),
    st.lists(st.floats(0, 100, allow_nan=False), max_size=30),
)
def test_latency_sketch_of_a_union_is_the_merge(a: list[float], b: list[float]) -> None:
    assert LatencySketch.of(a).merge(LatencySketch.of(b)) == LatencySketch.of(a + b)


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(reports(), reports(), reports())
def test_report_merge_is_associative_and_commutative(a: Report, b: Report, c: Report) -> None:
    left = merge(merge(a, b), c)
    assert left == merge(a, merge(b, c))
    assert merge(a, b) == merge(b, a)
    assert merge_all([a, b, c]) == left
    assert merge_all([c, Aggregate.of(a), b]) == left
    assert left.reports == 3
    assert left.devices == {a.device_id, b.device_id, c.device_id}
    assert left.scored == a.scored + b.scored + c.scored
    assert left.window_start == min(r.window_start for r in (a, b, c))
    assert left.window_end == max(r.window_end for r in (a, b, c))
    for sketch in left.features:
        assert sketch.total == left.scored


def test_merge_counts_a_device_once_across_aggregates() -> None:
    first, second = _report(1, sequence=1), _report(2, sequence=2)
    total = merge(Aggregate.of(first), Aggregate.of(second))
    assert (total.reports, total.n_devices) == (2, 1)
    assert total.to_dict()["devices"] == ["dev-1"]


def test_merge_refuses_other_model_versions_fleets_and_layouts() -> None:
    a = _report()
    with pytest.raises(InputError, match=r"model churn 1\.2\.0 with fleet 'acme' model churn 1\.3"):
        merge(a, _report(version="1.3.0"))
    with pytest.raises(InputError, match="fleet 'other'"):
        merge(a, _report(fleet="other"))
    other_bins = _reference_with(tenure=(10.0, 20.0))
    with pytest.raises(InputError, match="features differ"):
        merge(a, _report(reference=other_bins))
    with pytest.raises(InputError, match="5 and 4 bins"):
        Histogram((1,) * 5).merge(Histogram((1,) * 4))
    with pytest.raises(InputError, match="categorical feature 'x'"):
        FeatureSketch.empty("x", "numeric", 3).merge(FeatureSketch.empty("x", "categorical", 3))
    with pytest.raises(InputError, match="at least one"):
        merge_all([])


# --- encoding and decoding --------------------------------------------------------------


@settings(max_examples=60)
@given(reports())
def test_encode_decode_round_trip(report: Report) -> None:
    payload = report.encode()
    assert Report.decode(payload) == report
    assert b'": ' not in payload


GOOD = _report()


def _payload(change: Any = None) -> bytes:
    """A valid report as a dict, changed by ``change(raw)``, encoded as JSON."""
    raw = GOOD.to_dict()
    if change is not None:
        change(raw)
    return json.dumps(raw).encode()


def _set(path: str, value: Any) -> Any:
    def change(raw: Any) -> None:
        *parents, last = path.split(".")
        for part in parents:
            raw = raw[int(part)] if isinstance(raw, list) else raw[part]
        if isinstance(raw, list):
            raw[int(last)] = value
        else:
            raw[last] = value

    return change


def _delete(key: str) -> Any:
    return lambda raw: raw.pop(key)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(b"{" + b" " * 262_144 + b"}", "exceeds 262144", id="oversize"),
        pytest.param(b"not json", "not JSON", id="not-json"),
        pytest.param(b"\xff\xfe{}", "not UTF-8", id="not-utf8"),
        pytest.param(b"[1, 2]", "a JSON object, not array", id="not-object"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "not usable JSON", id="deep-nesting"),
        pytest.param(
            b'{"schema_version": 1, "scored": 1' + b"1" * 5000 + b"}", "not usable", id="huge-int"
        ),
        pytest.param(
            _payload(_set("schema_version", 5)),
            "schema_version 5 is not one of 1, 2, 3, 4",
            id="v5",
        ),
        pytest.param(
            _payload(_set("schema_version", 2)), "lacks the field 'segments'", id="v2-no-segments"
        ),
        pytest.param(_payload(_set("schema_version", "1")), "schema_version '1'", id="v-text"),
        pytest.param(
            _payload(_delete("schema_version")), "lacks the field 'schema_version'", id="no-v"
        ),
        pytest.param(_payload(_delete("latency")), "lacks the field 'latency'", id="missing"),
        pytest.param(_payload(_set("extra", 1)), "unknown field 'extra'", id="unknown-field"),
        pytest.param(_payload(_set("failed", -1)), "'failed' must be between 0", id="negative"),
        pytest.param(_payload(_set("failed", 2**63)), "'failed' must be between 0", id="int64"),
        pytest.param(_payload(_set("scores.counts.5", -1)), r"scores.counts'\[5\]", id="neg-bin"),
        pytest.param(
            _payload(_set("failed", 1.0)),
            "'failed' must be an integer count, not float",
            id="float",
        ),
        pytest.param(
            _payload(_set("failed", True)), "'failed' must be an integer count, not bool", id="bool"
        ),
        pytest.param(
            _payload(_set("sequence", "7")), "'sequence' must be an integer count", id="text"
        ),
        pytest.param(
            _payload(_set("features.0.bins.0", 2.5)), r"features\[0\].bins'\[0\]", id="float-bin"
        ),
        pytest.param(
            _payload(lambda r: r["scores"]["counts"].pop()),
            "'scores.counts' must have 100 bins, not 99",
            id="score-bins",
        ),
        pytest.param(
            _payload(lambda r: r["latency"]["counts"].append(0)),
            f"must have {LATENCY_BUCKETS} bins",
            id="latency-bins",
        ),
        pytest.param(
            _payload(_set("features.0.bins", [0] * 1001)),
            "1 to 1000 bins, not 1001",
            id="too-many-bins",
        ),
        pytest.param(_payload(_set("features.0.bins", [])), "1 to 1000 bins, not 0", id="no-bins"),
        pytest.param(
            _payload(lambda r: r["features"][0]["bins"].append(1)),
            "feature 'tenure' counts .* but the report scored",
            id="totals-disagree",
        ),
        pytest.param(
            _payload(lambda r: r.__setitem__("features", r["features"] * 50)),
            f"1 to {MAX_FEATURES}",
            id="too-many-features",
        ),
        pytest.param(
            _payload(lambda r: r["features"].append(r["features"][0])),
            "duplicate features 'tenure'",
            id="dup",
        ),
        pytest.param(
            _payload(_set("features.0.kind", "text")),
            r"'features\[0\]' must be an object of kind",
            id="kind",
        ),
        pytest.param(
            _payload(_set("features.4.out_of_range", 0)),
            "unknown field 'out_of_range'",
            id="cat-oor",
        ),
        pytest.param(
            _payload(_set("features.0.name", "a\x00b")), "control characters", id="ctl-name"
        ),
        pytest.param(
            _payload(_set("device_id", "../../x")), "'device_id' must be 1 to 64", id="traversal"
        ),
        pytest.param(
            _payload(_set("device_id", "x" * 10_000)), "'device_id' must be 1 to 64", id="10kb"
        ),
        pytest.param(
            _payload(_set("device_id", "dev\x07ice")), "'device_id' must be 1 to 64", id="ctl"
        ),
        pytest.param(
            _payload(_set("device_id", "dev-1\n")), "'device_id' must be 1 to 64", id="newline"
        ),
        pytest.param(
            _payload(_set("device_id", "dévice")), "'device_id' must be 1 to 64", id="unicode"
        ),
        pytest.param(
            _payload(_set("device_id", "a/+/#")), "'device_id' must be 1 to 64", id="mqtt"
        ),
        pytest.param(_payload(_set("device_id", "")), "'device_id' must be 1 to 64", id="empty"),
        pytest.param(_payload(_set("device_id", 7)), "'device_id' must be text", id="id-int"),
        pytest.param(_payload(_set("fleet", "..")), "'fleet' must be 1 to 64", id="fleet"),
        pytest.param(_payload(_set("cohort", "beta")), "'cohort' must be one of", id="cohort"),
        pytest.param(_payload(_set("model_version", "1.2")), "'model_version'", id="version"),
        pytest.param(
            _payload(_set("window_end", -1.0)), "'window_end' must be a finite time", id="time"
        ),
        pytest.param(
            _payload(lambda r: r.update(window_start=r["window_end"] + 1)),
            "before 'window_start'",
            id="window",
        ),
        pytest.param(
            _payload(_set("window_end", 1.0)).replace(b'"window_end": 1.0', b'"window_end": NaN'),
            "NaN is not a number a report may hold",
            id="nan",
        ),
        pytest.param(
            _payload(_set("window_end", 1.0)).replace(b'"window_end": 1.0', b'"window_end": 1e999'),
            "'window_end' must be a finite time",
            id="inf",
        ),
        pytest.param(
            _payload(_set("window_end", 10**400)),
            "'window_end' must be a finite time",
            id="huge-int-time",
        ),
        pytest.param(
            _payload().replace(b'"failed"', b'"failed": 0, "failed"', 1),
            "the key 'failed' appears twice",
            id="dup-key",
        ),
        pytest.param(
            _payload(_set("outcomes.by_label.0.3", 10**9)),
            "'outcomes': score sketch: a bin has more labelled scores than scores",
            id="labels>counts",
        ),
    ],
)
def test_decode_refuses(payload: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Report.decode(payload)


def test_decode_takes_a_smaller_bound_and_only_bytes() -> None:
    payload = GOOD.encode()
    assert Report.decode(bytearray(payload)) == GOOD
    with pytest.raises(InputError, match=f"{len(payload)} bytes exceeds 100"):
        Report.decode(payload, max_bytes=100)
    with pytest.raises(InputError, match="bytes, not str"):
        Report.decode(payload.decode())  # type: ignore[arg-type]


def test_report_validates_on_construction_too() -> None:
    with pytest.raises(InputError, match="'device_id'"):
        replace(GOOD, device_id="../x")
    with pytest.raises(InputError, match="bin 2 must be an integer count, not float64"):
        Histogram((1, 2, np.float64(3.0)))  # type: ignore[arg-type]


# --- the builder ------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sizes=st.lists(st.integers(0, 300), max_size=4))
def test_builder_counts_match_the_reference_binning(seed: int, sizes: list[int]) -> None:
    rng = np.random.default_rng(seed)
    builder = _builder()
    batches = [_random_rows(rng, n) for n in sizes]
    scores = [np.where(rng.random(n) < 0.05, np.nan, rng.random(n)) for n in sizes]
    for rows, p in zip(batches, scores, strict=True):
        builder.add(rows, p, 0.001)
    body = builder.snapshot()
    rows = np.concatenate([np.empty((0, 6), np.float32), *batches])
    p = np.concatenate([np.empty(0), *scores])
    finite = np.isfinite(p)
    rows, p = rows[finite], p[finite]
    assert body.scored == len(p)
    assert body.failed == int((~finite).sum())
    assert body.scores.counts.to_list() == score_histogram(p).tolist()
    for j, (feature, sketch) in enumerate(zip(SCHEMA.features, body.features, strict=True)):
        values = rows[:, j]
        assert sketch.name == feature.name
        if isinstance(feature, NumericFeature):
            counts, missing = numeric_bin_counts(values, EDGES[feature.name])
            assert (sketch.bins.to_list(), sketch.missing) == (counts.tolist(), missing)
            low = -np.inf if feature.minimum is None else feature.minimum
            high = np.inf if feature.maximum is None else feature.maximum
            outside = (values < np.float32(low)) | (values > np.float32(high))
            assert sketch.out_of_range == int(outside.sum())
        else:
            counts, unknown = categorical_counts(values, len(feature.vocabulary))
            assert sketch.bins.to_list() == counts.tolist()
            assert sketch.unknown + sketch.missing == unknown
            assert sketch.missing == int(np.isnan(values).sum())
        assert sketch.total == body.scored
    assert body.latency.count == len(sizes)


def test_bounds_compare_in_float32_so_clipped_values_are_in_range() -> None:
    """0.1 is not a float32: a value clipped to the bound 0.1 is float32(0.1) > 0.1."""
    builder = _builder()
    rows = np.array([[1.0, 0.1, 0.0, 10.0, 0.0, 0.0]], dtype=np.float32)
    builder.add(rows, [0.5], None, clipped={"calls": 1})
    sketch = {f.name: f for f in builder.snapshot().features}
    assert sketch["charges"].out_of_range == 0
    assert sketch["calls"].out_of_range == 1
    with pytest.raises(InputError, match="'contract' is not a numeric feature"):
        builder.add(rows, [0.5], None, clipped={"contract": 1})
    with pytest.raises(InputError, match=r"clipped\['calls'\] must be an int from 0 to 1"):
        builder.add(rows, [0.5], None, clipped={"calls": 2})


def test_builder_outcomes_failures_and_windows() -> None:
    now = [100.0]
    builder = _builder(clock=lambda: now[0])
    rows = np.zeros((3, 6), dtype=np.float32)
    builder.add(rows, np.array([[0.9, 0.1], [0.5, 0.5], [0.0, 1.0]]), [0.002, 0.003])
    builder.add(np.empty((0, 6)), [], 0.0001, n_failed=2)
    builder.add_outcome(0.1, 0)
    builder.add_outcome(1.0, 1)
    builder.add_outcomes([0.55, 0.56], [1, 1])
    now[0] = 160.0
    body = builder.roll()
    assert (body.window_start, body.window_end, body.scored, body.failed) == (100.0, 160.0, 3, 2)
    assert body.scores.counts.counts[10] == body.scores.counts.counts[99] == 1
    assert (body.outcomes.total, body.outcomes.labelled) == (4, 4)
    assert body.outcomes.by_label[0].counts[10] == 1
    assert body.outcomes.by_label[1].counts[55] == body.outcomes.by_label[1].counts[56] == 1
    assert body.latency.count == 3
    now[0] = 220.0
    after = builder.snapshot()
    assert (after.window_start, after.window_end, after.scored) == (160.0, 220.0, 0)
    builder.add(rows, [0.1, 0.2, 0.3], 0.001)
    builder.reset()
    assert builder.snapshot().scored == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda b: b.add(np.zeros((2, 5)), [0.1, 0.2]), r"shape \[N, 6\], not \[2, 5\]"),
        (lambda b: b.add(np.zeros((2, 6)), [0.1]), r"probabilities must have shape \[2\]"),
        (lambda b: b.add(np.zeros((1, 6)), [0.1], None, -1), "n_failed must be a non-negative"),
        (lambda b: b.add_outcome(0.5, 2), "label must be 0 or 1"),
        (lambda b: b.add_outcome(math.nan, 1), "finite probability"),
        (lambda b: b.add_outcomes([0.5], [1, 0]), "1 outcome scores but 2 labels"),
    ],
)
def test_builder_refuses_bad_input(call: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        call(_builder())


def test_builder_refuses_a_profile_that_does_not_fit_the_schema() -> None:
    swapped = ReferenceProfile(rows=1, features=REFERENCE.features[::-1], scores=REFERENCE.scores)
    with pytest.raises(ManifestError, match="reference profile feature 'region' is where"):
        SketchBuilder(SCHEMA, swapped, model_name="m", model_version="1.0.0")
    short = CategoricalProfile("contract", (1, 1), 0)
    features = tuple(short if f.name == "contract" else f for f in REFERENCE.features)
    with pytest.raises(ManifestError, match="2 categories, the vocabulary 3"):
        SketchBuilder(
            SCHEMA,
            ReferenceProfile(rows=1, features=features, scores=REFERENCE.scores),
            model_name="m",
            model_version="1.0.0",
        )


# --- latency ----------------------------------------------------------------------------


@given(
    st.lists(
        st.floats(LATENCY_MIN_SECONDS, LATENCY_MAX_SECONDS, exclude_max=True),
        min_size=1,
        max_size=300,
    ),
    st.floats(0, 1),
)
def test_latency_quantile_is_within_the_documented_relative_error(
    values: list[float], q: float
) -> None:
    exact = sorted(values)[math.floor(q * (len(values) - 1))]
    estimate = LatencySketch.of(values).quantile(q)
    assert abs(estimate - exact) <= LATENCY_RELATIVE_ERROR * exact * (1 + 1e-9)


def test_latency_outside_the_range_and_empty() -> None:
    sketch = LatencySketch.of([0.0, -1.0, math.nan, 1e-9, 11.0, math.inf])
    assert sketch.count == 6
    assert sketch.quantile(0.0) == LATENCY_MIN_SECONDS
    assert sketch.quantile(1.0) == LATENCY_MAX_SECONDS
    assert math.isnan(LatencySketch.empty().quantile(0.5))
    with pytest.raises(InputError, match="between 0 and 1"):
        sketch.quantile(1.5)


# --- size and speed on the real 17-feature schema ----------------------------------------


@pytest.fixture(scope="module")
def churn_builder() -> tuple[SketchBuilder, np.ndarray[Any, np.dtype[np.float32]]]:
    data = generate(3000, seed=11)
    table = load_training_table(data.frame, "churn", schema=data.schema)
    inputs = encode_features(table.features, table.schema)
    rng = np.random.default_rng(0)
    scores, labels = rng.random(1000), rng.integers(0, 2, 1000)
    reference = reference_profile(table.schema, inputs[:2000], scores, labels)
    builder = SketchBuilder(table.schema, reference, model_name="churn", model_version="1.0.0")
    return builder, inputs


def test_a_churn_report_is_a_few_kb(
    churn_builder: tuple[SketchBuilder, np.ndarray[Any, np.dtype[np.float32]]],
) -> None:
    builder, inputs = churn_builder
    assert builder.schema.n_features == 17
    rng = np.random.default_rng(1)
    # A busy window: a million rows, so that counts have many digits.
    for _ in range(300):
        builder.add(inputs, rng.random(len(inputs)), rng.lognormal(-7, 1, 20))
    builder.add_outcomes(rng.random(100_000), rng.integers(0, 2, 100_000))
    report = Report.from_body(
        builder.roll(),
        fleet="acme-telco",
        device_id="store-0042-till-03",
        sequence=123_456,
        cohort="canary",
        device_group="stores-eu-west",
        dropped_reports=3,
    )
    payload = report.encode()
    assert report.scored == 900_000
    assert len(payload) < 8 * 1024
    assert Report.decode(payload) == report

"""TFLite export: parity with scikit-learn in the real LiteRT interpreter for every family,
builtin ops only, a dynamic batch, and the float32 threshold rounding that parity rests on."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
import tensorflow as tf

from edgefleet.central.trainer import TrainedModel
from edgefleet.converters import tflite
from edgefleet.converters.ir import (
    LinearModel,
    ModelIR,
    NumericColumn,
    OneHotColumn,
    Preprocessing,
    Tree,
    TreeEnsemble,
    read_pipeline,
)
from edgefleet.converters.registry import export_format
from edgefleet.converters.source import ConversionSource
from edgefleet.converters.thresholds import raw_thresholds
from edgefleet.edge.backends.tflite import TFLiteBackend
from edgefleet.errors import ConversionError
from tests.conftest import FAMILIES

TOLERANCE = 1e-5
TREE_FAMILIES = tuple(f for f in FAMILIES if f != "logreg")
# What the converter may emit; anything else (Flex*, CUSTOM) would not run on a plain
# LiteRT build.
BUILTIN_OPS = {
    "ADD", "CAST", "CONCATENATION", "EQUAL", "FULLY_CONNECTED", "GATHER", "GREATER",
    "LOGISTIC", "MUL", "NOT_EQUAL", "RANGE", "RESHAPE", "SELECT_V2", "SHAPE",
    "STRIDED_SLICE", "SUB", "SUM", "ZEROS_LIKE", "DIV",
}  # fmt: skip


def _inputs(model: TrainedModel) -> npt.NDArray[np.float32]:
    return np.concatenate([model.holdout_inputs, model.golden_inputs()])


@pytest.fixture(scope="module")
def artifact(trained: Callable[[str], TrainedModel]) -> Callable[[str], bytes]:
    """``artifact("rf")`` -> the .tflite bytes of that family, converted once a module."""
    cache: dict[str, bytes] = {}

    def get(family: str) -> bytes:
        if family not in cache:
            model = trained(family)
            source = ConversionSource(model.pipeline, model.schema, family, _inputs(model)[:4])
            cache[family] = export_format("tflite").convert(source)
        return cache[family]

    return get


def _ops(content: bytes) -> set[str]:
    """The op names in the model, from TensorFlow's model analyzer report."""
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        tf.lite.experimental.Analyzer.analyze(model_content=content)
    ops = set()
    for line in report.getvalue().splitlines():
        words = line.split()
        if words and words[0].startswith("Op#"):
            ops.add(words[1].split("(")[0])
    return ops


# ---------------------------------------------------------------------- parity


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_with_sklearn_in_litert(
    trained: Callable[[str], TrainedModel], artifact: Callable[[str], bytes], family: str
) -> None:
    model = trained(family)
    inputs = _inputs(model)
    assert np.isnan(inputs).any()  # the golden vectors exercise imputation
    got = tflite.predict(artifact(family), inputs)
    assert got.shape == (len(inputs), 2)
    assert got.dtype == np.float32
    assert np.abs(got - model.pipeline.predict_proba(inputs)).max() <= TOLERANCE


def _split_neighbour_rows(model: TrainedModel, limit: int = 400) -> npt.NDArray[np.float32]:
    """Holdout rows with one numeric input set exactly at, just below and just above a
    split threshold (float32 neighbours): the values where a rounding error flips a branch.
    """
    ir = read_pipeline(model.pipeline)
    assert isinstance(ir.model, TreeEnsemble)
    n_numeric = len(ir.preprocessing.numeric)
    splits: list[tuple[int, float]] = []
    for tree in ir.model.trees:
        internal = (tree.left >= 0) & (tree.left < len(tree.left))
        numeric = internal & (tree.feature < n_numeric)
        splits.extend(zip(tree.feature[numeric], tree.threshold[numeric], strict=True))
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(splits), size=min(limit, len(splits)), replace=False)
    rows = []
    for k, index in enumerate(chosen):
        feature, threshold = splits[index]
        column = ir.preprocessing.numeric[int(feature)].input_index
        nearest = np.float32(threshold)
        for value in (np.nextafter(nearest, np.float32(-np.inf)), nearest,
                      np.nextafter(nearest, np.float32(np.inf))):  # fmt: skip
            row = model.holdout_inputs[k % len(model.holdout_inputs)].copy()
            row[column] = value
            rows.append(row)
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("family", TREE_FAMILIES)
def test_parity_at_the_float32_neighbours_of_every_split(
    trained: Callable[[str], TrainedModel], artifact: Callable[[str], bytes], family: str
) -> None:
    model = trained(family)
    rows = _split_neighbour_rows(model)
    got = tflite.predict(artifact(family), rows)
    assert np.abs(got - model.pipeline.predict_proba(rows)).max() <= TOLERANCE


def test_sparse_form_matches_the_perfect_form(
    trained: Callable[[str], TrainedModel], artifact: Callable[[str], bytes]
) -> None:
    model = trained("rf")
    inputs = _inputs(model)
    ir = read_pipeline(model.pipeline)
    assert isinstance(ir.model, TreeEnsemble)
    assert tflite.choose_form(ir.model, tflite.ensemble_depth(ir.model)) == "perfect"
    sparse = tflite.predict(tflite.convert_ir(ir, "sparse"), inputs)
    assert np.abs(sparse - model.pipeline.predict_proba(inputs)).max() <= TOLERANCE
    assert np.abs(sparse - tflite.predict(artifact("rf"), inputs)).max() <= 1e-6


# ---------------------------------------------------------------------- the graph


@pytest.mark.parametrize("family", ["logreg", "rf", "hgb"])
def test_builtin_ops_only_and_a_dynamic_batch(
    trained: Callable[[str], TrainedModel], artifact: Callable[[str], bytes], family: str
) -> None:
    content = artifact(family)
    ops = _ops(content)
    assert "GATHER" in ops or family == "logreg"
    assert ops <= BUILTIN_OPS, ops - BUILTIN_OPS

    model = trained(family)
    backend = TFLiteBackend(content)
    details = backend._interpreter.get_input_details()[0]
    assert list(details["shape_signature"]) == [-1, model.schema.n_features]
    assert backend._interpreter.get_signature_list()["serving_default"] == {
        "inputs": ["input"],
        "outputs": ["probabilities"],
    }
    rows = np.concatenate([model.holdout_inputs] * 2)[:1000]
    expected = model.pipeline.predict_proba(rows)
    interpreter = backend._interpreter
    for size in (1, 7, 1000, 7):
        got = backend.predict_proba(rows[:size])
        assert got.shape == (size, 2)
        assert np.abs(got - expected[:size]).max() <= TOLERANCE
    assert backend._interpreter is interpreter


# ---------------------------------------------------------------------- thresholds


def _stump_ir(
    thresholds: tuple[float, float],
    *,
    float32_compare: bool,
    offset: float = 0.0,
    scale: float = 1.0,
    impute: float = 0.0,
) -> ModelIR:
    """Two inputs (a numeric one and a 3-category code). Tree 0 splits the numeric feature
    at thresholds[0], then (right) at thresholds[1], with a leaf at depth 1 that the perfect
    form must pad; tree 1 splits on one-hot category 1; tree 2 is a single leaf."""
    first = Tree(
        feature=np.array([0, -1, 0, -1, -1]),
        threshold=np.array([thresholds[0], -2.0, thresholds[1], -2.0, -2.0]),
        left=np.array([1, -1, 3, -1, -1]),
        right=np.array([2, -1, 4, -1, -1]),
        value=np.array([0.0, -1.5, 0.0, 0.25, 2.0]),
        missing_left=np.zeros(5, dtype=bool),
    )
    onehot = Tree(
        feature=np.array([2, -1, -1]),
        threshold=np.array([0.5, -2.0, -2.0]),
        left=np.array([1, -1, -1]),
        right=np.array([2, -1, -1]),
        value=np.array([0.0, 0.125, -0.75]),
        missing_left=np.zeros(3, dtype=bool),
    )
    leaf = Tree(
        feature=np.array([-1]),
        threshold=np.array([-2.0]),
        left=np.array([-1]),
        right=np.array([-1]),
        value=np.array([0.5]),
        missing_left=np.zeros(1, dtype=bool),
    )
    return ModelIR(
        family="gb",
        preprocessing=Preprocessing(
            n_inputs=2,
            numeric=(NumericColumn(0, impute=impute, offset=offset, scale=scale),),
            categorical=(OneHotColumn(1, 3),),
        ),
        model=TreeEnsemble((first, onehot, leaf), "additive", -0.3, float32_compare, "logistic"),
    )


def _neighbours(value: float, offset: float = 0.0, scale: float = 1.0) -> list[float]:
    """float32 raw inputs around the raw value whose scaled value is ``value``."""
    center = np.float32(value * scale + offset)
    out = [center]
    below = above = center
    for _ in range(3):
        below = np.nextafter(below, np.float32(-np.inf))
        above = np.nextafter(above, np.float32(np.inf))
        out += [below, above]
    return [float(v) for v in out]


# 0.1 and 0.3 round up to float32 (so float32(t) would send x == float32(t) left, wrongly);
# 0.7 rounds down.
THRESHOLDS = [(0.1, 0.3), (0.7, 0.9000000000000001)]


@pytest.mark.parametrize("thresholds", THRESHOLDS)
@pytest.mark.parametrize("float32_compare", [True, False])
@pytest.mark.parametrize("form", ["perfect", "sparse"])
def test_thresholds_that_float32_cannot_represent(
    thresholds: tuple[float, float], float32_compare: bool, form: tflite.Form
) -> None:
    # (numpy 2 compares a float32 with a Python float in float32: widen explicitly.)
    assert np.float64(np.float32(0.1)) > 0.1
    assert np.float64(np.float32(0.7)) < 0.7
    # The imputed value sits on the first split too: NaN must branch like float32(0.1).
    ir = _stump_ir(thresholds, float32_compare=float32_compare, impute=thresholds[0])
    values = [v for t in thresholds for v in _neighbours(t)] + [np.nan, -np.inf, np.inf]
    rows = np.array([[v, code] for v in values for code in (-1, 0, 1, 2)], dtype=np.float32)
    expected = ir.predict_proba(rows)
    got = tflite.predict(tflite.convert_ir(ir, form), rows)
    # Exact branches: what is left is float32 arithmetic on a few leaves.
    assert np.abs(got - expected).max() <= 1e-6


def test_scaling_is_folded_into_the_thresholds() -> None:
    """A scaler before trees (not what edgefleet's trainer builds, but what the IR allows):
    raw inputs at the float32 neighbours of the raw split point still branch like the
    float64 reference."""
    offset, scale = 12.345678901234, 0.987654321
    for float32_compare in (True, False):
        ir = _stump_ir(
            (0.1, 0.7), float32_compare=float32_compare, offset=offset, scale=scale, impute=12.5
        )
        values = [v for t in (0.1, 0.7) for v in _neighbours(t, offset, scale)]
        rows = np.array([[v, 1.0] for v in [*values, np.nan]], dtype=np.float32)
        got = tflite.predict(tflite.convert_ir(ir), rows)
        assert np.abs(got - ir.predict_proba(rows)).max() <= 1e-6


def test_raw_thresholds_round_down_to_float32() -> None:
    rng = np.random.default_rng(5)
    threshold = np.concatenate([rng.normal(size=500) * 10.0 ** rng.integers(-8, 8, size=500),
                                [0.0, 0.5, 1e-45, -1e-45, 3.5e38, np.inf]])  # fmt: skip
    raw = raw_thresholds(threshold, np.zeros(1), np.ones(1))
    finite = np.isfinite(threshold)
    # The largest float32 at or below the threshold: the next float32 is above it.
    assert (raw[finite].astype(np.float64) <= threshold[finite]).all()
    with np.errstate(over="ignore"):  # past float32's largest value comes +inf
        above = np.nextafter(raw[finite], np.float32(np.inf)).astype(np.float64)
    assert (above > threshold[finite]).all()
    assert raw[~finite][0] == np.inf


def test_deep_trees_take_the_sparse_form() -> None:
    """A chain of depth 24: padded to a perfect tree it would take 200 MB; sparse, 34 kB."""
    depth = 24
    n = 2 * depth + 1
    left = np.full(n, -1)
    right = np.full(n, -1)
    feature = np.full(n, -1)
    threshold = np.full(n, -2.0)
    for level in range(depth):  # node 2k splits; its left child 2k+1 is a leaf
        left[2 * level], right[2 * level] = 2 * level + 1, 2 * level + 2
        feature[2 * level], threshold[2 * level] = 0, level + 0.5
    tree = Tree(feature, threshold, left, right, np.linspace(0, 1, n), np.zeros(n, dtype=bool))
    ir = ModelIR(
        family="dt",
        preprocessing=Preprocessing(1, (NumericColumn(0, 3.0, 0.0, 1.0),), ()),
        model=TreeEnsemble((tree,), "average", 0.0, float32_compare=True),
    )
    assert isinstance(ir.model, TreeEnsemble)
    assert tflite.ensemble_depth(ir.model) == depth
    assert tflite.choose_form(ir.model, depth) == "sparse"
    content = tflite.convert_ir(ir)
    assert len(content) < 64_000
    rows = np.arange(-1, depth + 2, 0.5, dtype=np.float32)[:, None]
    rows = np.concatenate([rows, [[np.nan]]]).astype(np.float32)
    assert np.abs(tflite.predict(content, rows) - ir.predict_proba(rows)).max() <= 1e-6
    with pytest.raises(ConversionError, match="use the sparse form"):
        tflite.convert_ir(
            ModelIR("dt", ir.preprocessing, TreeEnsemble((tree,) * 20, "average", 0.0, True)),
            "perfect",
        )


def test_linear_model_with_the_wrong_width_is_refused() -> None:
    ir = ModelIR(
        family="logreg",
        preprocessing=Preprocessing(1, (NumericColumn(0, 0.0, 0.0, 1.0),), ()),
        model=LinearModel(np.ones(3), 0.0),
    )
    with pytest.raises(ConversionError, match="3 coefficients for 1 features"):
        tflite.convert_ir(ir)

"""Task sketches in reports (version 4, docs/architecture.md §7c): a multi-class or regression
model's sketch survives the wire format exactly, merges as a sum, and every field of it is
checked as hostile input; reports of versions 1 to 3 read as before."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from edgefleet.edge.agent.counting import remembered, task_outcome, window_rows
from edgefleet.edge.aggregate import merge_all
from edgefleet.edge.profile import SCORE_BINS
from edgefleet.edge.report import Report
from edgefleet.edge.shadow import ShadowSketch
from edgefleet.edge.sketch_builder import SketchBuilder
from edgefleet.edge.tasksketch import (
    MAX_CLASSES,
    VALUE_BUCKETS,
    VALUE_RELATIVE_ERROR,
    TaskCounter,
    value_bucket_index,
    value_of_bucket,
)
from edgefleet.errors import InputError
from tests.monitor import tasks


def _report(task: str) -> Report:
    return Report.decode(tasks.reports(tasks.rows(task, n=600), devices=1, windows=1)[0])


def test_a_task_report_round_trips_and_adds_up() -> None:
    for task in ("multiclass", "regression"):
        report = _report(task)
        assert report.schema_version == 4
        assert report.task is not None
        assert report.task.kind == task
        assert Report.decode(report.encode()) == report
        assert report.task.scored == report.scored == 600
        assert report.task.labelled == report.outcomes.labelled > 0
        doubled = merge_all([report, report])
        assert doubled.task is not None
        counts, sums = doubled.task.flat()
        once_counts, once_sums = report.task.flat()
        assert counts == [2 * c for c in once_counts]
        assert sums == [2 * s for s in once_sums]


def test_the_multiclass_report_counts_confidence_and_right_answers() -> None:
    data = tasks.rows("multiclass", n=600)
    report = _report("multiclass")
    task = report.task
    assert task is not None
    assert task.kind == "multiclass"
    right = int((data.outputs[data.labelled].argmax(axis=1) == data.labels[data.labelled]).sum())
    assert report.outcomes.by_label[1].total == right == task.correct
    predicted = np.bincount(data.outputs.argmax(axis=1), minlength=4)
    assert list(task.predicted.counts) == predicted.tolist()


Mutation = Callable[[dict[str, Any]], None]


def _set(path: tuple[Any, ...], value: Any) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        target = raw
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _bump(path: tuple[Any, ...], by: int) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        target = raw
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] += by

    return mutate


def _move_right_answer(raw: dict[str, Any]) -> None:
    """A right answer of class 1 counted as a wrong one: every total still adds up."""
    row = raw["task"]["confusion"][1]
    row[1] -= 1
    row[0] += 1


MULTICLASS_REFUSALS: list[tuple[Mutation, str]] = [
    (lambda raw: raw.pop("task"), "lacks the field 'task'"),
    (lambda raw: raw["task"].pop("log_loss"), "log_loss"),
    (_set(("task", "extra"), 1), "extra"),
    (_set(("task", "kind"), "ranking"), "task.kind"),
    (_set(("task", "classes"), MAX_CLASSES + 1), "3 to 64"),
    (_set(("task", "classes"), 2), "3 to 64"),
    (_set(("task", "classes"), True), "3 to 64"),
    (_set(("task", "classes"), 5), "5 counts"),
    (_set(("task", "predicted"), [1, 2, 3]), "4 counts"),
    (_set(("task", "predicted", 0), -1), "between 0"),
    (_set(("task", "predicted", 0), 1.5), "integer count"),
    (_set(("task", "predicted", 0), True), "integer count"),
    (_set(("task", "predicted", 0), "7"), "integer count"),
    (_set(("task", "predicted", 0), 2**63), "between 0"),
    (_set(("task", "confusion"), [[0] * 4] * 3), "4 arrays"),
    (_set(("task", "confusion", 0), [0] * 5), "4 counts"),
    (_set(("task", "negatives", 0), [0] * 99), "100 counts"),
    (_set(("task", "positives"), "lots"), "100 counts"),
    (_bump(("task", "confusion", 1, 1), 1), "confusion counts but|one-vs-rest"),
    (_move_right_answer, "right predictions"),
    (_bump(("task", "negatives", 2, 50), 1), "one-vs-rest histograms hold"),
    (_bump(("task", "predicted", 0), 1), "the report scored"),
    (_set(("task", "log_loss"), -1.0), "non-negative"),
    (_set(("task", "log_loss"), math.inf), "finite"),
    (_set(("task", "log_loss"), math.nan), "finite"),
    (_set(("task", "log_loss"), 10**400), "within"),
    (_set(("task", "log_loss"), "1.0"), "must be a number"),
    (_set(("task", "log_loss"), 1e9), "inconsistent|more than"),
    (_set(("task", "log_loss_squares"), 0.0), "inconsistent"),
    (_set(("schema_version",), 3), "unknown field|not expected|task|shadow"),
    (_set(("schema_version",), 1), "unknown field|not expected|task"),
]

REGRESSION_REFUSALS: list[tuple[Mutation, str]] = [
    (_set(("task", "kind"), "multiclass"), "classes|unknown|task"),
    (_set(("task", "predictions"), []), "1 to 1000"),
    (_set(("task", "predictions"), [0] * 1001), "1 to 1000"),
    (_set(("task", "residuals"), [0] * (VALUE_BUCKETS - 1)), f"{VALUE_BUCKETS} counts"),
    (_bump(("task", "residuals", 300), 1), "outcome histograms"),
    (_bump(("task", "predictions", 0), 1), "the report scored"),
    (_set(("task", "sum_r2"), -1.0), "non-negative"),
    (_set(("task", "sum_abs_r"), 0.0), "inconsistent"),
    (_set(("task", "sum_r4"), 0.0), "inconsistent"),
    (_set(("task", "sum_y2"), 0.0), "inconsistent"),
    (_set(("task", "sum_y"), 1e101), "within"),
    (_set(("task", "sum_y"), None), "must be a number"),
    (lambda raw: raw["task"].pop("sum_r4"), "sum_r4"),
]


@pytest.mark.parametrize(
    ("task", "mutate", "message"),
    [("multiclass", m, w) for m, w in MULTICLASS_REFUSALS]
    + [("regression", m, w) for m, w in REGRESSION_REFUSALS],
)
def test_a_bad_task_field_is_refused(task: str, mutate: Mutation, message: str) -> None:
    raw = copy.deepcopy(_report(task).to_dict())
    mutate(raw)
    with pytest.raises(InputError, match=message):
        Report.from_dict(raw)
    # And as bytes from the network (NaN and infinity as JSON has no words for them).
    payload = json.dumps(raw, allow_nan=True).encode()
    with pytest.raises(InputError):
        Report.decode(payload)


def test_the_value_buckets_hold_their_relative_error() -> None:
    values = np.concatenate([-np.logspace(-4, 7.99, 500), np.logspace(-4, 7.99, 500)])
    for value, index in zip(values, value_bucket_index(values), strict=True):
        assert abs(value_of_bucket(int(index)) - value) <= VALUE_RELATIVE_ERROR * abs(value) * (
            1 + 1e-9
        )
    assert value_bucket_index([0.0, 1e-5, -1e-5]).tolist() == [VALUE_BUCKETS // 2] * 3
    assert value_bucket_index([1e300, -1e300]).tolist() == [VALUE_BUCKETS - 1, 0]


def test_the_device_refuses_outcomes_it_cannot_count() -> None:
    counter = TaskCounter("multiclass", 4)
    outputs = np.full((2, 4), 0.25)
    with pytest.raises(InputError, match="class index must be 0 to 3"):
        counter.outcome_counts(outputs, np.array([0, 4]))
    with pytest.raises(InputError, match="one class index per row"):
        counter.outcome_counts(outputs, np.array([0.5, 1.0]))
    with pytest.raises(InputError, match="3 to 64 classes"):
        TaskCounter("multiclass", MAX_CLASSES + 1)
    regression = TaskCounter("regression")
    with pytest.raises(InputError, match="too large to be monitored"):
        regression.outcome_counts(np.array([0.0]), np.array([1e21]))
    with pytest.raises(InputError, match="finite number"):
        regression.outcome_counts(np.array([0.0]), np.array([math.nan]))
    with pytest.raises(InputError, match="shape"):
        regression.outputs_of(np.zeros((3, 2)), 3)


def test_the_agent_counts_what_it_remembers_as_the_reports_do() -> None:
    """The agent's path (counting.py): a batch's outputs into the window, each prediction's
    remembered outputs and its outcome label (a class name, a number) back: the same report
    as counting the rows directly."""
    for task in ("multiclass", "regression"):
        data = tasks.rows(task, n=300)
        schema, reference = tasks.schema(task), tasks.reference(task)
        outputs = data.outputs if task == "multiclass" else data.outputs.reshape(-1, 1)
        agent_like = SketchBuilder(schema, reference, model_name="iris", model_version="1.0.0")
        direct = SketchBuilder(schema, reference, model_name="iris", model_version="1.0.0")
        agent_like.add(data.inputs, window_rows(schema, outputs), 0.001)
        direct.add(data.inputs, data.outputs, 0.001)
        back = np.flatnonzero(data.labelled)
        for i in back:
            label = tasks.CLASSES[data.labels[i]] if task == "multiclass" else float(data.labels[i])
            counted = task_outcome(schema, remembered(schema, outputs[i]), label)
            assert counted is not None
            agent_like.add_outcomes(*counted)
        direct.add_outcomes(data.outputs[back], data.labels[back])
        mine, theirs = agent_like.snapshot(), direct.snapshot()
        assert mine.task is not None
        assert theirs.task is not None
        assert mine.task.flat()[0] == theirs.task.flat()[0]
        assert mine.task.flat()[1] == pytest.approx(theirs.task.flat()[1], rel=1e-12)
        assert mine.outcomes == theirs.outcomes
        # A prediction id of the scoring service carries one number: not every probability.
        if task == "multiclass":
            assert task_outcome(schema, 0.7, tasks.CLASSES[0]) is None
            with pytest.raises(InputError, match="not one of"):
                task_outcome(schema, remembered(schema, outputs[0]), "tulip")
        else:
            with pytest.raises(InputError, match="number"):
                task_outcome(schema, 1.0, "a lot")


def test_a_task_report_leaves_a_challengers_binary_counts_out() -> None:
    """Shadow comparisons are of binary scores (§17): a multi-class champion's window with
    challenger counts still makes a valid version 4 report, without them."""
    schema, reference = tasks.schema("multiclass"), tasks.reference("multiclass")
    builder = SketchBuilder(schema, reference, model_name="iris", model_version="1.0.0")
    data = tasks.rows("multiclass", n=50)
    builder.add(data.inputs, data.outputs)
    shadow = ShadowSketch.from_flat("1.1.0", [0] * (5 * SCORE_BINS))
    body = replace(builder.snapshot(), shadow=shadow)
    report = Report.from_body(
        body, fleet="acme", device_id="d0", sequence=1, cohort="stable", device_group="eu"
    )
    assert report.schema_version == 4
    assert report.shadow is None
    assert Report.decode(report.encode()) == report

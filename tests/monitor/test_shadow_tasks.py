"""Shadow beyond binary (docs/architecture.md §17): a multi-class or regression champion's
shadow devices send paired losses (count, the sum of ``loss(challenger) - loss(champion)``
and of its square, and each model's summed loss), which merge exactly, survive the wire and
rollups, are refused when hostile, and give the paired z-test scikit-learn and SciPy give
on the same records; end to end, a brought model's retrained candidate is judged in shadow
by real agents over Mosquitto (better: canary; worse: rejected and escalated)."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from scipy.stats import norm, sem
from sklearn.metrics import log_loss, mean_squared_error

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.export import export_bundle
from edgefleet.central.monitor.alerts import AlertRules
from edgefleet.central.monitor.ingest import Monitor
from edgefleet.central.monitor.loop import RetrainLoop
from edgefleet.central.monitor.merging import add_counts
from edgefleet.central.monitor.shadow import compare_shadow
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.monitor.validation import layout_of
from edgefleet.central.publish import publish, state_file_for
from edgefleet.edge.agent.agent import Agent
from edgefleet.edge.aggregate import SketchSums, merge_all
from edgefleet.edge.report import TASK_VERSION, Report
from edgefleet.edge.shadow import ShadowCounter, record_loss
from edgefleet.edge.signing import load_private_key
from edgefleet.edge.sketch_builder import SketchBuilder
from edgefleet.edge.tasksketch import LOG_CLIP
from edgefleet.errors import InputError
from tests.fleet.kit import agent_config, running, wait_for
from tests.monitor import brought, tasks
from tests.monitor.test_shadow_loop import step_until

TASKS = ("multiclass", "regression")


def paired_rows(task: str, n: int = 1200, seed: int = 4) -> tuple[Any, Any, Any]:
    """Champion and challenger outputs of the same records, and their labels: the
    challenger is the sharper model."""
    rng = np.random.default_rng(seed)
    if task == "multiclass":
        truth = rng.integers(0, 4, n)
        logits = rng.normal(0, 1, (n, 4))
        logits[np.arange(n), truth] += 1.0
        sharper = logits.copy()
        sharper[np.arange(n), truth] += 0.6
        soft = [np.exp(z) / np.exp(z).sum(axis=1, keepdims=True) for z in (logits, sharper)]
        return soft[0].astype(np.float32), soft[1].astype(np.float32), truth
    y = rng.normal(40.0, 25.0, n)
    champion = (y + rng.normal(0, 8.0, n)).astype(np.float32)
    challenger = (y + rng.normal(0, 6.0, n)).astype(np.float32)
    return champion, challenger, y


def reports(task: str, champion: Any, challenger: Any, labels: Any) -> list[Report]:
    """Three shadow devices' reports: the champion's sketch and the challenger's paired
    losses of the records whose label came back (two in three)."""
    made = []
    parts = np.array_split(np.arange(len(labels)), 3)
    for device, part in enumerate(parts):
        builder = SketchBuilder(
            tasks.schema(task),
            tasks.reference(task),
            model_name="iris",
            model_version="1.0.0",
            clock=iter((0.0, 60.0)).__next__,
        )
        counter = ShadowCounter("1.1.0", task)
        inputs = np.random.default_rng(device).normal(size=(len(part), 2)).astype(np.float32)
        builder.add(inputs, champion[part], 0.001)
        top = challenger[part].max(axis=1) if task == "multiclass" else np.zeros(len(part))
        counter.add_scores(top, "1.1.0")
        back = part[: 2 * len(part) // 3]
        builder.add_outcomes(champion[back], labels[back])
        for i in back:
            losses = (record_loss(task, m[i], labels[i]) for m in (champion, challenger))
            counter.add_losses(*losses)
        body = builder.roll()
        made.append(
            Report.from_body(
                replace(body, shadow=counter.roll(body)),
                fleet="f",
                device_id=f"d{device}",
                sequence=1,
                cohort="stable",
                device_group="default",
            )
        )
    return made


def labelled_rows(labels: Any) -> npt.NDArray[np.int64]:
    parts = np.array_split(np.arange(len(labels)), 3)
    return np.concatenate([p[: 2 * len(p) // 3] for p in parts])


@pytest.mark.parametrize("task", TASKS)
def test_paired_losses_merge_exactly_and_give_the_paired_z_test(task: str) -> None:
    champion, challenger, labels = paired_rows(task)
    made = [Report.decode(r.encode()) for r in reports(task, champion, challenger, labels)]
    assert {r.schema_version for r in made} == {TASK_VERSION}
    merged = merge_all(made)
    # Rollups (SketchSums bodies) merged again hold the same sums (docs/architecture.md §7b).
    halves = []
    for part in (made[:2], made[2:]):
        sums = SketchSums()
        for report in part:
            add_counts(sums, report.to_dict(), layout_of(report.to_dict()))
        assert sums.to_dict() == sums.freeze().to_dict()
        halves.append(sums.to_dict())
    total = SketchSums()
    for body in halves:
        add_counts(total, body, layout_of(body))
    again = total.freeze().shadow_of("1.1.0")
    sketch = merged.shadow_of("1.1.0")
    assert sketch is not None
    assert again is not None
    assert again.paired is not None
    assert sketch.paired is not None
    assert again.paired.labelled == sketch.paired.labelled
    for mine, theirs in zip(again.paired.sums(), sketch.paired.sums(), strict=True):
        assert mine == pytest.approx(theirs, rel=1e-12)

    rows = labelled_rows(labels)
    if task == "multiclass":
        truth = labels[rows]

        def losses(p: Any) -> Any:
            return -np.log(np.clip(p[rows, truth].astype(np.float64), LOG_CLIP, 1 - LOG_CLIP))

        old, new = log_loss(truth, champion[rows]), log_loss(truth, challenger[rows])
    else:

        def losses(p: Any) -> Any:
            return (labels[rows] - p[rows].astype(np.float64)) ** 2

        old = mean_squared_error(labels[rows], champion[rows])
        new = mean_squared_error(labels[rows], challenger[rows])
    d = losses(challenger) - losses(champion)
    judged = compare_shadow(sketch, "1.0.0", "1.1.0", min_labelled=100)
    assert judged.labelled == len(rows) == sketch.paired.labelled
    assert judged.metric == ("log_loss" if task == "multiclass" else "squared_error")
    assert judged.champion_loss == pytest.approx(old, rel=1e-5)
    assert judged.challenger_loss == pytest.approx(new, rel=1e-5)
    assert judged.loss_gain == pytest.approx(-d.mean(), rel=1e-9)
    assert judged.loss_gain_se == pytest.approx(sem(d), rel=1e-6)
    assert judged.loss_gain_low == pytest.approx(-d.mean() - norm.ppf(0.95) * sem(d), rel=1e-6)
    assert judged.verdict == "better", judged.reason
    # The other way round, the challenger is worse; with too few records, wait.
    swapped = merge_all(reports(task, challenger, champion, labels)).shadow_of("1.1.0")
    assert compare_shadow(swapped, "1.0.0", "1.1.0").verdict == "not_better"
    few = compare_shadow(sketch, "1.0.0", "1.1.0", min_labelled=10_000)
    assert few.verdict == "wait"
    assert f"{len(rows)} paired labelled records" in few.reason


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        target = raw
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def test_hostile_paired_losses_are_refused() -> None:
    champion, challenger, labels = paired_rows("multiclass", n=300)
    report = reports("multiclass", champion, challenger, labels)[0]
    raw = report.to_dict()
    assert set(raw["shadow"]) == {"model_version", "task", "scores", "paired"}
    assert Report.from_dict(raw) == report
    paired = raw["shadow"]["paired"]
    n = paired["labelled"]
    difference = paired["challenger"] - 40.0 * n  # a champion's log loss of 40 per record
    beyond = {
        **paired,
        "champion": 40.0 * n,
        "difference": difference,
        "difference_squares": 2 * difference**2 / n,
    }
    for change, message in (
        (_set(("shadow", "paired", "difference"), 5.0), "challenger's minus the champion's"),
        (_set(("shadow", "paired", "difference_squares"), 0.0), "Cauchy-Schwarz"),
        (_set(("shadow", "paired", "champion"), -1.0), "non-negative"),
        (_set(("shadow", "paired", "champion"), "1"), "must be a number"),
        (_set(("shadow", "paired", "challenger"), float("nan")), "finite"),
        (_set(("shadow", "paired", "labelled"), -1), "between 0"),
        (_set(("shadow", "paired", "labelled"), 10**6), "more labelled records"),
        (_set(("shadow", "paired", "extra"), 1), "unknown field 'extra'"),
        (_set(("shadow", "task"), "regression"), "paired losses \\(of its task\\)"),
        (_set(("shadow", "task"), "ranking"), "must be one of"),
        (_set(("shadow", "model_version"), "1.0.0"), "is the champion's version"),
        (_set(("shadow", "challenger"), [[0] * 100, [0] * 100]), "unknown field 'challenger'"),
        (_set(("schema_version",), 3), "field"),
        (_set(("shadow", "paired"), beyond), "beyond"),
    ):
        bad = Report.decode(report.encode()).to_dict()
        change(bad)
        with pytest.raises(InputError, match=message):
            Report.from_dict(bad)
    # A binary challenger's histograms in a version 4 report are refused too.
    bad = Report.decode(report.encode()).to_dict()
    bad["shadow"] = {
        "model_version": "1.1.0",
        "scores": raw["shadow"]["scores"],
        "challenger": [[0] * 100, [0] * 100],
        "champion": [[0] * 100, [0] * 100],
    }
    with pytest.raises(InputError, match="version 3 reports"):
        Report.from_dict(bad)


# ------------------------------------------------------------------------- end to end


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    rows = frame.drop(columns=[brought.TARGET]).to_dict("records")
    return [{str(k): (float(v) if k != "colour" else v) for k, v in r.items()} for r in rows]


def _challenger_outputs(agent: Agent, batch: list[dict[str, Any]]) -> Any:
    challenger = agent.installer.challenger
    assert challenger is not None
    scorer = challenger.scorer
    return np.asarray(scorer.backend.predict_proba(scorer.encoder.encode(batch)), np.float64)


def _newest(task: str) -> Callable[[], pd.DataFrame]:
    return lambda: brought.rows(task, 1500, seed=70, concept=1)


@pytest.mark.parametrize(
    ("task", "concept", "action"), [("multiclass", 1, "canary"), ("regression", 0, "escalated")]
)
def test_a_brought_models_candidate_is_judged_in_shadow_by_real_agents(
    task: str,
    concept: int,
    action: str,
    tmp_path: Path,
    keypair: tuple[Path, Path],
    broker: MosquittoBroker,
    unique: str,
) -> None:
    """The candidate learnt the new concept; the devices' labels follow ``concept``: the
    new one (the challenger is better: canary) or the old one (worse: escalated)."""
    home = tmp_path / "home"
    key = load_private_key(keypair[0])
    version = brought.register(task, home)
    bundle = export_bundle(version, ["onnx"], home / "bundles" / f"{task}-1.0.0", key).bundle
    publish(bundle, unique, broker.address, key, state_file=state_file_for(home, unique))
    store = MonitorStore(f"sqlite:///{tmp_path / 'monitor.db'}")
    loop = RetrainLoop(
        unique,
        home,
        store,
        broker.address,
        key,
        _newest(task),
        formats=["onnx"],
        resamples=200,
        shadow_percent=100,
        shadow_windows=1,
        min_shadow_labelled=300,
        window_seconds=1.0,
        rules=AlertRules(min_labels=300, feature_min_count=300),
    )
    classes = list(version.load_card().schema.classes)
    champion_losses: list[float] = []
    challenger_losses: list[float] = []
    with ExitStack() as stack:
        stack.enter_context(Monitor(unique, broker.address, store))
        agents = [
            stack.enter_context(running(agent_config(broker, keypair, unique, d, tmp_path / d)))
            for d in ("shadow-a", "shadow-b")
        ]
        wait_for(lambda: all(a.status()["model_version"] == "1.0.0" for a in agents), 60, "1.0.0")
        assert loop.run(force=True).action == "shadow"
        wait_for(
            lambda: all(a.status()["challenger"] == f"{task} 1.1.0" for a in agents),
            60,
            "both devices scoring 1.1.0 in shadow",
        )
        for i, agent in enumerate(agents):
            frame = brought.rows(task, 300, seed=80 + i, concept=concept)
            batch = _records(frame)
            answers = agent.score(batch)
            theirs = _challenger_outputs(agent, batch)
            for j, (answer, truth) in enumerate(zip(answers, frame[brought.TARGET], strict=True)):
                agent.outcome(answer.id, truth if task == "multiclass" else float(truth))
                ours = answer.to_dict()
                if task == "multiclass":
                    label = classes.index(truth)
                    mine = [ours["probabilities"][c] for c in classes]
                    champion_losses.append(record_loss(task, mine, label))
                    challenger_losses.append(record_loss(task, theirs[j], label))
                else:
                    champion_losses.append(record_loss(task, ours["value"], truth))
                    challenger_losses.append(record_loss(task, theirs[j][0], truth))
            assert agent.close_window() is not None
        wait_for(lambda: store.report_count(unique) >= 2, 60, "2 reports stored")
        result = step_until(loop, "wait")
    assert result.action == action, result.message
    decision = next(d for d in store.decisions(unique) if d.action in ("canary", "rejected"))
    shadow = decision.evidence["shadow"]
    d = np.asarray(challenger_losses) - np.asarray(champion_losses)
    assert shadow["labelled"] == len(d) == 600
    assert shadow["task"] == task
    assert shadow["loss_gain"] == pytest.approx(-d.mean(), rel=1e-6)
    assert shadow["champion_loss"] == pytest.approx(np.mean(champion_losses), rel=1e-6)
    assert shadow["loss_gain_se"] == pytest.approx(sem(d), rel=1e-5)
    assert (shadow["loss_gain_low"] > 0) == (action == "canary")
    assert math.isfinite(shadow["challenger_loss"])
    store.close()

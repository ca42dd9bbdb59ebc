"""The loop's shadow stage on real agents over Mosquitto: an accepted candidate is first the
challenger of the shadow cohort; the loop compares it with the running model on the same
labelled records the devices report, and moves it to canary (then promotion) when it is
better, or rejects it and escalates to a person when it is not. Also the comparison itself
and the version 3 report's checks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import write_table
from edgefleet.central.monitor.alerts import AlertRules
from edgefleet.central.monitor.ingest import Monitor
from edgefleet.central.monitor.loop import RetrainLoop, StepResult
from edgefleet.central.monitor.shadow import compare_shadow
from edgefleet.central.monitor.validation import VersionProfile
from edgefleet.central.publish import rollout_status
from edgefleet.edge.agent.agent import Agent
from edgefleet.edge.report import Report
from edgefleet.edge.shadow import ShadowSketch
from edgefleet.edge.sketch import SCORE_BINS, Histogram
from edgefleet.errors import InputError
from tests.fleet.kit import agent_config, running, wait_for
from tests.fleet.test_shadow import challenger_scores, records
from tests.monitor.test_loop import Published, actions, published  # noqa: F401

DEVICES = ("shadow-a", "shadow-b")


def histogram(values: list[float]) -> Histogram:
    counts = np.bincount(
        np.minimum((np.asarray(values) * SCORE_BINS).astype(int), 99), minlength=SCORE_BINS
    )
    return Histogram(tuple(int(c) for c in counts))


def sketch_of(champion: list[float], challenger: list[float], labels: list[int]) -> ShadowSketch:
    def by_label(scores: list[float]) -> tuple[Histogram, Histogram]:
        return (
            histogram([s for s, y in zip(scores, labels, strict=True) if y == 0]),
            histogram([s for s, y in zip(scores, labels, strict=True) if y == 1]),
        )

    return ShadowSketch("1.1.0", histogram(challenger), by_label(challenger), by_label(champion))


def test_compare_shadow_waits_then_judges_on_the_same_records() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 600).tolist()
    good = np.clip(np.asarray(labels) * 0.4 + rng.uniform(0, 0.6, 600), 0, 1).tolist()
    noise = rng.uniform(0, 1, 600).tolist()
    assert compare_shadow(None, "1.0.0", "1.1.0").verdict == "wait"
    few = compare_shadow(sketch_of(noise[:50], good[:50], labels[:50]), "1.0.0", "1.1.0")
    assert few.verdict == "wait"
    assert "50 paired labelled records" in few.reason
    better = compare_shadow(sketch_of(noise, good, labels), "1.0.0", "1.1.0")
    assert better.verdict == "better", better.reason
    assert better.auroc_gain is not None
    assert better.auroc_gain_low is not None
    assert 0 < better.auroc_gain_low < better.auroc_gain
    assert better.ap_gain is not None
    assert better.ap_gain > 0
    worse = compare_shadow(sketch_of(good, noise, labels), "1.0.0", "1.1.0")
    assert worse.verdict == "not_better"
    # Equal models: no gain with confidence, so not better.
    same = compare_shadow(sketch_of(good, good, labels), "1.0.0", "1.1.0")
    assert (same.verdict, same.auroc_gain) == ("not_better", 0.0)


def test_version_3_reports_are_checked_and_accepted_by_their_version(
    published: Published,  # noqa: F811
) -> None:
    from edgefleet.edge.sketch_builder import SketchBuilder

    manifest = published.running
    builder = SketchBuilder.from_manifest(manifest)
    frame = generate(50, seed=2).frame
    from edgefleet.central.data.loader import encode_features

    inputs = encode_features(frame[list(manifest.schema.names)], manifest.schema)
    scores = np.linspace(0.01, 0.99, 50)
    builder.add(inputs, scores, 0.001)
    builder.add_outcomes(scores[:20], [0, 1] * 10)
    body = builder.roll()
    shadow = sketch_of(scores[:20].tolist(), scores[:20][::-1].tolist(), [0, 1] * 10)
    shadow = ShadowSketch("1.1.0", histogram(scores.tolist()), shadow.challenger, shadow.champion)
    from dataclasses import replace

    report = Report.from_body(
        replace(body, shadow=shadow),
        fleet=published.fleet,
        device_id="d1",
        sequence=1,
        cohort="stable",
        device_group="default",
    )
    assert report.schema_version == 3
    raw = report.to_dict()
    assert Report.from_dict(raw) == report
    profile = VersionProfile.from_manifest(manifest)
    from edgefleet.central.monitor.validation import layout_of

    profile.check(layout_of(raw), report.window_end, report.window_end)  # accepted
    for change, message in (
        (lambda r: r.pop("shadow"), "lacks the field 'shadow'"),
        (lambda r: r["shadow"].update(model_version="1.0.0"), "is the champion's version"),
        (lambda r: r["shadow"]["champion"][1].__setitem__(0, 7), "labelled counts differ"),
        (lambda r: r["shadow"]["scores"].__setitem__(3, 10**6), "more records than"),
        (lambda r: r["shadow"]["scores"].__setitem__(3, -1), "whole numbers"),
        (lambda r: r.update(schema_version=1), "field 'segments'"),
    ):
        bad: dict[str, Any] = Report.decode(report.encode()).to_dict()
        change(bad)
        with pytest.raises(InputError, match=message):
            Report.from_dict(bad)


# ------------------------------------------------------------------------- end to end


@contextmanager
def shadow_fleet(
    fleet: Published,
    broker: MosquittoBroker,
    tmp_path: Path,
) -> Iterator[tuple[RetrainLoop, list[Agent]]]:
    data = tmp_path / "labelled"
    write_table(generate(4000, seed=11, scenario="competitor_offer").frame, data / "week-1.csv")
    loop = RetrainLoop(
        fleet.fleet,
        fleet.home,
        fleet.store,
        broker.address,
        fleet.key,
        data,
        formats=["onnx"],
        shadow_percent=100,
        shadow_windows=1,
        min_shadow_labelled=300,
        canary_percent=100,
        canary_windows=1,
        min_canary_reports=2,
        window_seconds=1.0,
        rules=AlertRules(min_labels=300, feature_min_count=300),
    )
    with ExitStack() as stack:
        stack.enter_context(Monitor(fleet.fleet, broker.address, fleet.store))
        agents = [
            stack.enter_context(
                running(
                    agent_config(
                        broker,
                        (fleet.key_path, fleet.key_path.with_suffix(".pub")),
                        fleet.fleet,
                        device,
                        tmp_path / device,
                    )
                )
            )
            for device in DEVICES
        ]
        wait_for(
            lambda: all(a.status()["model_version"] == "1.0.0" for a in agents),
            what="the devices on 1.0.0",
        )
        yield loop, agents


def feed(agents: list[Agent], favour: str, seed: int, store_count: int, fleet: Published) -> None:
    """300 records per device, labelled by the favoured model's 0.5 decisions."""
    for i, agent in enumerate(agents):
        batch = records(300, seed=seed + i)
        answered = agent.score(batch)
        if favour == "challenger":
            decisive = challenger_scores(agent, batch)
        else:
            decisive = np.array([p.probability for p in answered])
        for prediction, score in zip(answered, decisive, strict=True):
            agent.outcome(prediction.id, int(score >= 0.5))
        assert agent.close_window() is not None
    wait_for(
        lambda: fleet.store.report_count(fleet.fleet) >= store_count,
        what=f"{store_count} reports stored",
    )


def step_until(loop: RetrainLoop, *waiting: str) -> StepResult:
    result = loop.step()
    deadline = time.monotonic() + 60
    while result.action in waiting and time.monotonic() < deadline:
        time.sleep(0.2)
        result = loop.step()
    return result


def test_shadow_evidence_moves_a_better_candidate_to_canary_then_promotion(
    published: Published,  # noqa: F811
    broker: MosquittoBroker,
    tmp_path: Path,
) -> None:
    with shadow_fleet(published, broker, tmp_path) as (loop, agents):
        assert loop.run(force=True).action == "shadow"
        assert actions(published) == ["check", "retrained", "accepted", "shadow"]
        wait_for(
            lambda: all(a.status()["challenger"] == "churn 1.1.0" for a in agents),
            what="both devices scoring 1.1.0 in shadow",
        )
        # Still answering with the champion.
        assert {p.model_version for p in agents[0].score(records(5, seed=1))} == {"1.0.0"}
        feed(agents, "challenger", seed=20, store_count=2, fleet=published)
        result = step_until(loop, "wait")
        assert result.action == "canary", result.message
        canary = published.store.decisions(published.fleet)[-1]
        assert canary.action == "canary"
        shadow = canary.evidence["shadow"]
        assert shadow["labelled"] >= 600
        assert shadow["auroc_gain_low"] > 0
        assert shadow["challenger_auroc"] > shadow["champion_auroc"]
        state = rollout_status(published.fleet, broker.address, list(published.trusted))
        assert state is not None
        assert state.challenger is None
        assert state.canary is not None
        assert state.canary.version == "1.1.0"
        wait_for(
            lambda: all(
                a.status()["model_version"] == "1.1.0" and a.status()["challenger"] is None
                for a in agents
            ),
            what="the canary devices on 1.1.0, with no challenger beside it",
        )
        # The canary stage as before: the canary's own reports decide the promotion.
        feed(agents, "champion", seed=40, store_count=4, fleet=published)
        result = step_until(loop, "wait")
        assert result.action == "promoted", result.message
    assert actions(published)[-3:] == ["shadow", "canary", "promoted"]


def test_a_candidate_not_better_in_shadow_is_rejected_and_escalated(
    published: Published,  # noqa: F811
    broker: MosquittoBroker,
    tmp_path: Path,
) -> None:
    with shadow_fleet(published, broker, tmp_path) as (loop, agents):
        assert loop.run(force=True).action == "shadow"
        wait_for(
            lambda: all(a.status()["challenger"] == "churn 1.1.0" for a in agents),
            what="both devices scoring 1.1.0 in shadow",
        )
        feed(agents, "champion", seed=30, store_count=2, fleet=published)
        result = step_until(loop, "wait")
        assert result.action == "escalated", result.message
        wait_for(
            lambda: all(a.status()["challenger"] is None for a in agents),
            what="the devices to drop the challenger",
        )
        assert all(a.status()["model_version"] == "1.0.0" for a in agents)
    assert actions(published)[-3:] == ["shadow", "rejected", "escalated"]
    rejected = published.store.decisions(published.fleet)[-2]
    assert (
        rejected.evidence["shadow"]["champion_auroc"]
        > rejected.evidence["shadow"]["challenger_auroc"]
    )
    alerts = published.store.alerts(published.fleet, open_only=True)
    escalation = [a for a in alerts if a.rule == "retraining_no_benefit"]
    assert len(escalation) == 1
    assert escalation[0].subject == "shadow"
    assert escalation[0].evidence["candidate_version"] == "1.1.0"
    state = rollout_status(published.fleet, broker.address, list(published.trusted))
    assert state is not None
    assert (state.challenger, state.canary) == (None, None)
    assert state.stable is not None
    assert state.stable.version == "1.0.0"


def test_rollups_carry_the_shadow_sums(published: Published) -> None:  # noqa: F811
    """A rollup body (SketchSums.to_dict) holds the challengers' sums, and rollups merged
    again give what the raw reports give (docs/architecture.md §7b's extension point)."""
    from dataclasses import replace

    from edgefleet.central.data.loader import encode_features
    from edgefleet.central.monitor.merging import add_counts
    from edgefleet.central.monitor.validation import layout_of
    from edgefleet.edge.aggregate import SketchSums, merge_all
    from edgefleet.edge.sketch_builder import SketchBuilder

    manifest = published.running
    made = []
    for i in range(4):
        builder = SketchBuilder.from_manifest(manifest)
        frame = generate(40, seed=i).frame
        builder.add(
            encode_features(frame[list(manifest.schema.names)], manifest.schema),
            np.linspace(0.05, 0.95, 40),
            0.001,
        )
        labels = [0, 1] * 10
        builder.add_outcomes(np.linspace(0.05, 0.95, 20), labels)
        paired = sketch_of(
            np.linspace(0.05, 0.95, 20).tolist(), np.linspace(0.95, 0.05, 20).tolist(), labels
        )
        shadow = ShadowSketch(
            f"1.{1 + i % 2}.0",
            histogram(np.linspace(0.05, 0.95, 40).tolist()),
            paired.challenger,
            paired.champion,
        )
        made.append(
            Report.from_body(
                replace(builder.roll(), shadow=shadow),
                fleet="f",
                device_id=f"d{i}",
                sequence=1,
                cohort="stable",
                device_group="default",
            )
        )
    halves = []
    for part in (made[:2], made[2:]):
        sums = SketchSums()
        for report in part:
            raw = report.to_dict()
            add_counts(sums, raw, layout_of(raw))
        assert sums.to_dict() == sums.freeze().to_dict()
        halves.append(sums.to_dict())
    total = SketchSums()
    for body in halves:
        add_counts(total, body, layout_of(body))
    merged = total.freeze()
    assert merged == merge_all(made)
    assert [s.model_version for s in merged.shadow] == ["1.1.0", "1.2.0"]
    one = merged.shadow_of("1.1.0")
    assert one is not None
    assert one.labelled == 40

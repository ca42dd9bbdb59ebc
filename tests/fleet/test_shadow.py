"""Shadow scoring on real agents over Mosquitto: a rollout names a challenger; the devices
of the shadow cohort install it beside the champion (verified like any model), score every
record with both and return the champion's answers only; their reports (version 3) carry
the challenger's histograms and both models' labelled histograms of the same records, the
other devices' reports carry none, and the monitor's merge sums them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.data.generator import generate
from edgefleet.central.publish import publish, rollout_status
from edgefleet.central.shadowing import end_shadow, publish_shadow, shadow_to_canary
from edgefleet.edge.agent.agent import Agent
from edgefleet.edge.report import SHADOW_VERSION, Report
from edgefleet.edge.rollout import challenger_for, in_shadow
from edgefleet.edge.signing import load_private_key
from edgefleet.errors import InputError
from tests.fleet.kit import agent_config, collecting, monitoring, running, wait_for


def records(count: int, seed: int) -> list[dict[str, Any]]:
    frame = generate(count, seed=seed).frame.drop(columns=["churn"])
    return [
        {str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]


def split_devices(rollout_id: str, percent: int) -> tuple[str, str]:
    """One device id inside the shadow cohort and one outside it."""
    names = [f"dev-{i}" for i in range(200)]
    inside = next(n for n in names if in_shadow(n, rollout_id, percent))
    outside = next(n for n in names if not in_shadow(n, rollout_id, percent))
    return inside, outside


def challenger_scores(agent: Agent, batch: list[dict[str, Any]]) -> np.ndarray[Any, Any]:
    challenger = agent.installer.challenger
    assert challenger is not None
    scorer = challenger.scorer
    return np.asarray(scorer.backend.predict_proba(scorer.encoder.encode(batch))[:, 1])


def test_shadow_devices_score_both_models_and_answer_with_the_champion(
    broker: MosquittoBroker, bundles: list[Path], keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    fleet = f"s{uuid.uuid4().hex[:8]}"
    key = load_private_key(keypair[0])
    state_file = tmp_path / "rollout.json"
    publish(bundles[0], fleet, broker.address, key, state_file=state_file)
    shadowed = publish_shadow(
        bundles[1], fleet, broker.address, key, shadow_percent=50, state_file=state_file
    )
    state = shadowed.state
    assert state.challenger is not None
    assert (state.challenger.version, state.shadow_percent) == ("1.1.0", 50)
    assert state.stable is not None
    assert state.stable.version == "1.0.0"
    inside, outside = split_devices(state.rollout_id, 50)
    assert challenger_for(state, inside) == state.challenger
    assert challenger_for(state, outside) is None
    batch = records(300, seed=5)
    with (
        collecting(broker, fleet, f"collector-{fleet}") as collector,
        monitoring(broker, fleet, tmp_path / "monitor.db") as stored,
        running(agent_config(broker, keypair, fleet, inside, tmp_path / inside)) as shadow,
        running(agent_config(broker, keypair, fleet, outside, tmp_path / outside)) as plain,
    ):
        wait_for(
            lambda: (
                shadow.status()["challenger"] == "churn 1.1.0"
                and shadow.status()["model_version"] == "1.0.0"
            ),
            what="the shadow device to run 1.0.0 with 1.1.0 beside it",
        )
        wait_for(lambda: plain.status()["model_version"] == "1.0.0", what="the plain device")
        assert plain.status()["challenger"] is None
        # The challenger went through the same verification into its own folder.
        assert shadow.installer.challenger is not None
        assert shadow.store.folder(shadow.installer.challenger.manifest_sha256).is_dir()

        answered = shadow.score(batch)
        reference = plain.score(batch)
        # The answers are the champion's: the same as a device without a challenger, and
        # not the challenger's scores of the same records.
        assert [p.model_version for p in answered] == ["1.0.0"] * len(batch)
        got = np.array([p.probability for p in answered])
        assert np.allclose(got, [p.probability for p in reference], atol=1e-6)
        theirs = challenger_scores(shadow, batch)
        assert not np.allclose(got, theirs, atol=1e-3)
        # Labels that favour the challenger: its own 0.5 decisions.
        labels = (theirs >= 0.5).astype(int)
        for prediction, label in zip(answered[:200], labels[:200], strict=True):
            shadow.outcome(prediction.id, int(label))
        for prediction, label in zip(reference[:200], labels[:200], strict=True):
            plain.outcome(prediction.id, int(label))
        assert shadow.close_window() is not None
        assert plain.close_window() is not None
        wait_for(lambda: collector.unique == 2, what="both reports")
        wait_for(lambda: stored.rows() == 2, what="both reports stored")

    by_device = {r.device_id: r for r in collector.reports}
    plain_report, shadow_report = by_device[outside], by_device[inside]
    assert plain_report.shadow is None
    assert plain_report.schema_version < SHADOW_VERSION
    assert shadow_report.schema_version == SHADOW_VERSION
    sketch = shadow_report.shadow
    assert sketch is not None
    assert sketch.model_version == "1.1.0"
    assert sketch.scores.total == 300 == shadow_report.scored
    assert sketch.labelled == 200 == shadow_report.outcomes.labelled
    # The champion's half of the pair is the report's own labelled histogram.
    assert sketch.champion == shadow_report.outcomes.by_label
    assert sketch.challenger[1].total == int(labels[:200].sum())
    # Through the wire format and the store's merge.
    assert Report.decode(shadow_report.encode()) == shadow_report
    aggregate = stored.store.aggregate(fleet, model_version="1.0.0")
    assert aggregate is not None
    assert aggregate.reports == 2
    assert aggregate.shadow_of("1.1.0") == sketch
    assert aggregate.shadow_of("1.0.0") is None

    # From shadow to canary, and a shadow test's end.
    after = shadow_to_canary(fleet, broker.address, key, canary_percent=30, state_file=state_file)
    assert after.challenger is None
    assert after.canary is not None
    assert (after.canary.version, after.canary_percent) == ("1.1.0", 30)
    with pytest.raises(InputError, match="no challenger"):
        end_shadow(fleet, broker.address, key, state_file=state_file)
    retained = rollout_status(fleet, broker.address, [shadow.config.trusted_keys[0]])
    assert retained == after


def test_a_challenger_is_refused_where_it_cannot_be_compared(
    broker: MosquittoBroker, bundles: list[Path], keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    fleet = f"s{uuid.uuid4().hex[:8]}"
    key = load_private_key(keypair[0])
    state_file = tmp_path / "rollout.json"
    with pytest.raises(InputError, match="no stable model"):
        publish_shadow(bundles[1], fleet, broker.address, key, shadow_percent=10)
    publish(bundles[1], fleet, broker.address, key, state_file=state_file)
    with pytest.raises(InputError, match="not higher than the stable"):
        publish_shadow(
            bundles[0], fleet, broker.address, key, shadow_percent=10, state_file=state_file
        )
    with pytest.raises(InputError, match="1 to 100"):
        publish_shadow(
            bundles[1], fleet, broker.address, key, shadow_percent=0, state_file=state_file
        )

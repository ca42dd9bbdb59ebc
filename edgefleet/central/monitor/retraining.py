"""Retraining, step by step: read the newest labelled rows, hold out the rows to judge on,
choose the training window by validation, fit and register the candidate, and judge its
benefit over the running model (docs/architecture.md §14). Models of every task are
retrained, and models the user brought (:mod:`~edgefleet.central.monitor.refit`).

:class:`Retrainer` does one attempt for :class:`~edgefleet.central.monitor.loop.RetrainLoop`
with the loop's settings of the moment (:class:`RetrainSettings`), recording the
``retrained`` and ``accepted`` / ``rejected`` decisions through the loop's ``decide``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sklearn.metrics import average_precision_score, roc_auc_score

from edgefleet.central.data.loader import (
    TrainingTable,
    data_sha256,
    encode_features,
    load_training_table,
)
from edgefleet.central.monitor.benefit import BenefitJudgement, Metric, judge_benefit
from edgefleet.central.monitor.refit import Refitter, refitter
from edgefleet.central.monitor.sources import DataSource, LabelledData, fingerprint, read_labelled
from edgefleet.central.monitor.task_measures import judging_metric
from edgefleet.central.monitor.windows import (
    Window,
    WindowChoice,
    choose_window,
    split,
    window_named,
)
from edgefleet.central.registry import ModelVersion, Registry
from edgefleet.central.trainer import model_outputs
from edgefleet.errors import DataError

Decide = Callable[[str, str, str, Mapping[str, Any]], Any]


@dataclass(frozen=True)
class RetrainSettings:
    """The loop's retraining parameters (see :class:`~edgefleet.central.monitor.loop.
    RetrainLoop`)."""

    data_source: DataSource
    reference_source: DataSource | None
    compare_source: DataSource | None
    compare_share: float
    max_rows: int
    metric: Metric
    min_gain: float
    confidence: float
    resamples: int
    recency: float
    calibration_gap: float
    seed: int


@dataclass(frozen=True)
class Comparison:
    """Candidate and running model on the same held-out recent labelled rows."""

    rows: int
    positives: int
    candidate_auroc: float
    candidate_average_precision: float
    running_auroc: float
    running_average_precision: float
    benefit: BenefitJudgement

    @property
    def accepted(self) -> bool:
        return self.benefit.helps

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "positives": self.positives,
            "candidate": {
                "auroc": self.candidate_auroc,
                "average_precision": self.candidate_average_precision,
            },
            "running": {
                "auroc": self.running_auroc,
                "average_precision": self.running_average_precision,
            },
            "benefit": self.benefit.to_dict(),
        }


@dataclass(frozen=True)
class Candidate:
    version: ModelVersion
    running: ModelVersion
    comparison: Comparison
    data_fingerprint: str = ""
    window: str = "newest"


@dataclass(frozen=True)
class Split:
    """The newest rows the candidate may learn from, and the rows it is judged on."""

    training: TrainingTable
    compared: TrainingTable
    compare_from: str


class Retrainer:
    """One retraining attempt (module docstring)."""

    def __init__(
        self,
        settings: RetrainSettings,
        registry: Registry,
        decide: Decide,
        progress: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.decide = decide
        self.progress = progress

    def retrain(self, running: ModelVersion, *, calibration_alert: bool = False) -> Candidate:
        """Train a candidate like the running version on the window that validates best,
        register it, and judge its benefit over the running version (records ``retrained``
        and then ``accepted`` or ``rejected``). ``calibration_alert``: a calibration alert
        asks for the new model, so fixing calibration is a benefit too."""
        data = read_labelled(self.settings.data_source, max_rows=self.settings.max_rows)
        split_rows = self.split_newest(running, data)
        reference = self.reference_table(running)
        how = refitter(running, self.settings.seed)
        choice = choose_window(
            split_rows.training,
            reference,
            how.fit,
            metric=self.settings.metric,
            recency=self.settings.recency,
            seed=self.settings.seed,
            weighable=how.weighable,
        )
        window = window_named(
            choice.chosen,
            split_rows.training,
            reference,
            recency=self.settings.recency,
            weighable=how.weighable,
        )
        self.progress(
            f"retraining {running.family} on the {window.name} window ({window.table.n_rows:,} "
            f"rows; running {running.label})"
        )
        candidate = self.registry.register(
            how.fit(window), name=running.name, data_sha256=data_sha256(window.table.features)
        )
        self._record_retrained(candidate, running, data, window, choice, how)
        comparison = self.compare(
            candidate, running, split_rows.compared, calibration_alert=calibration_alert
        )
        data_fingerprint = fingerprint(data)
        self._record_comparison(
            candidate, running, comparison, split_rows.compare_from, data_fingerprint
        )
        return Candidate(candidate, running, comparison, data_fingerprint, window.name)

    def split_newest(self, running: ModelVersion, data: LabelledData) -> Split:
        """The newest rows to train on and the rows to judge on: a separate source, or a
        stratified ``compare_share`` of the newest rows held out of everything else."""
        schema = running.load_card().schema
        table = load_training_table(data.frame, running.target, schema=schema)
        if self.settings.compare_source is None:
            training, compared = split(table, self.settings.compare_share, self.settings.seed)
            held = f"{self.settings.compare_share:.0%} of the newest rows, held out of training"
            return Split(training, compared, held)
        other = read_labelled(self.settings.compare_source, max_rows=self.settings.max_rows)
        compared = load_training_table(other.frame, running.target, schema=schema)
        return Split(table, compared, other.source)

    def reference_table(self, running: ModelVersion) -> TrainingTable | None:
        if self.settings.reference_source is None:
            return None
        data = read_labelled(self.settings.reference_source, max_rows=self.settings.max_rows)
        schema = running.load_card().schema
        return load_training_table(data.frame, running.target, schema=schema)

    def _record_retrained(
        self,
        candidate: ModelVersion,
        running: ModelVersion,
        data: LabelledData,
        window: Window,
        choice: WindowChoice,
        how: Refitter,
    ) -> None:
        binary = window.table.schema.task == "binary"
        self.decide(
            "retrained",
            candidate.version,
            f"trained {candidate.label} ({running.family}) on the {window.name} window, "
            f"{window.table.n_rows:,} rows",
            {
                "source": data.source,
                "files": list(data.files),
                "rows": window.table.n_rows,
                "positives": int(window.table.labels.sum()) if binary else None,
                "task": window.table.schema.task,
                "refit": how.how,
                "window": choice.to_dict(),
                "reference_source": None
                if self.settings.reference_source is None
                else str(self.settings.reference_source),
                "family": running.family,
                "params": dict(running.params),
                "based_on": running.version,
                "holdout_metrics": dict(candidate.metrics),
                "data_sha256": candidate.data_sha256,
            },
        )

    def _record_comparison(
        self,
        candidate: ModelVersion,
        running: ModelVersion,
        comparison: Comparison,
        compare_from: str,
        data_fingerprint: str,
    ) -> None:
        self.decide(
            "accepted" if comparison.accepted else "rejected",
            candidate.version,
            f"{candidate.label} vs running {running.version}: {comparison.benefit.reason}"
            + (
                f"; AUROC {comparison.candidate_auroc:.4f} vs {comparison.running_auroc:.4f}, "
                f"AP {comparison.candidate_average_precision:.4f} vs "
                f"{comparison.running_average_precision:.4f}"
                if math.isfinite(comparison.candidate_auroc)
                else ""
            ),
            {
                **comparison.to_dict(),
                "compared_on": compare_from,
                "running_version": running.version,
                "data_fingerprint": data_fingerprint,
            },
        )

    def compare(
        self,
        candidate: ModelVersion,
        running: ModelVersion,
        table: TrainingTable,
        *,
        calibration_alert: bool = False,
    ) -> Comparison:
        """Both models on ``table`` (raw scores: no binning here), and the paired judgement
        of the candidate's benefit: on the loop's metric for a binary model, on the task's
        judging metric (log loss, RMSE) for a multi-class or regression one."""
        if table.schema.task != "binary":
            return self._compare_task(candidate, running, table)
        if len(set(table.labels.tolist())) < 2:
            raise DataError("the comparison data hold only one class: cannot compare models")
        inputs = encode_features(table.features, table.schema)
        labels = table.labels.astype(int)
        ours = candidate.load_pipeline().predict_proba(inputs)[:, 1]
        theirs = running.load_pipeline().predict_proba(inputs)[:, 1]
        benefit = judge_benefit(
            labels,
            running=theirs,
            candidate=ours,
            metric=self.settings.metric,
            min_gain=self.settings.min_gain,
            confidence=self.settings.confidence,
            resamples=self.settings.resamples,
            calibration_threshold=self.settings.calibration_gap,
            calibration_alert=calibration_alert,
            seed=self.settings.seed,
        )
        return Comparison(
            rows=len(labels),
            positives=int(labels.sum()),
            candidate_auroc=float(roc_auc_score(labels, ours)),
            candidate_average_precision=float(average_precision_score(labels, ours)),
            running_auroc=float(roc_auc_score(labels, theirs)),
            running_average_precision=float(average_precision_score(labels, theirs)),
            benefit=benefit,
        )

    def _compare_task(
        self, candidate: ModelVersion, running: ModelVersion, table: TrainingTable
    ) -> Comparison:
        schema = table.schema
        inputs = encode_features(table.features, schema)
        ours = model_outputs(candidate.load_pipeline(), schema, inputs)
        theirs = model_outputs(running.load_pipeline(), schema, inputs)
        if schema.task == "regression":
            ours, theirs = ours[:, 0], theirs[:, 0]
        benefit = judge_benefit(
            table.labels,
            running=theirs,
            candidate=ours,
            metric=judging_metric(schema.task)[0],
            min_gain=self.settings.min_gain,
            confidence=self.settings.confidence,
            resamples=self.settings.resamples,
            calibration_alert=False,
            seed=self.settings.seed,
            scores_are_probabilities=False,
        )
        nan = float("nan")
        return Comparison(len(table.labels), 0, nan, nan, nan, nan, benefit)

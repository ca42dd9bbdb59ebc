"""How well a model did in the field, on a chosen set of devices: the AUROC of the labelled
score histograms their reports carry (the outcomes that came back), merged across them.

The demo uses it to show what a promotion changed where the drift hit: the same devices,
the old model's reports after the drift against the new model's after the update.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edgefleet.central.monitor.measures import labelled_counts
from edgefleet.central.monitor.quality import binned_auroc
from edgefleet.central.monitor.store import MonitorStore


@dataclass(frozen=True)
class FieldAuroc:
    """AUROC of one model version's labelled scores on some devices, and its counts."""

    model_version: str
    auroc: float
    labelled: int
    positives: int
    devices: int


def field_auroc(
    store: MonitorStore,
    fleet: str,
    devices: Iterable[str],
    model_version: str,
    *,
    since: float | None = None,
    until: float | None = None,
) -> FieldAuroc | None:
    """The AUROC of ``model_version`` on ``devices``' labelled reports whose window ended in
    ``[since, until)``; None without both classes."""
    negatives: list[int] = []
    positives: list[int] = []
    seen = 0
    for device in devices:
        aggregate = store.aggregate(
            fleet, model_version=model_version, device_id=device, since=since, until=until
        )
        if aggregate is None:
            continue
        seen += 1
        neg, pos = labelled_counts(aggregate)
        negatives = neg if not negatives else [a + b for a, b in zip(negatives, neg, strict=True)]
        positives = pos if not positives else [a + b for a, b in zip(positives, pos, strict=True)]
    if not sum(negatives) or not sum(positives):
        return None
    return FieldAuroc(
        model_version=model_version,
        auroc=binned_auroc(negatives, positives),
        labelled=sum(negatives) + sum(positives),
        positives=sum(positives),
        devices=seen,
    )

"""Monitoring maths on mergeable histograms (docs/architecture.md §7).

- :mod:`~edgefleet.central.monitor.drift`: input drift per feature (PSI and Jensen-Shannon
  distance on histograms with identical bins) and a verdict with a minimum count.
- :mod:`~edgefleet.central.monitor.quality`: model quality from score histograms: AUROC and
  average precision from labelled counts (with their binning error), a label-free estimate
  while labels are pending, score drift and rates with a confidence interval.

Everything here takes counts, never rows, so the fleet, a cohort or one device is measured
the same way: add up the histograms of its reports and call the same function.
"""

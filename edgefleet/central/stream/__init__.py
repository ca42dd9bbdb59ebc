"""Online scoring of a stream into the operational database (``edgefleet stream score``):
at-least-once delivery plus an idempotent upsert by key. docs/architecture.md §13."""

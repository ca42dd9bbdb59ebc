"""The central scoring service (``edgefleet serve-model``): verified bundles behind the Open
Inference Protocol, adaptive batching, overload answered, and fleet membership.
docs/architecture.md §12."""

"""Batch scoring: files and the operational database, on this machine or on Spark
(docs/architecture.md §11)."""

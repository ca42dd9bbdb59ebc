"""Bring your own scikit-learn model: load, read, check and register it."""

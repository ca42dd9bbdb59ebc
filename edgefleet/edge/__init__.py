"""The device runtime: bundle verification, record encoding, scoring, and the contracts
(feature schema, manifest, profiles) that the central side imports from here.

Nothing below this package may import scikit-learn, TensorFlow, coremltools, or any other
edgefleet package than ``edgefleet.errors``: a device installs edgefleet with only the edge
extras (tests/edge/test_dependency_rule.py holds this).
"""

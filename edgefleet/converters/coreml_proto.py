"""coremltools' protobuf classes, imported without its import-time warnings.

On import, coremltools logs that its scikit-learn converter refuses scikit-learn > 1.5.1,
that TensorFlow is newer than it tested, and that its macOS runtime is missing. All three
are known and none matters here: edgefleet writes the CoreML spec itself and checks it
with its own evaluator. Left on, they bury the export's progress lines.
"""

import logging

logging.getLogger("coremltools").setLevel(logging.ERROR)

from coremltools.proto import FeatureTypes_pb2, Model_pb2, TreeEnsemble_pb2  # noqa: E402

__all__ = ["FeatureTypes_pb2", "Model_pb2", "TreeEnsemble_pb2"]

"""Converters: a fitted scikit-learn pipeline to ONNX, CoreML, TFLite and a web bundle."""

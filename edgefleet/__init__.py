"""edgefleet: put scikit-learn models on edge devices and keep them good there."""

__version__ = "0.1.0"

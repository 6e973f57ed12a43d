"""Accuracy-aware planning: search a token plan on calibration images (``edgeprune tune``)."""

from edgeprune.tune.data import ImageSet, Preprocess, load_calibration
from edgeprune.tune.search import DEFAULT_METHODS, TuneResult, tune

__all__ = ["DEFAULT_METHODS", "ImageSet", "Preprocess", "TuneResult", "load_calibration", "tune"]

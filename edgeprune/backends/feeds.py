"""Inputs for checking and timing graphs: fresh random pixels from an unpredictable seed (so a check
never passes on one lucky input), and the one error measure every comparison uses."""

from __future__ import annotations

import os
from collections import deque
from typing import Any

import numpy as np


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|: scale-aware, and finite where expected crosses zero."""
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(actual.astype(np.float64) - expected).max()) / scale


RECENT_SEEDS: deque[int] = deque(maxlen=32)  # printed by the test session when a test fails


def fresh_seed() -> int:
    """An unpredictable seed (or ``$EDGEPRUNE_SEED``, to rerun a failure), remembered in RECENT_SEEDS."""
    forced = os.environ.get("EDGEPRUNE_SEED")
    seed = int(forced) if forced else int.from_bytes(os.urandom(8), "little") >> 1
    RECENT_SEEDS.append(seed)
    return seed


def random_pixels(shape: list[int]) -> np.ndarray:
    """Standard-normal float32 pixels of ``shape`` from a fresh seed."""
    return np.random.default_rng(fresh_seed()).standard_normal(shape, dtype=np.float32)


def random_feed(inputs: list[dict[str, Any]], batch: int = 1) -> dict[str, np.ndarray]:
    """Fresh standard-normal inputs (never zeros) for a manifest's input list; symbolic dims take ``batch``."""
    return {spec["name"]: random_pixels([d if isinstance(d, int) else batch for d in spec["shape"]]) for spec in inputs}

"""A trained reference segmenter as a calibrated ToMe engine set, made once in a work folder and reused
(the runtime benchmarks' fixture: scripts/bench_runtime.py, scripts/bench_pool.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from edgeprune.core.progress import Progress, say

BUDGETS = (1.0, 0.75, 0.5, 0.35)


def reference_engine_set(work: Path, threads: int, model_dir: Path, budgets: Sequence[float] = BUDGETS,
                         progress: Optional[Progress] = None) -> Any:
    """``work/set``: exported when missing, recalibrated when its calibration does not match ``threads``."""
    from edgeprune.artifacts.engine_set import calibration_matches, is_engine_set, load_engine_set
    from edgeprune.exporting.engine_set import export_engine_set
    from edgeprune.families.timm_seg import load_segmenter
    from edgeprune.measure.calibrate import calibrate_engine_set

    root = work / "set"
    if not is_engine_set(root):
        say(progress, f"exporting the engine set to {root} ...")
        export_engine_set(load_segmenter(model_dir), "tome", list(budgets), root)
    engines = load_engine_set(root)
    cal = engines.calibration or {}
    if not calibration_matches(engines)[0] or cal.get("threads") != threads or cal.get("spinning") is not False:
        say(progress, "calibrating ...")
        calibrate_engine_set(engines, rounds=40, threads=threads)
    return engines

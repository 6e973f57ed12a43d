"""What ``edgeprune demo`` with no arguments runs: the reference segmenter as a calibrated engine set and as a
temporal artifact, exported on first use into the user cache and reused afterwards, with a frame-rate
target that tightens half way through the clip so the scheduler visibly switches budgets.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress, say

BUDGETS = (1.0, 0.75, 0.5, 0.35)
RECOMPUTE = 0.25
CALIBRATION_ROUNDS = 30


@dataclass(frozen=True)
class DefaultModels:
    engine_set: Path
    temporal: Path


def cache_root() -> Path:
    """``$EDGEPRUNE_CACHE_DIR/demo``, else ``~/.cache/edgeprune/demo`` (the engine and latency caches' parent)."""
    from edgeprune.core.cache import cache_dir

    return cache_dir("demo")


def _fingerprint(model: Path) -> str:
    """Model files + edgeprune's version: a changed checkpoint or exporter gets fresh artifacts."""
    from edgeprune.core.version import __version__

    digest = hashlib.sha256(__version__.encode())
    for name in ("config.json", "model.safetensors"):
        digest.update((model / name).read_bytes())
    return digest.hexdigest()[:12]


def prepare(model: Path, threads: int = 2, progress: Optional[Progress] = None,
            temporal: bool = True) -> DefaultModels:
    """The cached engine set (calibrated here) and temporal artifact of ``model``; made when missing
    (the temporal artifact only when ``temporal``)."""
    from edgeprune.measure.calibrate import calibrate_engine_set
    from edgeprune.artifacts.engine_set import is_engine_set, load_engine_set
    from edgeprune.runtime.temporal import is_temporal

    if not (model / "config.json").is_file():
        raise EdgepruneError(f"the default demo needs the segmenter at {model}; pass --model")
    folder = cache_root() / f"{model.name}-{_fingerprint(model)}"
    engine_set, temporal_dir = folder / "set", folder / f"t{RECOMPUTE:g}"
    want_temporal = temporal
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgepruneError(f"cannot create the demo cache {folder}: {exc.strerror or exc}") from None
    net = info = None
    if not is_engine_set(engine_set) or (want_temporal and not is_temporal(temporal_dir)):
        from edgeprune.core.extras import require_extra

        require_extra("export", f"the demo's first-use export of {model} (or pass --model SET)")
        from edgeprune.families.loading import load_model

        say(progress, f"first run: exporting {model} into {folder} (reused afterwards)")
        net, info = load_model(str(model))
    if not is_engine_set(engine_set):
        from edgeprune.exporting.engine_set import export_engine_set

        shutil.rmtree(engine_set, ignore_errors=True)  # a half-made set from an interrupted first run
        say(progress, f"exporting the engine set (budgets {', '.join(f'{b:g}' for b in BUDGETS)})")
        export_engine_set(net, "tome", BUDGETS, engine_set, model_info=info, progress=progress)
    loaded = load_engine_set(engine_set, verify=False)
    if not loaded.calibration:
        say(progress, f"calibrating the engine set on this machine ({CALIBRATION_ROUNDS} rounds)")
        calibrate_engine_set(loaded, rounds=CALIBRATION_ROUNDS, threads=threads)
    if want_temporal and not is_temporal(temporal_dir):
        from edgeprune.exporting.temporal import export_temporal

        shutil.rmtree(temporal_dir, ignore_errors=True)
        say(progress, f"exporting the temporal artifact (recompute {RECOMPUTE:.0%} of the patches)")
        export_temporal(net, RECOMPUTE, temporal_dir, model_info=info, progress=progress)
    return DefaultModels(engine_set, temporal_dir)


def stepped_target(engine_set: Path, frames: int) -> str:
    """A ``--target-fps`` schedule from the set's calibration: loose enough for the full model in the first
    half, then tight enough that only the smaller budgets fit — a load step the scheduler must follow."""
    from edgeprune.artifacts.engine_set import load_engine_set
    from edgeprune.runtime.runtime import profiles_from_calibration

    profiles = profiles_from_calibration(load_engine_set(engine_set, verify=False))
    full, small = profiles[0], profiles[-1]
    middle = profiles[len(profiles) // 2]
    loose_ms = 2.0 * full.p95_ms + 1.0  # the frame's pre-processing and scheduling ride on top of the engine
    tight_ms = max(small.p95_ms * 1.3 + 0.5, 0.5 * (middle.p50_ms + full.p50_ms))
    tight_ms = min(tight_ms, 0.9 * full.p50_ms)
    return f"{1000.0 / loose_ms:.1f},{1000.0 / tight_ms:.1f}@{max(1, frames // 2)}"


__all__ = ["BUDGETS", "DefaultModels", "cache_root", "prepare", "stepped_target"]

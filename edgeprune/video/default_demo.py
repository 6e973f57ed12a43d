"""What ``edgeprune demo`` with no arguments runs: the reference segmenter as a calibrated engine set and as a
temporal artifact, exported on first use into the user cache and reused afterwards, with a frame-rate
target that tightens half way through the clip so the scheduler visibly switches budgets.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

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


def engines_to_calibrate(provider: str = "cpu", precision: Optional[str] = None,
                         device: Optional[str] = None) -> list[Any]:
    """The engines the demo's cached set must be calibrated for: the one asked for; with ``auto``, ONNX
    Runtime's CPU provider and, where installed, OpenVINO, so that auto has timings to compare."""
    from edgeprune.backends.runners import AUTO, cpu_has_bf16, engine_choice, openvino_installed

    if provider != AUTO:
        return [engine_choice(provider, precision, device)]
    engines = [engine_choice("cpu")] if precision in (None, "fp32") and device in (None, "CPU") else []
    if openvino_installed():
        engines.append(engine_choice("openvino", precision or ("bf16" if cpu_has_bf16() else "fp32"), device))
    return engines or [engine_choice("openvino", precision, device)]  # asks for OpenVINO: its error, if missing


def prepare(model: Path, threads: int = 2, progress: Optional[Progress] = None,
            temporal: bool = True, provider: str = "cpu", precision: Optional[str] = None,
            device: Optional[str] = None) -> DefaultModels:
    """The cached engine set (calibrated here, for the engines :func:`engines_to_calibrate` names) and
    temporal artifact of ``model``; made when missing (the temporal artifact only when ``temporal``)."""
    from edgeprune.measure.calibrate import calibrate_engine_set, stored_calibrations
    from edgeprune.artifacts.engine_set import is_engine_set, load_engine_set
    from edgeprune.runtime.temporal import is_temporal

    if not (model / "config.json").is_file():
        raise EdgepruneError(f"the default demo needs the segmenter at {model}; pass --model")
    wanted = [engine.check() for engine in engines_to_calibrate(provider, precision, device)]  # before any export
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
    for engine in wanted:
        if engine.key not in stored_calibrations(loaded):
            say(progress, f"calibrating the engine set on this machine for {engine.describe()} ({CALIBRATION_ROUNDS} rounds)")
            calibrate_engine_set(loaded, rounds=CALIBRATION_ROUNDS, threads=threads, provider=engine.provider,
                                 precision=engine.precision if engine.is_openvino else None, device=engine.device)
    if want_temporal and not is_temporal(temporal_dir):
        from edgeprune.exporting.temporal import export_temporal

        shutil.rmtree(temporal_dir, ignore_errors=True)
        say(progress, f"exporting the temporal artifact (recompute {RECOMPUTE:.0%} of the patches)")
        export_temporal(net, RECOMPUTE, temporal_dir, model_info=info, progress=progress)
    return DefaultModels(engine_set, temporal_dir)


def stepped_target(engine_set: Path, frames: int, provider: str = "cpu", precision: Optional[str] = None,
                   device: Optional[str] = None) -> str:
    """A ``--target-fps`` schedule from the set's calibration for the engine that will run it: loose enough for
    the full model in the first half, then tight enough that only the smaller budgets fit — a load step the
    scheduler must follow."""
    from edgeprune.artifacts.engine_set import load_engine_set
    from edgeprune.measure.calibrate import calibration_for, resolve_engine
    from edgeprune.runtime.runtime import profiles_from_calibration

    loaded = load_engine_set(engine_set, verify=False)
    calibration, _ = calibration_for(loaded, resolve_engine(loaded, provider, precision, device)[0])
    profiles = profiles_from_calibration(loaded, calibration)
    full, small = profiles[0], profiles[-1]
    middle = profiles[len(profiles) // 2]
    loose_ms = 2.0 * full.p95_ms + 1.0  # the frame's pre-processing and scheduling ride on top of the engine
    tight_ms = max(small.p95_ms * 1.3 + 0.5, 0.5 * (middle.p50_ms + full.p50_ms))
    tight_ms = min(tight_ms, 0.9 * full.p50_ms)
    return f"{1000.0 / loose_ms:.1f},{1000.0 / tight_ms:.1f}@{max(1, frames // 2)}"


__all__ = ["BUDGETS", "DefaultModels", "cache_root", "engines_to_calibrate", "prepare", "stepped_target"]

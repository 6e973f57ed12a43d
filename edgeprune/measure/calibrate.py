"""Calibrate an engine set: time every member interleaved on this machine and store the latencies
the runtime's deadline policy plans with, one calibration per engine.

Where each engine's calibration lives in ``set.json``: ONNX Runtime's (``provider`` cpu, cuda or
tensorrt) is ``calibration``, as it always was and as the native library reads it; OpenVINO's are in
``calibrations`` under their :attr:`EngineChoice.key` (``openvino:CPU:bf16``), one per device and
precision. :func:`calibration_for` finds the one an engine needs; :func:`resolve_engine` turns
``--provider auto`` into the fastest engine calibrated here.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

import numpy as np

from edgeprune.artifacts.engine_set import SET_FILE, EngineSet, calibration_matches
from edgeprune.backends.runners import AUTO, EngineChoice, check_precision, default_engine, engine_choice, make_runner
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import write_json_atomic
from edgeprune.core.machine import library_versions, machine_fingerprint
from edgeprune.core.progress import Progress
from edgeprune.engines.build import built_calibration, load_engines, set_runners, store_calibration
from edgeprune.measure.bench import benchmark

ENGINE_CALIBRATIONS = "calibrations"  # set.json: engine key -> calibration, for engines other than ONNX Runtime


def latency_stats(samples_ms: Sequence[float]) -> dict[str, Any]:
    """Percentiles, mean, spread and the raw samples (to the microsecond) of one member."""
    t = np.asarray(samples_ms, dtype=float)
    stats = {f"p{q}_ms": round(float(np.percentile(t, q)), 4) for q in (50, 90, 95, 99)}
    stats.update(mean_ms=round(float(t.mean()), 4), std_ms=round(float(t.std()), 4),
                 min_ms=round(float(t.min()), 4), max_ms=round(float(t.max()), 4),
                 samples_ms=[round(float(x), 3) for x in t])
    return stats


def engine_of(calibration: dict[str, Any]) -> EngineChoice:
    """The engine a stored calibration timed (older ones record only an ONNX Runtime ``provider``)."""
    provider = str(calibration.get("provider") or "cpu")
    if provider == "openvino":
        return EngineChoice(provider, str(calibration.get("precision") or "fp32"), str(calibration.get("device") or "CPU"))
    return EngineChoice(provider)


def stored_calibrations(engine_set: EngineSet) -> dict[str, dict[str, Any]]:
    """Every calibration the set holds, by engine key; ONNX Runtime's first."""
    found = {}
    if engine_set.calibration:
        found[engine_of(engine_set.calibration).key] = engine_set.calibration
    for key, calibration in (engine_set.manifest.get(ENGINE_CALIBRATIONS) or {}).items():
        if isinstance(calibration, dict) and calibration.get("members"):
            found[str(key)] = calibration
    return found


def calibrate_flags(engine: EngineChoice) -> str:
    """The ``edgeprune calibrate`` options that measure ``engine`` (none for ONNX Runtime's CPU provider)."""
    if not engine.is_openvino:
        return "" if engine.provider == "cpu" else f" --provider {engine.provider}"
    return (" --provider openvino" + (f" --precision {engine.precision}" if engine.precision != "fp32" else "")
            + (f" --device {engine.device}" if engine.device != "CPU" else ""))


def calibration_for(engine_set: EngineSet, engine: EngineChoice) -> tuple[dict[str, Any], str]:
    """The calibration ``engine`` plans with, and "" — or, when only other engines were calibrated, theirs
    (ONNX Runtime's first) and why it does not fit. Nothing calibrated is one EdgepruneError line."""
    stored = stored_calibrations(engine_set)
    if engine.key in stored:
        return stored[engine.key], ""
    command = f"`edgeprune calibrate {engine_set.path}{calibrate_flags(engine)}`"
    if not stored:
        raise EdgepruneError(f"{engine_set.path}: the engine set is not calibrated; run {command}")
    other = next(iter(stored.values()))
    return other, (f"calibrated for {engine_of(other).describe()}, not {engine.describe()}, so latency predictions "
                   f"may be off; run {command}")


def mean_p50(engine_set: EngineSet, calibration: dict[str, Any]) -> Optional[float]:
    """The calibrated p50 averaged over the set's members (None when a member is missing)."""
    members = calibration.get("members") or {}
    try:
        return float(np.mean([float(members[m.path]["p50_ms"]) for m in engine_set.members]))
    except (KeyError, TypeError, ValueError):
        return None


def resolve_engine(engine_set: Optional[EngineSet], provider: str = "cpu", precision: Optional[str] = None,
                   device: Optional[str] = None) -> tuple[EngineChoice, str]:
    """The engine to run and why. An explicit provider is checked (package, device, provider installed);
    ``auto`` takes the fastest engine (lowest mean calibrated p50) among the set's calibrations that were
    measured on this machine and can run here, narrowed by ``precision``/``device`` when given; with none,
    :func:`edgeprune.backends.runners.default_engine`'s rule."""
    if (provider or "").lower() != AUTO:
        return engine_choice(provider, precision, device).check(), ""
    check_precision(precision)
    timed: list[tuple[float, EngineChoice]] = []
    for calibration in (stored_calibrations(engine_set).values() if engine_set is not None else ()):
        engine = engine_of(calibration)
        runs_on = engine.device or ("CPU" if engine.provider == "cpu" else "GPU")  # ORT's providers by device
        if (precision and engine.precision != precision) or (device and runs_on != device):
            continue
        p50 = mean_p50(engine_set, calibration)
        if p50 is None or not calibration_matches(engine_set, calibration)[0]:
            continue
        try:
            timed.append((p50, engine.check()))
        except EdgepruneError:  # calibrated here once, but its package or device is gone
            continue
    if not timed:
        engine, why = default_engine(precision, device)
        return engine.check(), why
    timed.sort(key=lambda t: t[0])
    best_ms, best = timed[0]
    others = ", ".join(f"{e.describe()} {ms:.2f} ms" for ms, e in timed[1:])
    why = (f"fastest calibrated here: mean p50 {best_ms:.2f} ms vs {others}" if others else
           f"the only engine calibrated here (mean p50 {best_ms:.2f} ms); calibrate others to compare")
    return best, why


def calibrate_engine_set(
    engine_set: EngineSet,
    *,
    rounds: int = 50,
    warmup: int = 5,
    threads: int = 2,
    provider: str = "cpu",
    precision: Optional[str] = None,
    device: Optional[str] = None,
    progress: Optional[Progress] = None,
    engines: Optional[str | os.PathLike] = None,
) -> dict[str, Any]:
    """Time every member interleaved (bench's shuffled rounds, settle and pause) on ``provider`` (an ONNX
    Runtime provider or ``openvino`` at ``precision`` on ``device``) and store the result in ``set.json``
    (rewritten atomically; see the module docstring for where). Returns the calibration. With ``engines``
    (the folder ``edgeprune build SET`` wrote) the built engines are timed instead, and the calibration
    goes to that folder's ``engines.json``, where ``Runtime(SET, engines=...)`` reads it.

    Sessions run without intra-op spinning, as :class:`edgeprune.runtime.Runtime` runs them: spinning
    sessions time 10-15% faster in isolation, and a scheduler fed those numbers misses its deadlines.
    """
    artifacts = [m.artifact for m in engine_set.members]
    batch = artifacts[0].input_shape()[0]
    if engines is not None:
        if provider != "cpu" or precision is not None or device is not None:
            raise EdgepruneError("--engines times the built engines (their backend and precision were fixed by "
                                 "`edgeprune build`); drop --provider, --precision and --device")
        built_calibration(engines)  # a clear error when it is not a set build
        built = load_engines(engines)
        runners = set_runners(built, engine_set.members, threads, spinning=False)
        engine = EngineChoice("cpu")
    else:
        if (provider or "").lower() == AUTO:
            raise EdgepruneError("calibrate times one engine: --provider cpu, cuda, tensorrt or openvino "
                                 "(calibrate each, then run with --provider auto)")
        engine = engine_choice(provider, precision, device).check()
        runners = [make_runner(a.onnx_path, engine, threads, spinning=False) for a in artifacts]
    result = benchmark(artifacts, batch=batch, rounds=rounds, warmup=warmup, threads=threads,
                       progress=progress, spinning=False, runners=runners)
    calibration = {
        "machine": machine_fingerprint(), "versions": library_versions(), **engine.calibration_fields(),
        "runs_as": result.engines[0], "threads": threads, "spinning": False,
        "batch": batch, "rounds": rounds, "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "members": {m.path: latency_stats(row.samples_ms) for m, row in zip(engine_set.members, result.rows)},
    }
    if engines is not None:
        first = built[0].manifest
        calibration.pop("precision")
        calibration.update(provider=first["backend"], engines={"backend": first["backend"], "precision": first["precision"],
                                                               "device": first.get("device")})
        store_calibration(engines, calibration)
        return calibration
    if engine.is_openvino:
        from edgeprune.backends.openvino import openvino_version

        calibration["versions"]["openvino"] = openvino_version()
        engine_set.manifest.setdefault(ENGINE_CALIBRATIONS, {})[engine.key] = calibration
    else:
        engine_set.manifest["calibration"] = calibration
    write_json_atomic(engine_set.path / SET_FILE, engine_set.manifest)
    return calibration

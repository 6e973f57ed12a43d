"""Calibrate an engine set: time every member interleaved on this machine and store the latencies
the runtime's deadline policy plans with."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

import numpy as np

from edgeprune.artifacts.engine_set import SET_FILE, EngineSet
from edgeprune.core.files import write_json_atomic
from edgeprune.core.machine import library_versions, machine_fingerprint
from edgeprune.core.progress import Progress
from edgeprune.engines.build import built_calibration, load_engines, set_runners, store_calibration
from edgeprune.measure.bench import benchmark


def latency_stats(samples_ms: Sequence[float]) -> dict[str, Any]:
    """Percentiles, mean, spread and the raw samples (to the microsecond) of one member."""
    t = np.asarray(samples_ms, dtype=float)
    stats = {f"p{q}_ms": round(float(np.percentile(t, q)), 4) for q in (50, 90, 95, 99)}
    stats.update(mean_ms=round(float(t.mean()), 4), std_ms=round(float(t.std()), 4),
                 min_ms=round(float(t.min()), 4), max_ms=round(float(t.max()), 4),
                 samples_ms=[round(float(x), 3) for x in t])
    return stats


def calibrate_engine_set(
    engine_set: EngineSet,
    *,
    rounds: int = 50,
    warmup: int = 5,
    threads: int = 2,
    provider: str = "cpu",
    progress: Optional[Progress] = None,
    engines: Optional[str | os.PathLike] = None,
) -> dict[str, Any]:
    """Time every member interleaved (bench's shuffled rounds, settle and pause) and store the result
    in ``set.json`` (rewritten atomically). Returns the calibration. With ``engines`` (the folder
    ``edgeprune build SET`` wrote) the built engines are timed instead, and the calibration goes to
    that folder's ``engines.json``, where ``Runtime(SET, engines=...)`` reads it.

    Sessions run without intra-op spinning, as :class:`edgeprune.runtime.Runtime` runs them: spinning
    sessions time 10-15% faster in isolation, and a scheduler fed those numbers misses its deadlines.
    """
    artifacts = [m.artifact for m in engine_set.members]
    batch = artifacts[0].input_shape()[0]
    runners = None
    if engines is not None:
        built_calibration(engines)  # a clear error when it is not a set build
        built = load_engines(engines)
        runners = set_runners(built, engine_set.members, threads, spinning=False)
    result = benchmark(artifacts, batch=batch, rounds=rounds, warmup=warmup, threads=threads,
                       providers=[provider], progress=progress, spinning=False, runners=runners)
    calibration = {
        "machine": machine_fingerprint(), "versions": library_versions(), "provider": provider, "threads": threads,
        "spinning": False,
        "batch": batch, "rounds": rounds, "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "members": {m.path: latency_stats(row.samples_ms) for m, row in zip(engine_set.members, result.rows)},
    }
    if engines is not None:
        first = built[0].manifest
        calibration.update(provider=first["backend"], engines={"backend": first["backend"], "precision": first["precision"],
                                                               "device": first.get("device")})
        store_calibration(engines, calibration)
        return calibration
    engine_set.manifest["calibration"] = calibration
    write_json_atomic(engine_set.path / SET_FILE, engine_set.manifest)
    return calibration

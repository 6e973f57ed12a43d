"""Engine sets: one artifact per token budget, in one folder, so a runtime can switch budgets on the fly.

``SET/set.json`` lists the members (``b1.00``, ``b0.75``, ...; the budget is the MACs ratio, 1.0 being
the unreduced model) with each member's ONNX sha256, and optionally a latency calibration measured on
one machine, so a scheduler can pick the largest member that meets a deadline without timing anything.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from edgeprune.artifact import Artifact, atomic_directory, load_artifact, read_folder_json, write_json_atomic
from edgeprune.errors import EdgepruneError

SET_FILE = "set.json"
SET_FORMAT = 1
SET_KIND = "edgeprune-engine-set"


def parse_budgets(text: str) -> list[float]:
    """``"1.0,0.5,0.75"`` -> ``[1.0, 0.75, 0.5]``: each in (0, 1], de-duplicated, largest first."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise EdgepruneError(f"--budgets expects comma-separated numbers in (0, 1], got '{text}'") from None
    if not values:
        raise EdgepruneError("--budgets needs at least one budget")
    for v in values:
        if not 0 < v <= 1:
            raise EdgepruneError(f"--budgets: every budget must be in (0, 1], got {v:g}")
    return sorted(set(values), reverse=True)


def member_name(budget: float) -> str:
    """Folder name of a budget: ``b0.75``; budgets finer than 0.01 keep their digits (``b0.355``)."""
    return f"b{budget:.2f}" if abs(budget - round(budget, 2)) < 1e-9 else f"b{budget:g}"


@dataclass
class Member:
    budget: float
    path: str  # relative to the set folder
    macs_ratio: float
    final_tokens: int
    onnx_sha256: str
    root: Path = field(repr=False)
    _artifact: Optional[Artifact] = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path

    @property
    def artifact(self) -> Artifact:
        """Loaded on first use (without re-hashing: :func:`load_engine_set` verifies when asked)."""
        if self._artifact is None:
            self._artifact = load_artifact(self.root / self.path, verify=False)
        return self._artifact


@dataclass
class EngineSet:
    path: Path
    manifest: dict[str, Any]
    members: list[Member]

    @property
    def calibration(self) -> Optional[dict[str, Any]]:
        return self.manifest.get("calibration")

    def member(self, budget_or_name: float | str) -> Member:
        for m in self.members:
            if budget_or_name in (m.path, m.budget):
                return m
        raise EdgepruneError(f"{self.path}: no member {budget_or_name}")


def is_engine_set(path: str | os.PathLike) -> bool:
    return (Path(path) / SET_FILE).is_file()


def load_engine_set(path: str | os.PathLike, verify: bool = True) -> EngineSet:
    """Read ``set.json`` and check its members; any defect is one EdgepruneError line."""
    root = Path(path)
    spath = root / SET_FILE
    manifest = read_folder_json(root, SET_FILE, "engine set")
    if not isinstance(manifest, dict) or manifest.get("kind") != SET_KIND:
        raise EdgepruneError(f"{spath}: not an edgeprune engine set (kind is not '{SET_KIND}')")
    if manifest.get("format") != SET_FORMAT:
        raise EdgepruneError(f"{spath}: unsupported engine set format {manifest.get('format')!r}")
    members = []
    try:
        for m in manifest["members"]:
            members.append(Member(float(m["budget"]), str(m["path"]), float(m["macs_ratio"]),
                                  int(m["final_tokens"]), str(m["onnx_sha256"]), root))
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgepruneError(f"{spath}: malformed members list ({type(exc).__name__}: {exc})") from None
    if not members:
        raise EdgepruneError(f"{spath}: the set has no members")
    for m in members:
        if Path(m.path).name != m.path or not (root / m.path).is_dir():
            raise EdgepruneError(f"{root}: member {m.path} is missing")
        if verify:
            artifact = load_artifact(root / m.path, verify=True)
            if artifact.manifest["onnx"]["sha256"] != m.onnx_sha256:
                raise EdgepruneError(f"{root / m.path}: ONNX sha256 differs from {SET_FILE} (member replaced or changed)")
            m._artifact = artifact
    return EngineSet(root, manifest, members)


def export_engine_set(
    model: Any,
    method: str,
    budgets: Sequence[float],
    out_dir: str | os.PathLike,
    *,
    batch: int = 1,
    dynamic_batch: bool = False,
    overwrite: bool = False,
    progress: Optional[Callable[[str], None]] = None,
    model_info: Optional[dict[str, Any]] = None,
    opset: Optional[int] = None,
    tolerance: Optional[float] = None,
    **plan_kwargs: Any,
) -> EngineSet:
    """Export one parity-checked artifact per budget into ``out_dir`` with ``set.json``.

    Every plan is built before the first (slow) export, so an unreachable budget fails in seconds;
    the set appears at ``out_dir`` only when every member exported, and ``set.json`` is written last.
    """
    from edgeprune.exporters.onnx_export import export
    from edgeprune.plan import build_plan

    say = progress or (lambda _msg: None)
    budgets = sorted({float(b) for b in budgets}, reverse=True)
    if not budgets or any(not 0 < b <= 1 for b in budgets):
        raise EdgepruneError(f"budgets must be in (0, 1], got {', '.join(f'{b:g}' for b in budgets) or 'none'}")
    names = [member_name(b) for b in budgets]
    if len(set(names)) != len(names):
        raise EdgepruneError(f"budgets {budgets} give clashing folder names")
    exact = {"prefix_only_last": plan_kwargs["prefix_only_last"]} if "prefix_only_last" in plan_kwargs else {}
    plans = [build_plan(model, "none", **exact) if b == 1.0 else build_plan(model, method, flops=b, **plan_kwargs) for b in budgets]
    extra = {k: v for k, v in dict(opset=opset, tolerance=tolerance).items() if v is not None}
    members = []
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for i, (budget, name, plan) in enumerate(zip(budgets, names, plans)):
            prefix = f"[{i + 1}/{len(budgets)}] {name}"
            artifact = export(model, plan, tmp / name, batch=batch, dynamic_batch=dynamic_batch, model_info=model_info,
                              progress=lambda msg, p=prefix: say(f"{p}: {msg}"), **extra)
            members.append({
                "budget": budget, "path": name, "macs_ratio": artifact.manifest["flops"]["macs_ratio"],
                "final_tokens": plan.final_tokens, "onnx_sha256": artifact.manifest["onnx"]["sha256"],
            })
            if i == 0:
                first_model = artifact.manifest["model"]
        manifest = {"format": SET_FORMAT, "kind": SET_KIND, "model": first_model, "method": method,
                    "members": members, "calibration": None}
        write_json_atomic(tmp / SET_FILE, manifest)
    return load_engine_set(out_dir, verify=False)


def machine_fingerprint() -> dict[str, Any]:
    """What a latency calibration depends on: another CPU, core count, OS or ORT makes it stale."""
    import onnxruntime

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "platform": platform.platform(), "onnxruntime": onnxruntime.__version__}


def calibration_matches(engine_set: EngineSet, calibration: Optional[dict[str, Any]] = None) -> tuple[bool, str]:
    """Whether the stored calibration (or ``calibration``, e.g. of built engines) was measured here:
    (True, "") or (False, why not)."""
    cal = calibration if calibration is not None else engine_set.calibration
    if not cal:
        return False, "the set is not calibrated"
    stored, here = cal.get("machine") or {}, machine_fingerprint()
    for key in ("cpu", "cores", "platform", "onnxruntime"):
        if stored.get(key) != here[key]:
            return False, f"{key} differs (calibrated on {stored.get(key)!r}, this machine has {here[key]!r})"
    return True, ""


def latency_stats(samples_ms: Sequence[float]) -> dict[str, Any]:
    """Percentiles, mean, spread and the raw samples (to the microsecond) of one member."""
    import numpy as np

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
    progress: Optional[Callable[[int, int], None]] = None,
    engines: Optional[str | os.PathLike] = None,
) -> dict[str, Any]:
    """Time every member interleaved (bench's shuffled rounds, settle and pause) and store the result
    in ``set.json`` (rewritten atomically). Returns the calibration. With ``engines`` (the folder
    ``edgeprune build SET`` wrote) the built engines are timed instead, and the calibration goes to
    that folder's ``engines.json``, where ``Runtime(SET, engines=...)`` reads it.

    Sessions run without intra-op spinning, as :class:`edgeprune.runtime.Runtime` runs them: spinning
    sessions time 10-15% faster in isolation, and a scheduler fed those numbers misses its deadlines.
    """
    from datetime import datetime, timezone

    from edgeprune.bench import benchmark
    from edgeprune.exporters.onnx_export import library_versions

    artifacts = [m.artifact for m in engine_set.members]
    batch = artifacts[0].input_shape()[0]
    runners = None
    if engines is not None:
        from edgeprune.engines.build import built_calibration, load_engines, set_runners

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
        from edgeprune.engines.build import store_calibration

        first = built[0].manifest
        calibration.update(provider=first["backend"], engines={"backend": first["backend"], "precision": first["precision"],
                                                               "device": first.get("device")})
        store_calibration(engines, calibration)
        return calibration
    engine_set.manifest["calibration"] = calibration
    write_json_atomic(engine_set.path / SET_FILE, engine_set.manifest)
    return calibration

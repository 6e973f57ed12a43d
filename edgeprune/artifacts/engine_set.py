"""Engine sets: one artifact per token budget, in one folder, so a runtime can switch budgets on the fly.

``SET/set.json`` lists the members (``b1.00``, ``b0.75``, ...; the budget is the MACs ratio, 1.0 being
the unreduced model) with each member's ONNX sha256, and optionally a latency calibration measured on
one machine, so a scheduler can pick the largest member that meets a deadline without timing anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edgeprune.artifacts.artifact import Artifact, load_artifact
from edgeprune.artifacts.schema import check_manifest
from edgeprune.core.files import read_folder_json
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.machine import machine_fingerprint

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
    precision: str = "fp32"  # "int8": a quantized member (edgeprune quantize); a set may mix them
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
    check_manifest("engine-set", manifest, spath)
    members = []
    try:
        for m in manifest["members"]:
            members.append(Member(float(m["budget"]), str(m["path"]), float(m["macs_ratio"]),
                                  int(m["final_tokens"]), str(m["onnx_sha256"]), root, str(m.get("precision", "fp32"))))
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
            if artifact.precision != m.precision:
                raise EdgepruneError(f"{root / m.path}: its manifest says precision {artifact.precision}, {SET_FILE} says {m.precision}")
            m._artifact = artifact
    return EngineSet(root, manifest, members)


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



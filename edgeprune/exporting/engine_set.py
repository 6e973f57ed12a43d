"""Export one parity-checked artifact per token budget: an engine set (``set.json`` + members)."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from edgeprune.artifacts.engine_set import SET_FILE, SET_FORMAT, SET_KIND, EngineSet, load_engine_set, member_name
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import atomic_directory, write_json_atomic
from edgeprune.core.progress import Progress, prefixed
from edgeprune.exporting.onnx_export import export
from edgeprune.families import spec_of
from edgeprune.plan.token_plan import build_plan


def export_engine_set(
    model: Any,
    method: str,
    budgets: Sequence[float],
    out_dir: str | os.PathLike,
    *,
    batch: int = 1,
    dynamic_batch: bool = False,
    overwrite: bool = False,
    progress: Optional[Progress] = None,
    model_info: Optional[dict[str, Any]] = None,
    opset: Optional[int] = None,
    tolerance: Optional[float] = None,
    **plan_kwargs: Any,
) -> EngineSet:
    """Export one parity-checked artifact per budget into ``out_dir`` with ``set.json``.

    Every plan is built before the first (slow) export, so an unreachable budget fails in seconds;
    the set appears at ``out_dir`` only when every member exported, and ``set.json`` is written last.
    """
    budgets = sorted({float(b) for b in budgets}, reverse=True)
    if not budgets or any(not 0 < b <= 1 for b in budgets):
        raise EdgepruneError(f"budgets must be in (0, 1], got {', '.join(f'{b:g}' for b in budgets) or 'none'}")
    names = [member_name(b) for b in budgets]
    if len(set(names)) != len(names):
        raise EdgepruneError(f"budgets {budgets} give clashing folder names")
    exact = {"prefix_only_last": plan_kwargs["prefix_only_last"]} if "prefix_only_last" in plan_kwargs else {}
    spec = spec_of(model)
    plans = [build_plan(spec, "none", **exact) if b == 1.0 else build_plan(spec, method, flops=b, **plan_kwargs) for b in budgets]
    extra = {k: v for k, v in dict(opset=opset, tolerance=tolerance).items() if v is not None}
    members = []
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for i, (budget, name, plan) in enumerate(zip(budgets, names, plans)):
            prefix = f"[{i + 1}/{len(budgets)}] {name}"
            artifact = export(model, plan, tmp / name, batch=batch, dynamic_batch=dynamic_batch, model_info=model_info,
                              progress=prefixed(progress, prefix), **extra)
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

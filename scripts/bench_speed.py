#!/usr/bin/env python
"""Speed acceptance: ViT-B/16 @224, ONNX Runtime CPU, batch 1, reduced plans vs the unreduced export,
all timed interleaved in one run. Prints the table and the ratios the issue asks about.

    python scripts/bench_speed.py --rounds 40            # exports into out/speed (reused when present)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


import edgeprune
from edgeprune.artifacts.artifact import load_artifact
from edgeprune.measure.bench import benchmark
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import messages
from edgeprune.exporting.onnx_export import export
from edgeprune.families.loading import load_model

# name -> (method, build_plan kwargs); every reduced plan sits at <= 0.50 of the baseline MACs.
VARIANTS = {
    "none": ("none", {}),
    "tome_const_r": ("tome", dict(flops=0.50, schedule="constant")),  # ToMe's own schedule
    "tome_p1_4_7": ("tome", dict(flops=0.50)),
    "tome_p0_2": ("tome", dict(flops=0.45, points=[0, 2])),
    "tome_p1": ("tome", dict(flops=0.45, points=[1])),
    "evit_p0": ("evit", dict(flops=0.45, points=[0])),
    "evit_p1_4_7": ("evit", dict(flops=0.50)),
    "gsp_p0": ("gsp", dict(flops=0.45, points=[0])),
    "gsp_p1_4_7": ("gsp", dict(flops=0.50)),
}


def _reusable(path: Path, plan: "edgeprune.TokenPlan", model_name: str):
    """The artifact already at ``path`` when it was exported from this model with exactly this plan
    (an edited VARIANTS entry or another --model must not be timed under the old name); else None."""
    try:
        artifact = load_artifact(path)
    except EdgepruneError:
        return None
    info = artifact.manifest.get("model") or {}
    same_model = str(info.get("name", info.get("path"))) == model_name
    if same_model and artifact.manifest.get("plan") == plan.to_dict():
        print(f"reusing {path} (same model and plan)", flush=True)
        return artifact
    print(f"re-exporting {path}: its model or plan differs from this run's", flush=True)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--out", type=Path, default=Path("out/speed"))
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency", type=float, default=None, help="also export a latency-planned tome plan")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    model, info = load_model(args.model)
    variants = dict(VARIANTS)
    artifacts = []
    for name, (method, kwargs) in variants.items():
        path = args.out / name
        plan = edgeprune.build_plan(model, method, **kwargs)
        reused = _reusable(path, plan, args.model)
        if reused is not None:
            artifacts.append(reused)
            continue
        start = time.perf_counter()
        artifacts.append(export(model, plan, path, model_info=info, overwrite=True))
        print(f"exported {name}: keep={list(plan.keep)} MACs={plan.macs_ratio:.3f} in {time.perf_counter() - start:.1f}s", flush=True)
    if args.latency:
        from edgeprune.exporting.block_latency import calibrate
        from edgeprune.families import spec_of
        from edgeprune.plan.latency import search_plan

        lm = calibrate(model, "tome", threads=args.threads, progress=messages(lambda m: print(m, flush=True)))
        plan = search_plan(spec_of(model), "tome", args.latency, lm)
        name = f"tome_latency_{args.latency}"
        artifacts.append(export(model, plan, args.out / name, model_info=info, overwrite=True))
        print(f"exported {name}: keep={list(plan.keep)} MACs={plan.macs_ratio:.3f}", flush=True)

    result = benchmark(artifacts, rounds=args.rounds, threads=args.threads, progress=None)
    print(f"\n{args.model}, ONNX Runtime CPU, {args.threads} threads, batch 1, {args.rounds} interleaved rounds")
    print(f"{'variant':22s} {'MACs':>6s} {'tokens':>6s} {'p50 ms':>8s} {'speedup':>8s} {'FLOPs-bound':>11s} {'realized/bound':>14s}")
    for r in result.rows:
        print(f"{r.name:22s} {r.macs_ratio:6.3f} {r.final_tokens:6d} {r.p50_ms:8.1f} {r.speedup:7.2f}x {r.predicted_speedup:10.2f}x {r.realized_vs_predicted:14.2f}")
    reduced = [r for r in result.rows if r.method != "none" and r.macs_ratio <= 0.50]
    best = max(reduced, key=lambda r: r.speedup)
    slowest = min(r.speedup for r in result.rows if r.method != "none")
    print(f"\nbest at <= 0.50 MACs: {best.name} {best.speedup:.2f}x (median of per-round ratios)")
    print(f"slowest reduced plan: {slowest:.2f}x ({'none slower than baseline' if slowest > 1 else 'SLOWER THAN BASELINE'})")
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""fp16 acceptance: each model x reduction method x batch, fp16 graph vs fp32 graph in ONNX Runtime.

For every combination the fp32 graph is exported (static batch; random weights, seed 0, which is
enough: the check is about the arithmetic, not the accuracy), converted with
``edgeprune.backends.precision.convert_precision(..., "fp16")`` and both run on ``--inputs`` random
standard-normal images. A row passes when the worst relative error (max|a-b| / max|b|) over every
input is <= 1e-2 and >= 99% of the token choices (kept / merged groups of every TopK, and each
ArgMax destination) are identical.
The last columns say how much of the MatMul work still runs in fp16 (by FLOPs and by nodes).

    python scripts/fp16_check.py [--models vit_small_patch16_224,vit_base_patch16_224]
        [--methods none,tome,evit,gsp] [--batches 1,2] [--inputs 8] [--workdir /tmp/fp16work]

Exports are cached under ``--workdir/<model>/<method>-b<batch>`` and reused on the next run.
Exit status 1 when any row fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from edgeprune.backends.precision import compare_precision, convert_precision, fp16_matmul_share

MAX_ERROR, MIN_AGREEMENT = 1e-2, 0.99
BUDGETS = {"tome": {"flops": 0.6}, "gsp": {"flops": 0.6}, "evit": {"keep": 0.5}, "none": {}}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def artifact(model_name: str, method: str, batch: int, workdir: Path) -> onnx.ModelProto:
    out = workdir / model_name / f"{method}-b{batch}"
    path = out / "model.onnx"
    if not path.exists():
        import timm
        import torch

        from edgeprune.export.onnx_export import export
        from edgeprune import build_plan

        torch.manual_seed(0)
        net = timm.create_model(model_name, pretrained=False).eval()
        plan = build_plan(net, method, **BUDGETS.get(method, {}))
        say(f"exporting {model_name} {method} batch {batch} -> {out}")
        started = time.perf_counter()
        export(net, plan, out, batch=batch, overwrite=True)
        say(f"  exported in {time.perf_counter() - started:.0f} s")
    return onnx.load(str(path))


def feeds(model: onnx.ModelProto, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    return [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="vit_small_patch16_224,vit_base_patch16_224")
    ap.add_argument("--methods", default="none,tome,evit,gsp", help="cluster/pass are for segmenters only")
    ap.add_argument("--batches", default="1,2")
    ap.add_argument("--inputs", type=int, default=8, help="random inputs per row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/fp16work", help="export cache")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    models = [m for m in args.models.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]
    batches = [int(b) for b in args.batches.split(",") if b]

    rows = []
    for model_name in models:
        for method in methods:
            for batch in batches:
                fp32 = artifact(model_name, method, batch, workdir)
                if args.export_only:
                    continue
                low = convert_precision(fp32, "fp16")
                share = fp16_matmul_share(fp32, low)
                started = time.perf_counter()
                r = compare_precision(fp32, low, feeds(fp32, args.inputs, args.seed + batch), threads=args.threads or None)
                ok = r["max_relative_error"] <= MAX_ERROR and r["choice_agreement"] >= MIN_AGREEMENT
                rows.append((model_name, method, batch, r["max_relative_error"], r["choice_agreement"],
                             share["flops"], share["nodes"], "PASS" if ok else "FAIL"))
                say(f"{model_name} {method} b{batch}: rel err {r['max_relative_error']:.2e}, "
                    f"choices {r['choice_agreement']:.2%}, fp16 matmul FLOPs {share['flops']:.1%} "
                    f"({time.perf_counter() - started:.0f} s)")
    if args.export_only:
        return 0
    head = ("model", "method", "batch", "rel_error", "choices", "fp16_mm_flops", "fp16_mm_nodes", "result")
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for m, meth, b, err, agree, flops, nodes, res in rows:
        print(f"| {m} | {meth} | {b} | {err:.2e} | {agree:.2%} | {flops:.1%} | {nodes:.1%} | {res} |")
    failed = [r for r in rows if r[-1] == "FAIL"]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} rows pass (rel error <= {MAX_ERROR:g}, choices >= {MIN_AGREEMENT:.0%})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Where an OpenVINO engine spends its time: per-node counters of artifacts, grouped by kind.

    python scripts/profile_openvino.py out/vitb_none out/vitb_tome --precision bf16 --runs 20

Compiles each artifact with ``PERF_COUNT`` on (fp32 rule nodes marked as for any bf16/fp16 compile),
runs it ``--runs`` times, and sums ``request.profiling_info`` per node over the runs. Prints, per
artifact, the median end-to-end ms, the share of the executed time in matmul kernels
(FullyConnected, MatMul, ScaledDotProductAttention) against everything else, the top node kinds by
time, and how many ScaledDotProductAttention and Subgraph kernels the CPU plugin made (its
snippets Subgraphs hold fused MHA and eltwise chains; their time counts as "other"). A reduced
graph whose non-matmul share is much larger than the unreduced graph's pays for its reduction in
glue ops: that is what to cut.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

MATMUL_KINDS = ("FullyConnected", "MatMul", "ScaledDotProductAttention", "ScaledAttn", "SDPA", "Gemm")


def is_matmul(node_type: str, exec_type: str) -> bool:
    return any(k.lower() in node_type.lower() or k.lower() in exec_type.lower() for k in MATMUL_KINDS)


def profile(path: Path, precision: str, runs: int, threads: int) -> dict:
    from edgeprune.artifacts.artifact import load_artifact
    from edgeprune.backends.feeds import random_feed
    from edgeprune.backends.openvino import compile_config, core, effective_precision, read_for_precision

    artifact = load_artifact(path)
    config = dict(compile_config(precision, threads), PERF_COUNT=True)
    compiled = core().compile_model(read_for_precision(artifact.onnx_path, precision), "CPU", config)
    request = compiled.create_infer_request()
    feed = random_feed(artifact.manifest["inputs"])
    for _ in range(3):
        request.infer(feed)
    by_kind: dict[str, float] = collections.defaultdict(float)
    matmul_us = other_us = 0.0
    wall = []
    for _ in range(runs):
        started = time.perf_counter()
        request.infer(feed)
        wall.append((time.perf_counter() - started) * 1e3)
        for info in request.profiling_info:
            if str(info.status).endswith("EXECUTED"):
                us = info.real_time.total_seconds() * 1e6
                by_kind[f"{info.node_type}/{info.exec_type}"] += us
                if is_matmul(info.node_type, info.exec_type):
                    matmul_us += us
                else:
                    other_us += us
    runtime_types = collections.Counter(op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops())
    total = matmul_us + other_us or 1.0
    return {"name": path.name, "ms": statistics.median(wall), "matmul_share": matmul_us / total, "precision": effective_precision(compiled),
            "top": sorted(((k, v / runs / 1e3) for k, v in by_kind.items()), key=lambda kv: -kv[1])[:8],
            "sdpa": sum(n for t, n in runtime_types.items() if "ScaledDotProductAttention" in t or "SDPA" in t),
            "subgraphs": runtime_types.get("Subgraph", 0),
            "nodes": sum(runtime_types.values()), "macs": artifact.manifest.get("plan", {}).get("macs_ratio")}


def main() -> int:
    from edgeprune.core.errors import EdgepruneError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", type=Path, nargs="+")
    ap.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    try:
        rows = [profile(p, args.precision, args.runs, args.threads) for p in args.artifacts]
    except EdgepruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in rows:
        print(f"{r['name']}: {r['ms']:.2f} ms median ({args.precision} asked, runs as {r['precision']}), MACs ratio {r['macs']}, "
              f"{r['nodes']} runtime nodes, SDPA kernels {r['sdpa']}, snippets Subgraphs {r['subgraphs']}; "
              f"matmul share {100 * r['matmul_share']:.1f} %")
        for kind, ms in r["top"]:
            print(f"    {kind:48s} {ms:8.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

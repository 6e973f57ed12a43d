#!/usr/bin/env python
"""Batch-1 latency of artifacts (or every member of an engine set) on ONNX Runtime fp32 against
OpenVINO fp32 and bf16, all interleaved in one run (issue 24).

    python scripts/bench_openvino.py /tmp/ov_set                       # an engine set: every budget
    python scripts/bench_openvino.py out/vitb_none out/vitb_tome --rounds 30
    python scripts/bench_openvino.py ART --variants ort:fp32,openvino:bf16

Every (artifact, variant) is one session of :func:`edgeprune.core.timing.interleaved_times`: sessions
take turns in shuffled order, each visit idles ``--pause`` s (ONNX Runtime's threads stop spinning),
runs untimed settle calls for ``--settle`` s, then times one run. Prints each session's median, the
ratio of each OpenVINO variant to ONNX Runtime fp32 on the same graph, and for several artifacts
each variant's speedup of every artifact over the first (the unreduced one, largest budget first).
OpenVINO compiles the ONNX file here (no engine cache); the CPU's precision is reported as it runs:
a CPU without bf16 units runs ``bf16`` in f32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from edgeprune.core.errors import EdgepruneError


def artifacts_of(paths: list[Path]) -> list:
    from edgeprune.artifacts.artifact import load_artifact
    from edgeprune.artifacts.engine_set import is_engine_set, load_engine_set

    found = []
    for path in paths:
        if is_engine_set(path):
            found += [m.artifact for m in sorted(load_engine_set(path).members, key=lambda m: -m.budget)]
        else:
            found.append(load_artifact(path))
    return found


def runner_for(artifact, variant: str, threads: int):
    from edgeprune.backends.openvino import OpenVinoRunner
    from edgeprune.backends.ort import OrtRunner

    backend, _, precision = variant.partition(":")
    if backend == "ort" and precision in ("", "fp32"):
        return OrtRunner(artifact.onnx_path, ["cpu"], threads, spinning=True)
    if backend == "openvino":
        return OpenVinoRunner(artifact.onnx_path, precision=precision or "fp32", threads=threads)
    raise EdgepruneError(f"--variants: {variant!r} is not ort:fp32 or openvino:fp32|bf16|fp16")


def main() -> int:
    from edgeprune.backends.feeds import random_feed
    from edgeprune.backends.openvino import device_name, effective_precision
    from edgeprune.core.timing import interleaved_times

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sources", type=Path, nargs="+", help="artifact folders or engine sets")
    ap.add_argument("--variants", default="ort:fp32,openvino:fp32,openvino:bf16")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pause", type=float, default=0.05, help="idle seconds before each visit")
    ap.add_argument("--settle", type=float, default=0.05, help="untimed running seconds before each timed run")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        artifacts = artifacts_of(args.sources)
        runners = [[runner_for(a, v, args.threads).activate() for v in variants] for a in artifacts]
        feeds = [random_feed(a.manifest["inputs"]) for a in artifacts]
        sessions = [[lambda r=r, f=f: r.run_raw(f)] for row, f in zip(runners, feeds) for r in row]
        samples = interleaved_times(sessions, runs=args.rounds, warmup=args.warmup, settle_calls=2,
                                    settle_s=args.settle, pause_s=args.pause, seed=1)
    except EdgepruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    medians = [[statistics.median(samples[i * len(variants) + j][0]) for j in range(len(variants))]
               for i in range(len(artifacts))]
    ran = {v: effective_precision(runners[0][j].compiled) for j, v in enumerate(variants) if hasattr(runners[0][j], "compiled")}
    print(f"{len(artifacts)} artifact(s) x {len(variants)} variants, batch 1, {args.threads} threads, {args.rounds} "
          f"interleaved rounds (pause {args.pause} s, settle {args.settle} s); CPU: {device_name('CPU')}")
    print("OpenVINO runs: " + ", ".join(f"{v} as {p}" for v, p in ran.items()))
    head = "".join(f"{v:>16s}" for v in variants)
    print(f"{'artifact':28s}{'macs':>6s}{head}   ratio to {variants[0]}")
    base_macs = artifacts[0].manifest["plan"].get("macs")
    for artifact, row in zip(artifacts, medians):
        macs = artifact.manifest["plan"].get("macs")  # MACs relative to the first artifact's
        ratios = "  ".join(f"{v} {row[0] / m:.2f}x" for v, m in zip(variants[1:], row[1:]))
        macs_text = f"{macs / base_macs:.2f}" if isinstance(macs, (int, float)) and base_macs else "?"
        print(f"{artifact.path.name[:28]:28s}{macs_text:>6s}" + "".join(f"{m:13.2f} ms" for m in row) + f"   {ratios}")
    if len(artifacts) > 1:
        print(f"speedup over {artifacts[0].path.name} (same variant):")
        for artifact, row in zip(artifacts[1:], medians[1:]):
            print(f"  {artifact.path.name[:26]:26s}" + "  ".join(f"{v} {b / m:.2f}x" for v, b, m in zip(variants, medians[0], row)))
    for row in runners:
        for r in row:
            r.deactivate()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Latency of one artifact's engines across backends and precisions, interleaved round by round.

    python scripts/bench_engines.py out/speed/tome_p1_4_7 --backends ort-cpu,ort-cpu:fp16 --rounds 50
    python scripts/bench_engines.py ART --backends ort-cpu,trt,trt:fp16       # on a machine with TensorRT

Engines come from the engine cache (built on first use). Prints each backend's median and the median
of per-round ratios against the first backend.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from edgeprune.artifacts.artifact import load_artifact
from edgeprune.measure.bench import benchmark
from edgeprune.engines.cache import EngineCache
from edgeprune.engines.compare import open_runner, parse_backends
from edgeprune.core.errors import EdgepruneError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--backends", default="ort-cpu,ort-cpu:fp16")
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    try:
        artifact = load_artifact(args.artifact)
        specs = parse_backends(args.backends)
        with tempfile.TemporaryDirectory() as work:
            runners = [open_runner(artifact, s, Path(work), cache=EngineCache(), threads=args.threads) for s in specs]
            # bench's interleaved rounds (shuffled order, pause, settle runs), one "artifact" per backend
            result = benchmark([artifact] * len(specs), rounds=args.rounds, warmup=args.warmup, threads=args.threads,
                               runners=runners)
    except EdgepruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{artifact.path}: {args.rounds} interleaved rounds, {args.threads} threads")
    for spec, row in zip(specs, result.rows):
        print(f"  {spec.label:16s} median {row.p50_ms:8.2f} ms   speed vs {specs[0].label}: {row.speedup:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

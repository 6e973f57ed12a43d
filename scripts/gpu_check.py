#!/usr/bin/env python
"""GPU check: PyTorch latency of reduced vs unreduced ViT-B/L at batch 1 and 32, each model replayed
as a CUDA graph (launch overhead out of the way, as an engine would run it), all variants interleaved
round by round in one process. Prints per-variant medians and the median of per-round ratios.

    python scripts/gpu_check.py                                   # ViT-B/16 + ViT-L/16, fp16, tome/evit/gsp at 0.5 MACs
    python scripts/gpu_check.py --models vit_tiny_patch16_224 --device cpu --rounds 3   # dry run without a GPU

Random weights (timing does not depend on them); every reduced model comes from the same plan
builder and reducers as the exports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import edgeprune


def make_variants(name: str, methods: list[str], flops: float, device: str, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    import timm

    net = timm.create_model(name, pretrained=False).eval()
    variants = {"none": net}
    for method in methods:
        variants[method] = edgeprune.reduce_model(net, edgeprune.build_plan(net, method, flops=flops))
    return {k: v.to(device=device, dtype=dtype).eval() for k, v in variants.items()}


class Timed:
    """One variant at one batch: a CUDA graph replay on GPU, a plain call on CPU; returns ms."""

    def __init__(self, module: torch.nn.Module, x: torch.Tensor, graphs: bool) -> None:
        self.module, self.x, self.graph = module, x, None
        with torch.inference_mode():
            if graphs:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):  # warm-up outside the capture (cuBLAS handles, autotuning)
                        module(x)
                torch.cuda.current_stream().wait_stream(side)
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self.out = module(x)
            else:
                module(x)

    def __call__(self) -> float:
        if self.graph is not None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self.graph.replay()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        with torch.inference_mode():
            t = time.perf_counter()
            self.module(self.x)
            return (time.perf_counter() - t) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit_base_patch16_224,vit_large_patch16_224")
    ap.add_argument("--methods", default="tome,evit,gsp")
    ap.add_argument("--flops", type=float, default=0.5, help="MACs ratio of every reduced plan")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if args.device == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # CPU dry runs check the script, not half-precision kernels
    graphs = args.device.startswith("cuda")
    if graphs:
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, {args.dtype}")
    methods = [m for m in args.methods.split(",") if m]
    results = []
    for name in [m for m in args.models.split(",") if m]:
        variants = make_variants(name, methods, args.flops, args.device, dtype)
        size = variants["none"].patch_embed.img_size
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.randn(batch, 3, *size, device=args.device, dtype=dtype)
            timed = {k: Timed(v, x, graphs) for k, v in variants.items()}
            samples: dict[str, list[float]] = {k: [] for k in timed}
            for r in range(args.rounds):
                order = list(timed) if r % 2 == 0 else list(reversed(timed))  # alternate who goes first
                for k in order:
                    samples[k].append(timed[k]())
            base = samples["none"]
            for k, s in samples.items():
                ratio = statistics.median(b / t for b, t in zip(base, s))
                row = {"model": name, "batch": batch, "variant": k, "median_ms": statistics.median(s),
                       "speedup_median_of_ratios": ratio, "rounds": args.rounds, "dtype": args.dtype,
                       "cuda_graphs": graphs}
                results.append(row)
                print(f"{name:28s} b{batch:<3d} {k:6s} {row['median_ms']:9.3f} ms  speedup {ratio:5.2f}x", flush=True)
            del timed
            if graphs:
                torch.cuda.empty_cache()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

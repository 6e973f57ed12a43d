#!/usr/bin/env python
"""Find an engine's token tile: the latency of a stack of ViT MLPs against the token count.

    python scripts/tile_steps.py                                   # ViT-B width, 90..200 tokens, ORT + OpenVINO fp32/bf16
    python scripts/tile_steps.py --tokens 60:200:4 --variants openvino:bf16 --blocks 8

Fast matrix units cost whole tiles of rows (AMX: steps of 32 tokens measured on a Xeon, NOTES.md),
so a plan's kept-token counts should sit on tile boundaries (``edgeprune export --tile``). This
measures the curve on the machine at hand: every (variant, token count) is one session of
:func:`edgeprune.core.timing.interleaved_times` (shuffled turns, pause and settle before each timed
run), so drift hits every count alike. It prints the medians, the largest jumps between
neighbouring counts, and the tile that explains them best (the step whose multiples hold most of the
jumps); "none" where the curve is smooth, as ONNX Runtime fp32's is. Needs the export extra (torch,
onnx) for the MLP graph; OpenVINO variants need the openvino extra.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

CANDIDATE_TILES = (4, 8, 16, 32, 64)


def mlp_stack(path: Path, dim: int, hidden: int, blocks: int) -> Path:
    """ONNX of ``blocks`` pre-norm MLP sub-layers (x + fc2(gelu(fc1(norm(x))))) with a symbolic token axis."""
    import torch
    from torch import nn

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(blocks))
            self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)) for _ in range(blocks))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for norm, mlp in zip(self.norms, self.mlps):
                x = x + mlp(norm(x))
            return x

    torch.manual_seed(0)
    x = torch.randn(1, 197, dim)
    torch.onnx.export(Stack().eval(), (x,), str(path), input_names=["x"], output_names=["y"], opset_version=18,
                      dynamo=True, dynamic_shapes={"x": {1: torch.export.Dim("tokens", min=2, max=4096)}})
    return path


def runner(path: Path, variant: str, tokens: int, threads: int):
    """A callable running the stack at ``tokens`` tokens, and what it runs as."""
    backend, _, precision = variant.partition(":")
    x = np.random.default_rng(tokens).standard_normal((1, tokens, DIM[0]), dtype=np.float32)
    if backend == "ort":
        from edgeprune.backends.ort import OrtRunner

        r = OrtRunner(path, ["cpu"], threads, spinning=True).activate()
        return (lambda: r.run_raw({"x": x})), "fp32"
    from edgeprune.backends.openvino import compile_config, core, effective_precision

    model = core().read_model(str(path))
    model.reshape({"x": [1, tokens, DIM[0]]})  # static shapes, as edgeprune's graphs are
    compiled = core().compile_model(model, "CPU", compile_config(precision or "fp32", threads))
    request = compiled.create_infer_request()
    return (lambda: request.infer({"x": x}, share_inputs=True, share_outputs=True)), effective_precision(compiled)


DIM = [768]


def best_tile(counts: list[int], ms: list[float]) -> tuple[str, list[tuple[int, float]]]:
    """The tile whose boundaries hold the jumps: for each candidate, the share of the total rise
    between neighbouring counts that happens across one of its multiples, against the share of
    neighbour pairs that cross one. A smooth curve has no tile that beats chance by 1.5x."""
    rises = [(counts[i + 1], max(0.0, ms[i + 1] - ms[i])) for i in range(len(counts) - 1)]
    total = sum(r for _, r in rises) or 1.0
    best, best_gain = "none", 1.5
    for tile in CANDIDATE_TILES:
        crossing = [i for i in range(len(counts) - 1) if (counts[i] - 1) // tile != (counts[i + 1] - 1) // tile]
        if not crossing or len(crossing) == len(counts) - 1:
            continue
        share = sum(rises[i][1] for i in crossing) / total
        gain = share / (len(crossing) / (len(counts) - 1))
        if gain > best_gain:
            best, best_gain = str(tile), gain
    return best, sorted(rises, key=lambda r: -r[1])[:6]


def main() -> int:
    from edgeprune.core.timing import interleaved_times

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="90:200:2", help="start:stop:step of token counts (prefix included)")
    ap.add_argument("--variants", default="ort:fp32,openvino:fp32,openvino:bf16")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--hidden", type=int, default=3072)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    DIM[0] = args.dim
    start, stop, step = (int(v) for v in args.tokens.split(":"))
    counts = list(range(start, stop + 1, step))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        path = mlp_stack(Path(tmp) / "mlp.onnx", args.dim, args.hidden, args.blocks)
        built = {(v, n): runner(path, v, n, args.threads) for v in variants for n in counts}
        keys = list(built)
        samples = interleaved_times([[built[k][0]] for k in keys], runs=args.rounds, warmup=2, settle_calls=2,
                                    settle_s=0.02, pause_s=0.02, seed=1)
    medians = {k: statistics.median(samples[i][0]) for i, k in enumerate(keys)}
    print(f"{args.blocks} MLP sub-layers {args.dim}->{args.hidden}->{args.dim}, batch 1, {args.threads} threads, "
          f"{args.rounds} interleaved rounds; ms by token count")
    print(f"{'tokens':>7s}" + "".join(f"{v + ' (' + built[(v, counts[0])][1] + ')':>24s}" for v in variants))
    for n in counts:
        print(f"{n:7d}" + "".join(f"{medians[(v, n)]:24.2f}" for v in variants))
    for v in variants:
        tile, jumps = best_tile(counts, [medians[(v, n)] for n in counts])
        print(f"{v}: tile {tile}; largest rises at " + ", ".join(f"{n} (+{r:.2f} ms)" for n, r in jumps))
    return 0


if __name__ == "__main__":
    sys.exit(main())

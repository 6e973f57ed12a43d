"""End-to-end time to first token of a LLaVA-1.5-shaped model with visual-token pruning, on this CPU.

The model has LLaVA-1.5's vision front-end (CLIP-L/14-336, 576 patch tokens, layer -2, GELU projector)
and a smaller Llama (``--llm-layers`` x ``--llm-hidden``), random weights (latency does not depend on
them). For the unpruned path and each K it runs the ONNX vision graph, splices the visual tokens into a
prompt and times the LLM prefill in PyTorch, interleaved (see edgeprune.mllm.prefill), then predicts
the speedup for Llama-2-7B from the fitted seconds per MAC. The model and the exported graphs stay in
``--work`` and are reused by a rerun.

    python scripts/bench_prefill.py                                   # K = 64,128,192 of 576, visionzip
    python scripts/bench_prefill.py --method visionzip --method script
    python scripts/bench_prefill.py --small --json /tmp/prefill.small.json   # tiny dims, a minute
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]


def model_folder(work: Path, small: bool, layers: int, hidden: int, seed: int) -> Path:
    """The saved model (built once; a rerun with the same shape loads it)."""
    from edgeprune.mllm.configs import llava15_shaped, save_llava, tiny_llava

    name = f"tiny-L{layers}-H{hidden}-s{seed}" if small else f"llava15-L{layers}-H{hidden}-s{seed}"
    folder = work / name
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    print(f"building {name} (random weights) in {folder}", flush=True)
    model = tiny_llava(seed=seed, llm_layers=layers, llm_hidden=hidden) if small else llava15_shaped(layers, hidden, seed)
    tmp = work / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    save_llava(model, tmp)
    tmp.rename(folder)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llm-layers", type=int, default=None, help="LLM layers (default 4; 2 with --small)")
    p.add_argument("--llm-hidden", type=int, default=None, help="LLM width (default 2048; 96 with --small)")
    p.add_argument("--method", action="append", choices=["visionzip", "gsp", "qcsp", "script"],
                   help="pruning method, repeatable (default visionzip)")
    p.add_argument("--tokens", default="64,128,192", help="K values of 576 (scaled to the patch count with --small)")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--settle", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=REPO / "out" / "prefill_bench")
    p.add_argument("--json", type=Path, default=None, help="default docs/results/prefill.json (out/prefill.small.json with --small)")
    p.add_argument("--small", action="store_true", help="tiny_llava dims (64 patches): checks the script in a minute")
    args = p.parse_args()

    import torch

    from edgeprune.mllm.prefill import prefill_bench

    layers = args.llm_layers or (2 if args.small else 4)
    hidden = args.llm_hidden or (96 if args.small else 2048)
    methods = args.method or ["visionzip"]
    json_out = args.json or (REPO / "out" / "prefill.small.json" if args.small else REPO / "docs" / "results" / "prefill.json")
    json_out.parent.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    folder = model_folder(args.work, args.small, layers, hidden, args.seed)
    patches = json.loads((folder / "config.json").read_text())["vision_config"]
    patches = (patches["image_size"] // patches["patch_size"]) ** 2
    tokens = [max(1, round(int(k) * patches / 576)) for k in args.tokens.split(",")]
    report = {"command": "python scripts/bench_prefill.py " + " ".join(sys.argv[1:]), "model_folder": str(folder),
              "small": args.small, "results": {}}
    started = time.perf_counter()
    for method in methods:
        def progress(done: int, total: Optional[int], message: str = "", method: str = method) -> None:
            if total is not None:
                print(f"  {method}: round {done}/{total}", flush=True)
            elif message:
                print(f"  {message}", flush=True)

        result = prefill_bench(folder, tokens, method, args.prompt_tokens, args.rounds, args.threads,
                               work_dir=args.work / f"artifacts-{folder.name}", warmup=args.warmup, settle=args.settle,
                               seed=args.seed, progress=progress)
        report["results"][method] = result
        print_table(result)
    report["seconds"] = round(time.perf_counter() - started, 1)
    json_out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {json_out}")


def print_table(result: dict) -> None:
    cfg, fit = result["config"], result["fit"]
    print(f"\n{cfg['method']}: {cfg['patch_tokens']} patches, {cfg['prompt_tokens']} text tokens, LLM "
          f"{cfg['llm']['layers']}x{cfg['llm']['hidden']}, {result['threads']['torch']} threads, {result['rounds']} rounds")
    head = f"{'variant':<14}{'K':>5}{'T':>6}{'vision ms':>11}{'splice ms':>11}{'prefill ms':>12}{'TTFT ms':>10}" \
           f"{'speedup':>9}{'prefill x':>11}{'7B TTFT s':>11}{'7B x':>7}"
    print(head)
    for row, pred in zip(result["rows"], result["prediction"]["rows"]):
        print(f"{row['name']:<14}{row['tokens']:>5}{row['seq_len']:>6}{row['vision_ms']:>11.2f}{row['splice_ms']:>11.2f}"
              f"{row['prefill_ms']:>12.2f}{row['ttft_ms']:>10.2f}{row['speedup']:>8.2f}x{row['prefill_speedup']:>10.2f}x"
              f"{pred['ttft_ms'] / 1e3:>11.2f}{pred['speedup']:>6.2f}x")
    print(f"7B fit: prefill = {fit['a_s'] * 1e3:.2f} ms + MACs / {fit['gmacs_per_s']:.2f} GMAC/s "
          f"(max residual {fit['max_rel_residual']:.1%} over T = {fit['seq_lens']})")


if __name__ == "__main__":
    main()

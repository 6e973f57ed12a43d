"""Is Script's query conditioning real? Runs the study of ``edgeprune.mllm.query_conditioning`` (class
share among the K kept tokens on the reference segmenter's held-out scenes; its docstring says how) and
writes ``docs/results/query_conditioning.json``. The acceptance criterion: qcsp's mean share is >= 2x
visionzip's and gsp's at K = 32 over 200 scenes.

    python scripts/query_conditioning.py                       # 200 scenes, K = 32, layers 6 and 5
    python scripts/query_conditioning.py --scenes 50 --k 32 --layers 6 --out /tmp/qc.json
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from edgeprune.mllm.query_conditioning import DONOR_MIN_PATCHES, load_model, run_study

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "docs" / "results" / "query_conditioning.json"


# -------------------------------------------------------------------------------------------- cli


def table(result: dict) -> str:
    lines = []
    for layer, res in result["layers"].items():
        lines.append(f"layer {layer} (K = {result['k']} of {result['tokens']}, {len(result['scenes'])} scenes)")
        lines.append(f"  {'method':<13} {'share=kept/K':>12} {'kept/min(n,K)':>14} {'recall':>8}")
        for m, d in res["means"].items():
            lines.append(f"  {m:<13} {d['share']:>12.4f} {d['capped']:>14.4f} {d['recall']:>8.4f}")
        lines.append("  ratios (share): " + ", ".join(f"{k} {v:.2f}" for k, v in res["ratios"].items() if v is not None))
        lines.append("  scene fraction: " + ", ".join(f"{k} {v:.2f}" for k, v in res["scene_fraction"].items()))
        lines.append("  distinct selections over the scenes: " + ", ".join(
            f"{k} {v}" for k, v in res["distinct_selections"].items()))
        lines.append("  >= 2x visionzip and gsp: " + ", ".join(f"{m} {'PASS' if p else 'FAIL'}"
                                                            for m, p in res["pass"].items()))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--layers", default="6,5", help="hidden-state indices; the first is the primary one")
    parser.add_argument("--survivors", type=int, default=128, help="script's graph survivors")
    parser.add_argument("--min-patches", type=int, default=1, help="patches the target class must own")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    layers = [int(v) for v in args.layers.split(",")]
    start = time.perf_counter()
    model = load_model()
    result = run_study(model, args.scenes, args.k, layers, args.survivors, min_patches=args.min_patches)
    seconds = time.perf_counter() - start
    primary = result["layers"][str(layers[0])]
    seeds = [s["seed"] for s in result["scenes"]]
    from edgeprune.data import HELDOUT_SEEDS

    record = {
        "criterion": ("query = mean tower feature of one class's patches from a different held-out scene; the "
                      "share of that class's patches among the K kept tokens (kept of the class / K) is >= 2x "
                      "what visionzip and gsp keep, K = 32, objects < 10 % of the image, 200 scenes"),
        "command": "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]).as_posix())] + list(sys.argv[1:]))
        if argv is None else "python scripts/query_conditioning.py " + " ".join(shlex.quote(a) for a in argv),
        "model": "models/scene_seg",
        "seed_pool": f"HELDOUT_SEEDS = range({HELDOUT_SEEDS.start}, {HELDOUT_SEEDS.stop})",
        "target_seeds": {"first": seeds[0], "last": seeds[-1], "count": len(seeds)},
        "k": result["k"], "tokens": result["tokens"], "survivors": result["survivors"], "dominant": result["dominant"],
        "primary_layer": layers[0],
        "layer_note": "hidden-state index: 6 = last block output (before the final norm), 5 = LLaVA's -2",
        "definitions": {
            "patch class": "majority class of the patch's 8x8 pixels (ties: lower id)",
            "target": "smallest foreground class (ids 2..6) with pixels < 10 % of the image and >= "
                      f"{args.min_patches} patch(es) of its own",
            "query": f"unit-norm mean feature of the class's patches in the donor scene: the next held-out seed "
                     f"(never the scene itself) with >= {DONOR_MIN_PATCHES} patches of the class",
            "joint = similar": "the feature layer's patch tokens (no projection: the segmenter has no text tower)",
            "share": "kept tokens of the class / K (primary)", "capped": "kept / min(class patches, K)",
            "recall": "kept / class patches",
            "visionzip": "attention = CLS attention at the feature layer's block summed over heads, keys = mean "
                         "over heads; a contextual token counts at its merge target's patch",
            "gsp": "graph rounds remove at most half of the sources each (edgeprune.mllm.select.choice_rounds); "
                   "uncapped, every round at K = 32 of 256 removed all sources and gsp kept the same stride-8 "
                   "patches in every scene (share 0.016, what random keeps): this study found that",
            "qcsp_generic": "control: qcsp with the donor scene's mean patch feature as the query",
            "random": "expectation of a uniformly random K-subset",
        },
        "class_patches_mean": float(np.mean([s["class_patches"] for s in result["scenes"]])),
        "class_pixels_frac_mean": float(np.mean([s["class_pixels_frac"] for s in result["scenes"]])),
        "layers": result["layers"],
        "pass": primary["pass"]["qcsp"],
        "pass_script": primary["pass"]["script"],
        "seconds": round(seconds, 1), "threads": args.threads, "torch": torch.__version__,
        "python": platform.python_version(),
        "scenes": result["scenes"],
    }
    print(table(result))
    print(f"criterion (qcsp, layer {layers[0]}): {'PASS' if record['pass'] else 'FAIL'}; {seconds:.1f} s")
    from edgeprune.core.files import write_json_atomic

    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

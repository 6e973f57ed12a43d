"""Every multimodal selection method x family x batch {1, 2}: ONNX Runtime vs eager PyTorch.

Each (family, method) exports once with a dynamic batch axis, which checks parity at batch 1 and 2 on
fresh random inputs (visual tokens within 1e-4 relative, patch indices and grid positions identical;
see ``edgeprune.mllm.export.check_visual_parity``). The CLIP families' query-conditioned graphs get
a real (tiny) CLIP text tower and its ``visual_projection``; SigLIP's query lives in the tower's
own width. Writes ``docs/results/mllm_parity.json``.

    python scripts/parity_mllm.py                 # 3 families x 5 methods, K = 16 (crops 8)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgeprune.artifacts.artifact import write_json_atomic  # noqa: E402
from edgeprune.mllm.configs import SMALL_FAMILIES, small_clip_query, small_llava  # noqa: E402
from edgeprune.mllm.export import export_visual  # noqa: E402
from edgeprune.mllm.graph import METHODS, QUERY_METHODS  # noqa: E402
from edgeprune.mllm.llava import llava_parts  # noqa: E402

OUT_JSON = REPO / "docs" / "results" / "mllm_parity.json"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--crop-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = small_clip_query(Path(tmp) / "clip")
        for family in SMALL_FAMILIES:
            parts = llava_parts(small_llava(family))
            for method in METHODS:
                started = time.perf_counter()
                query = clip if method in QUERY_METHODS and family != "llava-siglip" else None
                tokens = None if method == "none" else args.tokens
                path = export_visual(parts, method, Path(tmp) / f"{family}-{method}", tokens=tokens,
                                     crop_tokens=None if tokens is None else args.crop_tokens,
                                     pieces=3 if family == "llava-next" else 1, query_folder=query, dynamic_batch=True)
                manifest = json.loads((path / "manifest.json").read_text())
                parity, lint = manifest["parity"], manifest["trt_lint"]
                row = {"family": family, "method": method, "visual_tokens": manifest["visual_tokens"],
                       "batches": sorted(parity["batches"]), "max_relative_error": parity["max"],
                       "indices_identical": parity["indices_identical"], "rechecked": parity.get("rechecked", []),
                       "trt_lint_errors": lint["errors"], "trt_lint_warnings": lint["warnings"],
                       "onnx_nodes": sum(manifest["onnx"]["ops"].values()), "query_tower": query is not None,
                       "seconds": round(time.perf_counter() - started, 1)}
                rows.append(row)
                print(f"{family:13s} {method:10s} K={row['visual_tokens']:4d} batches {','.join(row['batches'])} "
                      f"max rel err {row['max_relative_error']:.2e} indices identical {row['indices_identical']} "
                      f"lint errors {row['trt_lint_errors']} warnings {row['trt_lint_warnings']} ({row['seconds']} s)", flush=True)
    command = "python scripts/parity_mllm.py" + "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv))
    worst = max(r["max_relative_error"] for r in rows)
    write_json_atomic(args.out, {"command": command, "tolerance": 1e-4, "worst_relative_error": worst,
                                 "all_indices_identical": all(r["indices_identical"] for r in rows), "rows": rows})
    print(f"worst relative error {worst:.2e}; all indices identical: {all(r['indices_identical'] for r in rows)}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

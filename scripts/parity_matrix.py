#!/usr/bin/env python
"""Parity acceptance: every method x model family x batch {1, 2}, ONNX Runtime vs eager PyTorch.

Models are built from their configs with random weights (latency and parity do not depend on the
weight values): timm vit_small_patch16_224, deit_base_distilled_patch16_224, a register-token ViT
(vit_little_patch16_reg4_gap_256), HF CLIPVisionModel and SiglipVisionModel (default configs), and
segmenters: the trained reference model (models/scene_seg), a ViT-S/16 with a linear head, and a
ViT-S/16 with four registers, no CLS token and a multi-level head. Segmenters also run the dense-only
methods (cluster, pass) and must give logits at the input resolution. Each export has a dynamic
batch axis and is checked on fresh random inputs at batch 1 and 2.

    python scripts/parity_matrix.py [--only clip,siglip,scene_seg] [--methods tome,evit]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import edgeprune
from edgeprune.export.onnx_export import export


REPO = Path(__file__).resolve().parents[1]


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "scene_seg":
        from edgeprune.families.timm_seg import load_segmenter

        return load_segmenter(REPO / "models" / "scene_seg")
    if name.startswith("seg_"):
        from edgeprune.families.timm_seg import create_segmenter

        if name == "seg_linear":
            return create_segmenter("vit_small_patch16_224", 19, head="linear")
        return create_segmenter("vit_small_patch16_224", 19, head="multilevel", reg_tokens=4, class_token=False)
    if name == "clip":
        from transformers import CLIPVisionConfig, CLIPVisionModel

        return CLIPVisionModel(CLIPVisionConfig()).eval()
    if name == "siglip":
        from transformers import SiglipVisionConfig, SiglipVisionModel

        return SiglipVisionModel(SiglipVisionConfig()).eval()
    import timm

    return timm.create_model(name, pretrained=False).eval()


MODELS = {
    "vit_small": "vit_small_patch16_224",
    "deit_base_distilled": "deit_base_distilled_patch16_224",
    "registers": "vit_little_patch16_reg4_gap_256",
    "clip": "clip",
    "siglip": "siglip",
    "scene_seg": "scene_seg",
    "seg_vits_linear": "seg_linear",
    "seg_vits_regs_multilevel": "seg_regs_multilevel",
}
DENSE_ONLY = ("cluster", "pass")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(MODELS))
    ap.add_argument("--methods", default="none,tome,evit,gsp,cluster,pass",
                    help="cluster and pass run on segmenters only")
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()

    rows, worst = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.only.split(","):
            model = build(MODELS[key])
            dense = edgeprune.reduce_model(model, edgeprune.build_plan(model, "none")).__class__.__name__ == "ReducedDense"
            for method in args.methods.split(","):
                if method in DENSE_ONLY and not dense:
                    continue
                plan = edgeprune.build_plan(model, method, **({} if method == "none" else {"flops": args.flops}))
                start = time.perf_counter()
                artifact = export(model, plan, Path(tmp) / f"{key}_{method}", dynamic_batch=True, tolerance=args.tolerance)
                parity = artifact.manifest["parity"]["batches"]
                if dense:  # logits at the input resolution, whatever the plan
                    shape = artifact.manifest["outputs"][0]["shape"]
                    assert shape[-2:] == list(plan.spec.img_size), shape
                errs = {b: max(e.values()) for b, e in parity.items()}
                worst = max(worst, *errs.values())
                rows.append((key, method, plan.final_tokens, plan.macs_ratio, errs["1"], errs["2"], time.perf_counter() - start))
                print(f"{key:24s} {method:7s} tokens={plan.final_tokens:4d} MACs={plan.macs_ratio:.3f} "
                      f"rel.err b1={errs['1']:.2e} b2={errs['2']:.2e} ({rows[-1][-1]:.0f}s)", flush=True)
    print(f"\n{len(rows)} exports x 2 batch sizes; worst relative error {worst:.2e} (tolerance {args.tolerance:.0e})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())

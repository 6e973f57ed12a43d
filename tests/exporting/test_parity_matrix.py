"""Parity acceptance (was scripts/parity_matrix.py): method x model family, ONNX Runtime vs eager PyTorch
at batch 1 and 2 through one dynamic-batch export each.

Models are built from their configs with random weights (parity does not depend on the weight values):
timm vit_small_patch16_224, deit_base_distilled_patch16_224, a register-token ViT
(vit_little_patch16_reg4_gap_256), HF CLIPVisionModel and SiglipVisionModel (default configs), and
segmenters: the trained reference model (models/scene_seg), a ViT-S/16 with a linear head, and a ViT-S/16
with four registers, no CLS token and a multi-level head. Segmenters also run the dense-only methods
(cluster, pass) and must give logits at the input resolution. Every family runs; the methods are spread
over them (each method on at least two families) so the whole matrix stays within the heavy budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import edgeprune
from edgeprune.exporting.onnx_export import export

pytestmark = pytest.mark.heavy

REFERENCE = Path(__file__).resolve().parents[2] / "models" / "scene_seg"
TOLERANCE = 1e-4
FLOPS = 0.5


def build(key: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if key == "scene_seg":
        from edgeprune.families.timm_seg import load_segmenter

        return load_segmenter(REFERENCE)
    if key.startswith("seg_"):
        from edgeprune.families.timm_seg import create_segmenter

        if key == "seg_vits_linear":
            return create_segmenter("vit_small_patch16_224", 19, head="linear")
        return create_segmenter("vit_small_patch16_224", 19, head="multilevel", reg_tokens=4, class_token=False)
    if key == "clip":
        from transformers import CLIPVisionConfig, CLIPVisionModel

        return CLIPVisionModel(CLIPVisionConfig()).eval()
    if key == "siglip":
        from transformers import SiglipVisionConfig, SiglipVisionModel

        return SiglipVisionModel(SiglipVisionConfig()).eval()
    import timm

    name = {"vit_small": "vit_small_patch16_224", "deit_base_distilled": "deit_base_distilled_patch16_224",
            "registers": "vit_little_patch16_reg4_gap_256"}[key]
    return timm.create_model(name, pretrained=False).eval()


CASES = {  # family -> methods (cluster and pass are dense-only: segmenters)
    "vit_small": ("none", "tome", "evit", "gsp"),
    "deit_base_distilled": ("tome",),
    "registers": ("evit", "gsp"),
    "clip": ("tome", "evit"),
    "siglip": ("gsp",),
    "scene_seg": ("none", "tome", "cluster", "pass"),
    "seg_vits_linear": ("evit", "cluster"),
    "seg_vits_regs_multilevel": ("gsp", "pass"),
}


@pytest.mark.parametrize("key", list(CASES))
def test_onnx_matches_eager_at_batch_1_and_2(key, tmp_path):
    model = build(key)
    dense = edgeprune.reduce_model(model, edgeprune.build_plan(model, "none")).__class__.__name__ == "ReducedDense"
    for method in CASES[key]:
        assert dense or method not in ("cluster", "pass")
        plan = edgeprune.build_plan(model, method, **({} if method == "none" else {"flops": FLOPS}))
        artifact = export(model, plan, tmp_path / method, dynamic_batch=True, tolerance=TOLERANCE)
        parity = artifact.manifest["parity"]["batches"]
        assert set(parity) == {"1", "2"}, (method, parity)
        worst = {b: max(e.values()) for b, e in parity.items()}
        assert max(worst.values()) <= TOLERANCE, (method, worst)
        if dense:  # logits at the input resolution, whatever the plan
            shape = artifact.manifest["outputs"][0]["shape"]
            assert shape[-2:] == list(plan.spec.img_size), (method, shape)

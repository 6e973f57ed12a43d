"""The reference checkpoint shipped in models/ loads through the same path users take."""

import json
from pathlib import Path

import torch

import edgeprune
from edgeprune.families.loading import load_model

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "mnist_vit"


def test_reference_model_loads_and_reduces(pixels):
    config = json.loads((MODEL_DIR / "config.json").read_text())
    model, info = load_model(config["timm_name"], checkpoint=MODEL_DIR / "model.safetensors", model_args=config["model_args"])
    assert info["checkpoint_sha256"] and model.patch_embed.num_patches == 64
    x = pixels(4, size=32, chans=1)
    with torch.no_grad():
        ref = model(x)
        for method in ("tome", "evit", "gsp"):
            plan = edgeprune.build_plan(model, method, flops=0.6)
            out = edgeprune.reduce_model(model, plan)(x)
            assert out.shape == ref.shape and torch.isfinite(out).all()
    assert 0.9 < config["eval"]["top1"] <= 1.0


SEG_DIR = Path(__file__).resolve().parents[1] / "models" / "scene_seg"


def test_reference_segmenter_keeps_its_miou_under_merge_unmerge():
    """A real accuracy check: ToMe merging with unmerge before the head, at 0.6 of the MACs, must keep
    the reference segmenter's held-out mIoU (it measured 99.8% on 200 scenes)."""
    from edgeprune.data import HELDOUT_SEEDS, SceneConfig, scene_batch
    from edgeprune.imaging.evaluation import confusion, iou_report, normalize

    model, info = load_model(str(SEG_DIR))
    assert info["source"] == "edgeprune-segmenter"
    images, labels = scene_batch(HELDOUT_SEEDS[:40], SceneConfig(height=128, width=128))
    x = torch.from_numpy(normalize(images, model.info["input"]["mean"], model.info["input"]["std"]))
    plan = edgeprune.build_plan(model, "tome", flops=0.6)
    assert plan.reduction_points == [0, 2] and plan.macs_ratio <= 0.6
    reduced = edgeprune.reduce_model(model, plan)
    with torch.no_grad():
        base, ours = model(x), reduced(x)
    assert ours.shape == base.shape == (40, 7, 128, 128)
    miou = {name: iou_report(confusion(labels, out.argmax(1).numpy(), 7))["miou"] for name, out in (("base", base), ("tome", ours))}
    assert miou["base"] > 0.6
    assert miou["tome"] >= 0.97 * miou["base"], miou

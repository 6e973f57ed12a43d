"""The reference checkpoint shipped in models/ loads through the same path users take."""

import json
from pathlib import Path

import torch

import edgeprune
from edgeprune.loading import load_model

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

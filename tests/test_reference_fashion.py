"""The Fashion-MNIST reference ViT in models/fashion_vit: the committed weights are the trained ones
(their accuracy on real test images matches the recorded figure) and they survive token reduction."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune.families.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "fashion_vit"
DATA_DIR = ROOT.parent / "shared" / "data" / "fashion-mnist"
N = 1000


@pytest.fixture(scope="module")
def reference():
    config = json.loads((MODEL_DIR / "config.json").read_text())
    model, info = load_model(config["timm_name"], checkpoint=MODEL_DIR / "model.safetensors", model_args=config["model_args"])
    return model, info, config


@pytest.fixture(scope="module")
def test_images(reference):
    from edgeprune.data.idx import is_idx_folder, load_idx_split

    if not is_idx_folder(DATA_DIR):
        pytest.skip(f"Fashion-MNIST not found at {DATA_DIR}")
    images, labels = load_idx_split(DATA_DIR, "test")
    inp = reference[2]["input"]
    x = (torch.from_numpy(images[:N].astype(np.float32) / 255.0).unsqueeze(1) - inp["mean"]) / inp["std"]
    return x, torch.from_numpy(labels[:N].copy())


def top1(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def test_config_records_the_trained_model(reference):
    model, info, config = reference
    assert info["checkpoint_sha256"]
    assert model.patch_embed.num_patches == 49 and model.global_pool == "token"
    assert config["input"]["size"] == [1, 28, 28]
    assert config["eval"]["n"] == 10000 and 0.85 <= config["eval"]["top1"] <= 1.0
    assert config["train"]["split"] == "Fashion-MNIST train (60,000) / test (10,000) as shipped"
    assert config["train"]["minutes"] <= 15


def test_weights_reach_the_recorded_accuracy(reference, test_images):
    model, _, config = reference
    x, y = test_images
    acc = top1(model, x, y)
    assert abs(acc - config["eval"]["top1"]) <= 0.02, (acc, config["eval"]["top1"])


def test_reduced_model_runs(reference, test_images):
    model, _, _ = reference
    x, y = test_images
    plan = edgeprune.build_plan(model, "tome", flops=0.6)
    assert plan.macs_ratio <= 0.6
    reduced = edgeprune.reduce_model(model, plan)
    with torch.no_grad():
        out = reduced(x[:256])
    assert out.shape == (256, 10) and torch.isfinite(out).all()
    # Not a tight bound: token reduction should cost accuracy, not destroy it.
    assert top1(reduced, x[:256], y[:256]) > 0.5

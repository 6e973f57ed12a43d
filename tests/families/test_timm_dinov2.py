"""timm DINOv2 with registers (``vit_small_patch14_reg4_dinov2``): LayerScale, a CLS token plus 4
register tokens, 14-pixel patches. The stock timm adapter handles it; these tests prove it.

Tiny and random (img_size 70 -> a 5x5 grid, depth 4, width 48); no downloads.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import edgeprune
from edgeprune.families import adapter_for
from edgeprune.families.timm_vit import TimmViTAdapter

NAME = "vit_small_patch14_reg4_dinov2"
TINY = dict(img_size=70, depth=4, embed_dim=48, num_heads=3, mlp_ratio=2.0, num_classes=5)
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(**overrides) -> nn.Module:
    """DINOv2 starts its layer scales at 1e-5, which makes every block nearly the identity; larger
    random ones make reductions visible in the output, as in a trained model."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False, **{**TINY, **overrides})
    for name, p in model.named_parameters():
        if name.endswith("gamma") or name in ("cls_token", "reg_token"):
            nn.init.normal_(p, std=0.5)
    if isinstance(getattr(model, "head", None), nn.Linear):
        nn.init.normal_(model.head.weight, std=0.5)
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {"token": make(), "avg": make(global_pool="avg")}


def test_spec_and_input_config(models):
    adapter = adapter_for(models["token"])
    assert type(adapter) is TimmViTAdapter
    spec = adapter.spec
    assert (spec.num_prefix, spec.class_token, spec.prefix_head) == (5, True, True)
    assert (spec.patch_size, spec.num_patches, spec.img_size, spec.head_width) == (14, 25, (70, 70), 0)
    assert (spec.depth, spec.embed_dim, spec.num_heads, spec.mlp_hidden, spec.head_dim_out) == (4, 48, 3, 96, 5)
    assert adapter_for(models["avg"]).spec.prefix_head is False  # the avg pool reads every patch token
    assert adapter.input_config() == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                      "source": "timm pretrained_cfg"}


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_unreduced_equals_timm(models, pixels, pool):
    model = models[pool]
    x = pixels(2, 70)
    with torch.no_grad():
        out = edgeprune.reduce_model(model, edgeprune.build_plan(model, "none"))(x)
        ref = model(x)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=ATOL)


@pytest.mark.parametrize("method", ["tome", "evit", "gsp"])
@pytest.mark.parametrize("pool", ["token", "avg"])
def test_reduced_is_static_and_batch_independent(models, pixels, pool, method):
    model = models[pool]
    plan = edgeprune.build_plan(model, method, flops=0.6)
    assert plan.macs_ratio <= 0.6 + 1e-9 and plan.final_tokens < 25 and plan.spec.num_prefix == 5
    reduced = edgeprune.reduce_model(model, plan)
    x = pixels(2, 70)
    with torch.no_grad():
        both, alone, ref = reduced(x), reduced(x[1:]), model(x)
    assert both.shape == (2, 5)
    torch.testing.assert_close(alone[0], both[1], rtol=1e-5, atol=ATOL)
    assert not torch.allclose(both, ref, atol=1e-4)


def test_registers_are_never_reduced(models, pixels):
    """The four registers and the CLS token ride through every reduction point unchanged in count."""
    model = models["token"]
    plan = edgeprune.build_plan(model, "tome", flops=0.6)
    reduced = edgeprune.reduce_model(model, plan)
    seen = []
    with torch.no_grad():
        x = reduced.adapter.embed(pixels(1, 70))
        reduced.run_blocks(x, torch.ones_like(x[..., :1]), reduced._reduce, after=lambda i, t: seen.append(t.shape[1]))
    assert seen == [5 + k for k in plan.keep]


def test_prefix_query_qkv_equals_slicing(models):
    h = torch.randn(2, 30, 48)
    for view in adapter_for(models["token"]).blocks():
        q, k, v = view.qkv(h)
        qp, kp, vp = view.prefix_query_qkv(h, 5)
        assert qp.shape == (2, 3, 5, 16)
        for a, b in ((q[:, :, :5], qp), (k, kp), (v, vp)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["tome", "evit"])
def test_export_parity_batch_1_and_2(models, tmp_path, method):
    model = models["token"]
    artifact = edgeprune.export(model, edgeprune.build_plan(model, method, flops=0.6), tmp_path / "a", dynamic_batch=True)
    m = artifact.manifest
    assert set(m["parity"]["batches"]) == {"1", "2"} and m["parity"]["max"] <= 1e-4
    assert m["model"]["spec"]["num_prefix"] == 5 and m["outputs"][0]["shape"][1:] == [5]
    # A symbolic batch axis is the lint's only (inherent) warning: no errors, nothing else.
    assert m["trt_lint"]["errors"] == 0 and set(m["trt_lint"]["rules"]) <= {"dynamic-batch"}

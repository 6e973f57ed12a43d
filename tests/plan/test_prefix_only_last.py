"""``prefix_only_last``: the last block runs attention and MLP for the prefix (CLS, distillation,
register) tokens only. For a head that reads only those tokens this is exact, so every check here
compares against the full computation: the unreduced model, or the same keep schedule with the
last block run for every token. Also its MACs, plan validation and serialization, ONNX export,
``ReducedViT.forward_from`` and the latency model's prefix curve.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

timm = pytest.importorskip("timm")

import edgeprune  # noqa: E402
from edgeprune import EdgepruneError, TokenPlan, build_plan  # noqa: E402
from edgeprune.families import adapter_for  # noqa: E402
from edgeprune.plan.macs import baseline_macs, block_macs, plan_macs, prefix_block_macs  # noqa: E402
from edgeprune.plan.latency import LatencyModel  # noqa: E402
from edgeprune.core.spec import ViTSpec  # noqa: E402

SHRINK = dict(pretrained=False, img_size=32, patch_size=8, depth=3, embed_dim=48, num_heads=3, num_classes=5)
REDUCING = {"tome": {}, "tofu": {"prune_until": 1}, "prune-merge": {}}  # tofu prunes at block 0, merges at 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def create(layout: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    if layout == "cls":
        model = timm.create_model("vit_tiny_patch16_224", **SHRINK, **extra)
    elif layout == "distilled":
        model = timm.create_model("deit_tiny_distilled_patch16_224", **SHRINK, **extra)
    elif layout == "registers":
        # DINOv2's layer scale starts at 1e-5 and its CLS/register tokens near 0, which would make
        # every block (and so every comparison) nearly an identity: give them weight.
        model = timm.create_model("vit_small_patch14_reg4_dinov2", global_pool="token", init_values=0.5, **SHRINK, **extra)
        with torch.no_grad():
            model.cls_token.normal_(std=0.5)
            model.reg_token.normal_(std=0.5)
    else:
        raise ValueError(layout)
    with torch.no_grad():  # timm starts biases at 0, which would hide a dropped q/k/v bias
        for block in model.blocks:
            block.attn.qkv.bias.normal_(std=0.5)
    return model.eval()


@pytest.fixture(scope="module")
def models():
    return {layout: create(layout) for layout in ("cls", "distilled", "registers")}


def pixels_for(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def run(model, plan, pixels):
    with torch.no_grad():
        return edgeprune.reduce_model(model, plan)(pixels)


def entering(reduced, pixels, start):
    """The unreduced tokens entering block ``start``, computed with the reduced model's block views."""
    x = reduced.adapter.embed(pixels)
    for view in reduced.views[:start]:
        q, k, v = view.qkv(view.norm1(x))
        x = x + view.ls1(view.attn_out(F.scaled_dot_product_attention(q, k, v, scale=view.scale)))
        x = x + view.ls2(view.mlp(view.norm2(x)))
    return x


# ---------------------------------------------------------------------------------------------
# Exactness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["cls", "distilled", "registers"])
def test_unreduced_prefix_plan_equals_the_model(models, layout):
    """With no reduction, running the last block for the prefix tokens alone gives the model's own
    logits (CLS head, CLS + distillation heads, CLS after four registers)."""
    model = models[layout]
    spec = adapter_for(model).spec
    assert spec.prefix_head and spec.num_prefix == {"cls": 1, "distilled": 2, "registers": 5}[layout]
    plan = build_plan(model, "none", prefix_only_last=True)
    assert plan.prefix_only_last and plan.keep == (16, 16, 16)
    x = pixels_for(2, 11)
    with torch.no_grad():
        expected = model(x)
    got = run(model, plan, x)
    assert expected.std() > 1e-2  # the logits carry signal, so atol 1e-5 is a real check
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", list(REDUCING))
@pytest.mark.parametrize("layout", ["cls", "distilled", "registers"])
def test_reduced_prefix_plan_equals_full_last_block(models, layout, method):
    """A flops-0.6 plan with prefix_only_last gives the same logits as its own keep schedule with the
    last block run for every token (the patch outputs of the last block are never read), and it does
    reduce: the logits differ from the unreduced model's. The last block's output holds the prefix only."""
    model = models[layout]
    plan = build_plan(model, method, flops=0.6, prefix_only_last=True, options=REDUCING[method])
    spec = plan.spec
    assert plan.macs_ratio <= 0.6 and plan.reduction_points and spec.depth - 1 not in plan.reduction_points
    assert plan.keep[-1] == plan.keep[-2]
    full = dataclasses.replace(plan, prefix_only_last=False)
    x = pixels_for(2, 12)
    got, expected = run(model, plan, x), run(model, full, x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        assert (got - model(x)).abs().max() > 1e-4

    reduced = adapter_for(model).reduced(plan)
    shapes = {}
    with torch.no_grad():
        x_emb = reduced.adapter.embed(x)
        reduced.run_blocks(x_emb, torch.ones_like(x_emb[..., :1]), reduced._reduce,
                           after=lambda i, t: shapes.__setitem__(i, tuple(t.shape)))
    assert shapes[spec.depth - 1] == (2, spec.num_prefix, spec.embed_dim)
    assert shapes[spec.depth - 2] == (2, spec.num_prefix + plan.keep[-2], spec.embed_dim)


def test_constant_schedule_leaves_the_last_block_alone(models):
    plan = build_plan(models["cls"], "tome", flops=0.6, schedule="constant", prefix_only_last=True)
    assert plan.keep[-1] == plan.keep[-2] < 16 and plan.reduction_points == [0, 1]


# ---------------------------------------------------------------------------------------------
# MACs
# ---------------------------------------------------------------------------------------------


def test_prefix_block_macs_by_hand(models):
    """Tiny ViT (width 48, 3 heads, MLP 192, 1 prefix, 16 patches): k/v for 17 tokens, q, the attention
    row and the out-projection for the CLS token, the MLP for it alone. A spec whose attention is
    wider than the model (4 heads of 32 on width 64) counts the attention width, not the model's."""
    spec = adapter_for(models["cls"]).spec
    assert (spec.embed_dim, spec.attn_dim, spec.mlp_hidden) == (48, 48, 192)
    kv, q, rows, out, mlp = 17 * 48 * 2 * 48, 1 * 48 * 48, 2 * 1 * 17 * 48, 1 * 48 * 48, 2 * 1 * 48 * 192
    assert prefix_block_macs(spec, 16) == kv + q + rows + out + mlp
    assert prefix_block_macs(spec, 9) == 10 * 48 * 2 * 48 + q + 2 * 10 * 48 + out + mlp

    wide = ViTSpec(depth=2, embed_dim=64, num_heads=4, mlp_hidden=128, num_prefix=2, num_patches=10, patch_size=4,
                   in_chans=3, img_size=(8, 20), head_dim_out=3, head_width=32, prefix_head=True)
    assert wide.attn_dim == 128
    assert prefix_block_macs(wide, 10) == 12 * 64 * 2 * 128 + 2 * 64 * 128 + 2 * 2 * 12 * 128 + 2 * 128 * 64 + 2 * 2 * 64 * 128

    plan = build_plan(models["cls"], "none", prefix_only_last=True)
    assert plan_macs(plan) == baseline_macs(spec) - block_macs(spec, "none", 16, 16) + prefix_block_macs(spec, 16)


@pytest.mark.parametrize("method", ["none", *REDUCING])
def test_prefix_plan_costs_fewer_macs(models, method):
    """The same keep schedule costs strictly fewer MACs with the last block prefix-only."""
    model = models["distilled"]
    budget = {} if method == "none" else dict(tokens=6, points=[0, 1], options=REDUCING[method])
    plan = build_plan(model, method, prefix_only_last=True, **budget)
    full = dataclasses.replace(plan, prefix_only_last=False)
    assert plan.macs_ratio < full.macs_ratio
    assert plan.macs == full.macs - block_macs(plan.spec, method, plan.keep[-2], plan.keep[-1], plan.options) \
        + prefix_block_macs(plan.spec, plan.keep[-2])


# ---------------------------------------------------------------------------------------------
# Validation and serialization
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [dict(global_pool="avg"), dict(class_token=False, global_pool="avg")])
def test_heads_reading_patch_tokens_refuse(extra):
    """Average pooling reads every patch token (and a model without prefix tokens has nothing to
    keep), so prefix_only_last would change the outputs: refused."""
    model = create("cls", **extra)
    assert not adapter_for(model).spec.prefix_head
    with pytest.raises(EdgepruneError, match="prefix"):
        build_plan(model, "none", prefix_only_last=True)
    with pytest.raises(EdgepruneError, match="prefix"):
        build_plan(model, "tome", flops=0.6, prefix_only_last=True)
    assert not build_plan(model, "none").prefix_only_last  # the ordinary plan is still fine


def test_reducing_at_the_last_block_is_refused(models):
    spec = adapter_for(models["cls"]).spec
    with pytest.raises(EdgepruneError, match="last block"):
        TokenPlan("tome", spec, (12, 9, 6), prop_attn=True, prefix_only_last=True)
    TokenPlan("tome", spec, (12, 9, 6), prop_attn=True)  # fine without it
    with pytest.raises(EdgepruneError, match="block indices"):
        build_plan(spec, "tome", flops=0.6, points=[0, 2], prefix_only_last=True)
    assert build_plan(spec, "tome", flops=0.6, points=[0, 2]).reduction_points == [0, 2]


@pytest.mark.parametrize("method", ["none", *REDUCING])
def test_dict_round_trip(models, method):
    model = models["registers"]
    budget = {} if method == "none" else dict(flops=0.6, options=REDUCING[method])
    plan = build_plan(model, method, prefix_only_last=True, **budget)
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["prefix_only_last"] is True and d["macs"] == plan.macs
    again = TokenPlan.from_dict(d)
    assert again == plan and again.prefix_only_last and again.macs == plan.macs
    old = {k: v for k, v in d.items() if k != "prefix_only_last"}  # plans written before the field
    assert TokenPlan.from_dict(old) == dataclasses.replace(plan, prefix_only_last=False)


# ---------------------------------------------------------------------------------------------
# ONNX export
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout,method", [("cls", "tofu"), ("registers", "prune-merge")])
def test_export_parity_and_lint(models, layout, method, tmp_path):
    """The prefix-only graph exports with a dynamic batch, matches eager PyTorch at batch 1 and 2
    within 1e-4 and passes the TensorRT lint; the manifest carries the plan."""
    from edgeprune.artifacts.artifact import load_artifact
    from edgeprune.backends.ort import OrtRunner
    from edgeprune.backends.feeds import relative_error

    model = models[layout]
    plan = build_plan(model, method, flops=0.6, prefix_only_last=True, options=REDUCING[method])
    artifact = edgeprune.export(model, plan, tmp_path / "a", dynamic_batch=True)
    parity = artifact.manifest["parity"]
    assert set(parity["batches"]) == {"1", "2"} and parity["max"] <= 1e-4
    assert artifact.manifest["trt_lint"]["errors"] == 0
    assert load_artifact(artifact.path).plan == plan
    x = pixels_for(2, 13)
    with OrtRunner(artifact.onnx_path) as runner:
        got = runner.infer({"pixel_values": x.numpy()})["logits"]
    assert relative_error(got, run(model, plan, x).numpy()) <= 1e-4


# ---------------------------------------------------------------------------------------------
# forward_from
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["cls", "distilled", "registers"])
def test_forward_from_equals_full_forward(models, layout):
    """Starting at block ``start`` from the unreduced tokens entering it gives the full forward's
    outputs, for a start before the first reduction point and for the prefix-only last block."""
    model = models[layout]
    x = pixels_for(2, 14)
    plan = build_plan(model, "tofu", tokens=7, points=[1], prefix_only_last=True, options={"prune_until": 2})
    reduced = adapter_for(model).reduced(plan)
    with torch.no_grad():
        expected = reduced(x)
        tokens = entering(reduced, x, 1)
        independent = model.blocks[0](reduced.adapter.embed(x))  # timm's own block agrees
        torch.testing.assert_close(tokens, independent, rtol=0, atol=1e-5)
        for start in (0, 1):
            (got,) = reduced.forward_from(entering(reduced, x, start), start)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

        unreduced = adapter_for(model).reduced(build_plan(model, "none", prefix_only_last=True))
        (got,) = unreduced.forward_from(entering(unreduced, x, 2), 2)
        torch.testing.assert_close(got, model(x), rtol=0, atol=1e-5)


def test_forward_from_after_a_reduction_is_refused(models):
    model = models["cls"]
    plan = build_plan(model, "prune-merge", tokens=7, points=[0], prefix_only_last=True)
    reduced = adapter_for(model).reduced(plan)
    with pytest.raises(EdgepruneError, match="reduces before block 1"):
        reduced.forward_from(entering(reduced, pixels_for(1, 15), 1), 1)


# ---------------------------------------------------------------------------------------------
# Latency model
# ---------------------------------------------------------------------------------------------


def synthetic(spec: ViTSpec, prefix_curve=True) -> LatencyModel:
    """Hand-made curves on the grid 1, 9, 17 tokens (1 prefix + 0, 8, 16 patches)."""
    dims = {k: getattr(spec, k) for k in ("embed_dim", "num_heads", "head_dim", "mlp_hidden", "num_prefix", "num_patches")}
    return LatencyModel("tome", dims, [1, 9, 17], [1.0, 2.0, 4.0], [0.5, 1.5, 2.5], [9, 17], [0.1, 0.2],
                        prefix_attention_ms=[0.2, 0.6, 1.0] if prefix_curve else [])


def test_latency_uses_the_prefix_curve(models):
    """plan_ms of a prefix-only plan charges its last block the prefix attention at the tokens it
    receives plus the MLP for the prefix alone; the other blocks are charged as usual."""
    spec = adapter_for(models["cls"]).spec
    lm = synthetic(spec)
    plan = build_plan(spec, "tome", tokens=8, points=[0], prefix_only_last=True)
    assert plan.keep == (8, 8, 8)
    # block 0: attention(17) + one round 16 -> 8 at 17 tokens + MLP(9); block 1: attention(9) + MLP(9);
    # block 2: prefix attention(9) + MLP(1).
    assert lm.plan_ms(plan) == pytest.approx((4.0 + 0.2 + 1.5) + (2.0 + 1.5) + (0.6 + 0.5))
    assert lm.plan_ms(dataclasses.replace(plan, prefix_only_last=False)) == pytest.approx(5.7 + 3.5 + 3.5)
    none = build_plan(spec, "none", prefix_only_last=True)
    assert lm.plan_ms(none) == pytest.approx(2 * (4.0 + 2.5) + (1.0 + 0.5))
    assert lm.ratio(none) == pytest.approx(14.5 / 19.5)
    mid = build_plan(spec, "tome", tokens=12, points=[0], prefix_only_last=True)  # 13 tokens: between grid points
    assert lm.plan_ms(mid) - lm.plan_ms(dataclasses.replace(mid, prefix_only_last=False)) == pytest.approx(
        (0.8 + 0.5) - (3.0 + 2.0))
    assert LatencyModel.from_dict(json.loads(json.dumps(lm.to_dict()))).plan_ms(plan) == pytest.approx(lm.plan_ms(plan))


def test_latency_without_prefix_curve_refuses_prefix_plans(models):
    spec = adapter_for(models["cls"]).spec
    lm = synthetic(spec, prefix_curve=False)
    plan = build_plan(spec, "tome", tokens=8, points=[0], prefix_only_last=True)
    with pytest.raises(EdgepruneError, match="prefix-only"):
        lm.plan_ms(plan)
    assert lm.plan_ms(dataclasses.replace(plan, prefix_only_last=False)) == pytest.approx(12.7)
    with pytest.raises(EdgepruneError, match="malformed"):
        LatencyModel("tome", lm.dims, [1, 9, 17], [1.0, 2.0, 4.0], [0.5, 1.5, 2.5], [9, 17], [0.1, 0.2],
                     prefix_attention_ms=[0.2, 0.6])

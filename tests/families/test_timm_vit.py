import pytest
import timm
import torch

import edgeprune
from edgeprune import EdgepruneError
from tests.conftest import LAYOUTS, make_tiny


@pytest.mark.parametrize("layout", list(LAYOUTS) + ["map_pool"])
def test_unreduced_equals_timm(layout, pixels):
    model = make_tiny("cls", global_pool="map") if layout == "map_pool" else make_tiny(layout)
    x = pixels(3)
    reduced = edgeprune.reduce_model(model, edgeprune.build_plan(model, "none"))
    with torch.no_grad():
        torch.testing.assert_close(reduced(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("method", ["tome", "evit", "gsp"])
def test_reduced_is_batch_independent(layout, method, pixels):
    model = make_tiny(layout)
    plan = edgeprune.build_plan(model, method, keep=0.3, points=[0, 2])
    assert plan.spec.num_prefix == {"cls": 1, "distilled": 2, "registers": 5, "no_cls_avg": 0, "registers_no_cls": 4}[layout]
    assert plan.spec.class_token == (layout in ("cls", "distilled", "registers"))
    reduced = edgeprune.reduce_model(model, plan)
    x = pixels(3)
    with torch.no_grad():
        batch = reduced(x)
        single = reduced(x[1:2])
    torch.testing.assert_close(single[0], batch[1], rtol=1e-5, atol=1e-5)


def test_reduction_changes_output_but_not_wildly(pixels):
    model = make_tiny("cls")
    x = pixels(2)
    with torch.no_grad():
        ref = model(x)
        out = edgeprune.reduce_model(model, edgeprune.build_plan(model, "tome", keep=0.5, points=[2]))(x)
    assert not torch.allclose(out, ref)
    assert (out - ref).abs().max() < 10 * ref.abs().max()


def test_size_weighted_pool_counts_merged_tokens():
    from edgeprune.families.base import size_weighted_mean

    x = torch.tensor([[[1.0], [4.0]]])
    size = torch.tensor([[[3.0], [1.0]]])
    assert size_weighted_mean(x, size).item() == pytest.approx(7 / 4)


def test_unsupported_models_are_named():
    with pytest.raises(EdgepruneError, match="not a supported ViT family"):
        edgeprune.build_plan(timm.create_model("resnet18", pretrained=False), "tome", flops=0.5)
    from timm.models.vision_transformer import ResPostBlock

    model = make_tiny("cls", block_fn=ResPostBlock)
    with pytest.raises(EdgepruneError, match="ResPostBlock"):
        edgeprune.build_plan(model, "tome", flops=0.5)


def test_plan_for_other_model_is_rejected():
    plan = edgeprune.build_plan(make_tiny("cls"), "tome", flops=0.6)
    with pytest.raises(EdgepruneError, match="different model"):
        edgeprune.reduce_model(make_tiny("registers"), plan)

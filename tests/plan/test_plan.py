import json

import pytest

from edgeprune import EdgepruneError, TokenPlan, build_plan
from edgeprune.plan.macs import baseline_macs
from edgeprune.plan.token_plan import constant_schedule, default_points, points_schedule
from edgeprune.core.spec import ViTSpec

VIT_B = ViTSpec(depth=12, embed_dim=768, num_heads=12, mlp_hidden=3072, num_prefix=1, num_patches=196,
                patch_size=16, in_chans=3, img_size=(224, 224), head_dim_out=1000)


def test_baseline_macs_match_vit_b():
    # ViT-B/16 at 224 is ~17.6 GMACs; our matmul-only count must land there.
    assert 17.0e9 < baseline_macs(VIT_B) < 17.8e9


def test_points_schedule_geometric():
    keep = points_schedule(196, 12, [1, 4, 7], 49)
    assert keep[0] == 196 and keep[1] == keep[3] and keep[4] < keep[1] and keep[7:] == (49,) * 5
    assert default_points(12) == [1, 4, 7]
    assert constant_schedule(196, 12, 16)[-1] == 196 - 12 * 16


@pytest.mark.parametrize("method", ["tome", "evit", "gsp"])
@pytest.mark.parametrize("points", [None, [0], [2, 6]])
def test_flops_budget_is_met_tightly(method, points):
    plan = build_plan(VIT_B, method, flops=0.5, points=points)
    assert plan.macs_ratio <= 0.5
    one_more = build_plan(VIT_B, method, tokens=plan.final_tokens + 1, points=points)
    assert one_more.macs_ratio > 0.5


def test_keep_tokens_and_constant():
    assert build_plan(VIT_B, "tome", keep=0.25).final_tokens == 49
    assert build_plan(VIT_B, "evit", tokens=20, points=[3]).keep == (196,) * 3 + (20,) * 9
    plan = build_plan(VIT_B, "tome", flops=0.5, schedule="constant")
    steps = {plan.tokens_in(i) - plan.keep[i] for i in range(12)}
    assert len(steps) == 1 and plan.macs_ratio <= 0.5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(keep=1.5), "--keep"),
        (dict(tokens=0), "--tokens"),
        (dict(tokens=500), "--tokens"),
        (dict(flops=0.01), "cannot reach"),
        (dict(flops=0.5, keep=0.5), "exactly one"),
        (dict(), "exactly one"),
        (dict(flops=0.5, points=[12]), "block indices"),
        (dict(latency=0.5), "latency model"),
    ],
)
def test_bad_budgets(kwargs, match):
    with pytest.raises(EdgepruneError, match=match):
        build_plan(VIT_B, "tome", **kwargs)


def test_unknown_method_and_none():
    with pytest.raises(EdgepruneError, match="unknown method"):
        build_plan(VIT_B, "magic", flops=0.5)
    with pytest.raises(EdgepruneError, match="no budget"):
        build_plan(VIT_B, "none", flops=0.5)
    assert build_plan(VIT_B, "none").macs_ratio == 1.0


def test_roundtrip_and_validation():
    plan = build_plan(VIT_B, "gsp", flops=0.6, options={"gsp_alpha": 0.5})
    again = TokenPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    with pytest.raises(EdgepruneError, match="grows"):
        TokenPlan("tome", VIT_B, (100,) + (150,) * 11)
    with pytest.raises(EdgepruneError, match="malformed"):
        TokenPlan.from_dict({"format": 1, "method": "tome"})


def test_latency_model_hook():
    # Any monotone cost works as a latency model; the plan must respect it.
    plan = build_plan(VIT_B, "tome", latency=0.6, latency_model=lambda p: p.macs_ratio * 0.9 + 0.1)
    assert plan.macs_ratio * 0.9 + 0.1 <= 0.6


def test_constant_schedule_respects_method_minimum():
    # EViT needs 2 tokens (one kept + the fused one); an aggressive constant r must clamp there.
    plan = build_plan(VIT_B, "evit", tokens=2, schedule="constant")
    assert min(plan.keep) == 2
    with pytest.raises(EdgepruneError, match="cannot reach"):
        build_plan(VIT_B, "evit", flops=0.05, schedule="constant")


def test_target_met_by_keeping_every_token():
    # A latency model where any reduction costs more than it saves (a slow reducer on a tiny model):
    # the largest plan that meets a target of 1.0 is the unreduced one.
    slow = lambda p: 1.0 if not p.reduction_points else 4.0  # noqa: E731
    plan = build_plan(VIT_B, "tome", latency=1.0, points=[0], latency_model=slow)
    assert plan.reduction_points == [] and plan.macs_ratio == 1.0
    with pytest.raises(EdgepruneError, match="cannot reach"):
        build_plan(VIT_B, "tome", latency=0.9, points=[0], latency_model=slow)

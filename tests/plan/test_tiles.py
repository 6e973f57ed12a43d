"""Token counts on engine tiles: the rounding rule, plans, the latency search and tune's space."""

import json

import pytest

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.spec import ViTSpec
from edgeprune.plan.latency import LatencyModel, search_plan
from edgeprune.plan.tiles import ENGINE_TILES, parse_tile, round_count, round_to_tile
from edgeprune.plan.token_plan import TokenPlan, build_plan
from edgeprune.tune.space import Shape, Variant, fit, plan_for

VIT_B = ViTSpec(depth=12, embed_dim=768, num_heads=12, mlp_hidden=3072, num_prefix=1, num_patches=196,
                patch_size=16, in_chans=3, img_size=(224, 224), head_dim_out=1000)
REGS = ViTSpec(depth=6, embed_dim=64, num_heads=4, mlp_hidden=128, num_prefix=5, num_patches=144,
               patch_size=4, in_chans=3, img_size=(48, 48), head_dim_out=10)


def test_round_count_goes_to_the_nearest_tile_and_never_to_zero():
    # NOTES.md: ToMe at 0.5 MACs keeps 197/130/86/57 tokens, each just past an AMX tile
    assert [round_count(t, 32) for t in (197, 130, 86, 57)] == [192, 128, 96, 64]
    assert round_count(48, 32) == 32  # a half goes down: the cheaper side
    assert round_count(15, 32) == 15  # under half a tile: left alone rather than emptied
    assert round_count(97, 1) == 97


def test_round_to_tile_counts_prefix_tokens_and_never_grows():
    keep = (196, 129, 129, 85, 85, 56)
    rounded = round_to_tile(keep, 196, 1, 32, floor=1)
    assert [k + 1 for k in rounded] == [197, 128, 128, 96, 96, 64]  # block 0 does not reduce: untouched
    with_registers = round_to_tile((144, 100, 60, 30, 30, 30), 144, 5, 16, floor=1)
    assert [k + 5 for k in with_registers[1:]] == [112, 64, 32, 32, 32]  # 105, 65, 35 with 5 registers
    # a point that rounds up to its input stops reducing; the schedule still never grows
    assert round_to_tile((196, 190, 100), 196, 1, 32, floor=1) == (196, 191, 95)
    assert round_to_tile((196, 195, 190), 196, 1, 64, floor=1) == (196, 191, 191)


@pytest.mark.parametrize("spec", [VIT_B, REGS])
@pytest.mark.parametrize("method", ["tome", "gsp", "evit"])
@pytest.mark.parametrize("tile", [8, 16, 32])
def test_flops_plans_land_on_tiles_within_budget(spec, method, tile):
    plan = build_plan(spec, method, flops=0.5, tile=tile)
    assert plan.macs_ratio <= 0.5 + 1e-9 and plan.tile == tile
    for block in plan.reduction_points:
        total = spec.num_prefix + plan.keep[block]
        assert total % tile == 0 or total < tile / 2 or plan.keep[block] == 1, (block, total)
    # it uses the budget: no other rounded plan of the schedule is within it and costs more
    untiled = build_plan(spec, method, flops=0.5)
    assert plan.macs_ratio > untiled.macs_ratio - 0.1


def test_vit_b_tiled_plan_keeps_whole_amx_tiles():
    plan = build_plan(VIT_B, "tome", flops=0.5, tile=parse_tile("openvino-bf16"))
    assert {VIT_B.num_prefix + plan.keep[b] for b in plan.reduction_points} <= {32, 64, 96, 128, 160, 192}
    wider = build_plan(VIT_B, "tome", flops=0.52, tile=32)
    assert [wider.keep[b] + 1 for b in wider.reduction_points] == [128, 96, 64]  # NOTES' 0.517-MACs schedule
    assert 0.5 < wider.macs_ratio <= 0.52  # NOTES quotes 0.517; this MACs model counts the head too


def test_tile_is_recorded_and_round_trips():
    plan = build_plan(VIT_B, "tome", keep=0.3, tile=16)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["tile"] == 16 and TokenPlan.from_dict(data) == plan
    old = {k: v for k, v in data.items() if k != "tile"}  # plans written before tiles existed
    assert TokenPlan.from_dict(old).tile == 1


def test_tile_one_changes_nothing():
    for kwargs in (dict(flops=0.5), dict(keep=0.4), dict(flops=0.6, schedule="constant")):
        assert build_plan(VIT_B, "tome", tile=1, **kwargs).keep == build_plan(VIT_B, "tome", **kwargs).keep


def test_bad_tiles_are_one_line_errors():
    with pytest.raises(EdgepruneError, match="token count in 1..256"):
        build_plan(VIT_B, "tome", flops=0.5, tile=0)
    with pytest.raises(EdgepruneError, match="known engines: .*openvino-bf16"):
        parse_tile("openvino-int4")
    with pytest.raises(EdgepruneError, match="engine such as openvino-bf16"):
        parse_tile("fast")
    assert parse_tile("tensorrt-fp16") == ENGINE_TILES[("tensorrt", "fp16")] and parse_tile("24") == 24


def _stepped_model(spec: ViTSpec, tile: int) -> LatencyModel:
    """A latency model whose matmul cost is whole tiles, like AMX (sampled at every token count)."""
    tokens = list(range(1, spec.num_tokens + 1))
    tiles = [-(-n // tile) for n in tokens]
    dims = {k: getattr(spec, k) for k in ("embed_dim", "num_heads", "head_dim", "mlp_hidden", "num_prefix", "num_patches")}
    return LatencyModel("tome", dims, tokens, [0.3 * t + 0.2 for t in tiles], [1.0 * t + 0.1 for t in tiles],
                        tokens, [0.05 + 0.001 * n for n in tokens])


def test_latency_search_honours_the_tile_and_beats_untiled_plans_on_stepped_engines():
    model = _stepped_model(VIT_B, 32)
    tiled = search_plan(VIT_B, "tome", 0.6, model, max_points=2, tile=32)
    untiled = search_plan(VIT_B, "tome", 0.6, model, max_points=2)
    assert all((VIT_B.num_prefix + tiled.keep[b]) % 32 == 0 for b in tiled.reduction_points)
    assert model.ratio(tiled) <= 0.6 + 1e-9
    # on a stepped engine the tiled plan keeps more tokens for the same predicted latency
    assert sum(tiled.keep) >= sum(untiled.keep)


def test_tune_candidates_are_rounded_and_fit_still_bisects():
    shape = Shape(1, 3, 1.0)
    cost = lambda p: p.macs_ratio  # noqa: E731
    cand = fit(VIT_B, shape, Variant("tome"), cost, 0.55, False, None, tile=32)
    assert cand is not None and cand.cost <= 0.55 + 1e-9 and cand.plan.tile == 32
    assert all((1 + cand.plan.keep[b]) % 32 == 0 for b in cand.plan.reduction_points)
    # monotone in removed tokens: more removal never costs more once rounded
    costs = [cost(plan_for(VIT_B, shape, Variant("tome"), r, False, tile=32)) for r in range(0, 190, 7)]
    assert all(b <= a + 1e-12 for a, b in zip(costs, costs[1:]))


def test_cluster_refuses_a_tile():
    seg = ViTSpec(depth=6, embed_dim=64, num_heads=4, mlp_hidden=128, num_prefix=0, num_patches=144, patch_size=4,
                  in_chans=3, img_size=(48, 48), feature_blocks=(5,))
    with pytest.raises(EdgepruneError, match="cannot also follow an engine tile"):
        build_plan(seg, "cluster", keep=0.25, tile=16)

"""Dense (segmentation) token reduction end to end: every method runs a tiny random segmenter at
full output resolution, exports to ONNX with parity, and restores one token per patch correctly.

The restore checks use an adapter whose "head" returns the restored patch tokens of each feature
block, so what the head would see can be compared with the unreduced backbone (and, for a
reduction at the last block, recomputed by hand from the block's parts)."""

from __future__ import annotations

import pytest
import torch

import edgeprune
from edgeprune import EdgepruneError
from edgeprune.backends.ort import OrtRunner
from edgeprune.families.dense import ReducedDense
from edgeprune.exporting.onnx_export import export
from edgeprune.backends.feeds import relative_error
from edgeprune.families.timm_seg import SegmenterAdapter, create_segmenter
from edgeprune.backends.graph import load_graph, safety_problems
from edgeprune.plan.token_plan import TokenPlan
from edgeprune.plan.methods import TOKEN_METHODS as ALL_METHODS
from edgeprune.reducers import ReductionContext
from edgeprune.plan.token_counts import feasible_center_counts
from edgeprune.reducers.cluster import cluster_tokens
from tests.conftest import make_tiny

NAME = "vit_tiny_patch16_224"
CLASSES, IMG = 5, 64  # 8x8 = 64 patches
SEG_TINY = dict(img_size=IMG, patch_size=8, depth=4, embed_dim=32, num_heads=2, mlp_ratio=2.0)
LAYOUTS = {
    "cls": dict(head="multilevel"),  # feature blocks (0, 1, 3)
    "registers": dict(head="linear", reg_tokens=2),
    "no_cls": dict(head="multilevel", feature_blocks=(1, 3), class_token=False),
    "registers_no_cls": dict(head="multilevel", reg_tokens=2, class_token=False),
}
# One budget per method; cluster clusters at its one (default) point.
BUDGETS = {
    "none": {},
    "tome": dict(keep=0.5, points=[0, 2]),
    "evit": dict(keep=0.5, points=[0, 2]),
    "gsp": dict(keep=0.5, points=[0, 2]),
    "tofu": dict(keep=0.5, points=[0, 2]),
    "prune-merge": dict(keep=0.5, points=[0, 2]),
    "cluster": dict(tokens=16),
    "pass": dict(keep=0.5, points=[0, 2]),
}
assert set(BUDGETS) == set(ALL_METHODS)


def make_segmenter(layout: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_segmenter(NAME, CLASSES, **SEG_TINY, **LAYOUTS[layout])
    # Non-default BatchNorm statistics, so the head is not a near-identity.
    gen = torch.Generator().manual_seed(1)
    for buf in model.head.buffers():
        if buf.is_floating_point():
            buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def segmenters():
    cache: dict[str, torch.nn.Module] = {}

    def get(layout: str = "cls") -> torch.nn.Module:
        if layout not in cache:
            cache[layout] = make_segmenter(layout)
        return cache[layout]

    return get


def randn(seed: int, batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def plan_for(model, method: str, **overrides) -> TokenPlan:
    return edgeprune.build_plan(model, method, **{**BUDGETS[method], **overrides})


# ---------------------------------------------------------------------------------------------
# Eager: shapes, identities, batch independence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("method", list(BUDGETS))
def test_logits_at_input_resolution(segmenters, layout, method):
    model = segmenters(layout)
    plan = plan_for(model, method)
    reduced = edgeprune.reduce_model(model, plan)
    assert isinstance(reduced, ReducedDense) and not reduced.training
    if method != "none":
        assert plan.final_tokens < plan.spec.num_patches
    for batch in (1, 3):
        with torch.no_grad():
            out = reduced(randn(10 * batch + len(layout), batch))
        assert out.shape == (batch, CLASSES, IMG, IMG)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_none_and_keep_everything_equal_the_model(segmenters, layout):
    model = segmenters(layout)
    x = randn(3, 2)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(edgeprune.reduce_model(model, edgeprune.build_plan(model, "none"))(x), expected)
        for method in ("tome", "gsp", "pass"):
            plan = edgeprune.build_plan(model, method, keep=1.0)
            assert plan.reduction_points == []
            assert torch.equal(edgeprune.reduce_model(model, plan)(x), expected)


@pytest.mark.parametrize("method", [m for m in BUDGETS if m != "none"])
def test_batch_elements_independent(segmenters, method):
    model = segmenters("registers_no_cls")
    reduced = edgeprune.reduce_model(model, plan_for(model, method))
    x = randn(4, 3)
    with torch.no_grad():
        full = reduced(x)
        for b in range(3):
            torch.testing.assert_close(reduced(x[b : b + 1]), full[b : b + 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", list(BUDGETS))
def test_non_square_input_and_early_feature_blocks(method):
    """A 6x8 patch grid, and a head that only reads blocks 0 and 1 (blocks 2-3 never run)."""
    torch.manual_seed(0)
    model = create_segmenter(NAME, CLASSES, head="multilevel", feature_blocks=(0, 1),
                             **{**SEG_TINY, "img_size": (48, 64)}).eval()
    overrides = {} if method == "none" else dict(tokens=12, points=[0]) if method == "cluster" else dict(points=[0, 1])
    plan = plan_for(model, method, **overrides)
    assert plan.spec.depth == 2 and plan.spec.grid == (6, 8)
    x = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        out = edgeprune.reduce_model(model, plan)(x)
        assert out.shape == (2, CLASSES, 48, 64) and torch.isfinite(out).all()
        if method == "none":
            assert torch.equal(out, model(x))


# ---------------------------------------------------------------------------------------------
# Restore: what the head sees
# ---------------------------------------------------------------------------------------------


class FeatureAdapter(SegmenterAdapter):
    """The segmenter's adapter with the head replaced by "return the restored tokens"."""

    def head(self, patch_tokens, size):
        return torch.stack(list(patch_tokens))  # [levels, B, P, C]


def restored_features(model, plan, x) -> torch.Tensor:
    with torch.no_grad():
        return ReducedDense(FeatureAdapter(model), plan)(x)


def unreduced_features(model, x) -> torch.Tensor:
    p = model.num_prefix_tokens
    with torch.no_grad():
        return torch.stack([f[:, p:] for f in model.block_features(x)])


@pytest.mark.parametrize("layout", ["cls", "registers_no_cls"])
def test_unreduced_features_are_the_backbones(segmenters, layout):
    model = segmenters(layout)
    x = randn(5, 2)
    got = restored_features(model, edgeprune.build_plan(model, "none"), x)
    assert torch.equal(got, unreduced_features(model, x))


@pytest.mark.parametrize("method", [m for m in BUDGETS if m != "none"])
def test_levels_before_the_first_reduction_are_untouched(segmenters, method):
    """Reducing at block 2 cannot change what blocks 0 and 1 hand the head."""
    model = segmenters("cls")  # feature blocks (0, 1, 3)
    plan = edgeprune.build_plan(model, method, keep=0.25, points=[2])
    assert plan.reduction_points == [2]
    x = randn(6, 2)
    got, ref = restored_features(model, plan, x), unreduced_features(model, x)
    assert got.shape == ref.shape == (3, 2, 64, 32)
    torch.testing.assert_close(got[:2], ref[:2], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[2], ref[2], atol=1e-3)


def last_block_parts(model, x):
    """Input of the last block and its state between attention and MLP (x_in, x_attn), unreduced."""
    m = model.backbone
    with torch.no_grad():
        h = model.embed(x)
        for block in m.blocks[:-1]:
            h = block(h)
        last = m.blocks[-1]
        return h, h + last.ls1(last.attn(last.norm1(h)))


def finish_last_block(model, tokens):
    """The last block's MLP half, then the final norm, on tokens [B, n, C]."""
    last = model.backbone.blocks[-1]
    with torch.no_grad():
        return model.backbone.norm(tokens + last.ls2(last.mlp(last.norm2(tokens))))


def groups_of(rows: torch.Tensor) -> list[list[int]]:
    """Indices of identical rows, grouped, in order of first appearance."""
    groups: list[list[int]] = []
    for i in range(rows.shape[0]):
        for g in groups:
            if torch.equal(rows[g[0]], rows[i]):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


@pytest.mark.parametrize("method", ["tome", "gsp", "evit"])
def test_restore_after_a_last_block_reduction(segmenters, method):
    """Reduce at the last block only: each restored patch token must be the MLP + final norm of
    the token that stands for it: the mean of its merge group (tome), the attention-fused token
    (evit, dropped patches), or a kept neighbour (gsp); unreduced tokens where nothing happened."""
    model = segmenters("cls")
    p = model.num_prefix_tokens
    keep = 40  # tome/gsp: one round of 24 over 64 patches
    plan = edgeprune.build_plan(model, method, tokens=keep, points=[3])
    assert plan.reduction_points == [3]
    x = randn(7, 2)
    got = restored_features(model, plan, x)[-1]  # [B, P, C], deepest level
    ref = unreduced_features(model, x)[-1]
    _, x_attn = last_block_parts(model, x)
    for b in range(2):
        groups = groups_of(got[b])
        assert len(groups) == keep
        singles = [g[0] for g in groups if len(g) == 1]
        torch.testing.assert_close(got[b, singles], ref[b, singles], rtol=1e-4, atol=1e-5)
        merged = [g for g in groups if len(g) > 1]
        assert merged
        for g in merged:
            if method == "tome":  # the merged token is the plain mean of its patches
                mean = x_attn[b, p:][g].mean(0, keepdim=True)
                expected = finish_last_block(model, mean[None])[0, 0]
                torch.testing.assert_close(got[b, g[0]], expected, rtol=1e-4, atol=1e-5)
        if method == "gsp":  # every group is one kept patch whose own token the others borrow
            for g in merged:
                own = [i for i in g if torch.allclose(got[b, i], ref[b, i], rtol=1e-4, atol=1e-5)]
                assert len(own) == 1
        if method == "evit":  # one fused group holding every dropped patch
            assert len(merged) == 1 and len(merged[0]) == 64 - keep + 1


def test_restore_after_a_last_block_pass(segmenters):
    """Token pass at the last block without carry: active patches get their unreduced tokens,
    parked ones the final norm of the features they entered the block with."""
    model = segmenters("registers_no_cls")
    plan = edgeprune.build_plan(model, "pass", tokens=24, points=[3], options={"pass_carry": False})
    x = randn(8, 2)
    got = restored_features(model, plan, x)[-1]
    ref = unreduced_features(model, x)[-1]
    x_in, _ = last_block_parts(model, x)
    with torch.no_grad():
        parked_ref = model.backbone.norm(x_in[:, model.num_prefix_tokens:])
    for b in range(2):
        active = [i for i in range(64) if torch.allclose(got[b, i], ref[b, i], rtol=1e-4, atol=1e-5)]
        parked = [i for i in range(64) if torch.allclose(got[b, i], parked_ref[b, i], rtol=1e-4, atol=1e-5)]
        assert len(active) == 24 and len(parked) == 40
        assert sorted(active + parked) == list(range(64))


def test_restore_after_a_last_block_cluster(segmenters):
    """Clustering at the last block: the refined centers go back to the patches through the
    weights recorded at clustering time (residual reconstruction)."""
    model = segmenters("cls")
    p = model.num_prefix_tokens
    plan = edgeprune.build_plan(model, "cluster", tokens=16, points=[3])
    x = randn(9, 2)
    got = restored_features(model, plan, x)[-1]
    _, x_attn = last_block_parts(model, x)
    ctx = ReductionContext(torch.zeros(1), torch.zeros(1), 1.0, p, options=plan.options)
    out, _, clustering = cluster_tokens(x_attn, torch.ones_like(x_attn[..., :1]), ctx, 16, (8, 8))
    last = model.backbone.blocks[-1]
    with torch.no_grad():
        centers = out[:, p:] + last.ls2(last.mlp(last.norm2(out[:, p:])))
        expected = model.backbone.norm(clustering.restore(centers))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_dense_state_two_passes_restore_every_patch():
    """DenseState bookkeeping over two token passes (prefix 1, 12 patches -> 8 -> 5), against a
    per-patch account: active patches get the final tokens; a parked patch gets its features at
    its stop plus what its anchor gained since (the anchor's final token, or, for an anchor that
    was itself parked later, its features at that later stop)."""
    from edgeprune.families.dense import DenseState
    from edgeprune.reducers.token_pass import pass_tokens

    gen = torch.Generator().manual_seed(12)
    bsz, n, c = 2, 12, 8

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    def ctx(tokens):
        k = rnd(bsz, 2, tokens, c // 2)
        return ReductionContext(k, k, 0.5, 1)

    x0 = rnd(bsz, 1 + n, c)
    state = DenseState(x0, 1)
    x1, _, parked1, where1, anchors1, then1 = pass_tokens(
        x0 + rnd(bsz, 1 + n, c), x0, torch.ones(bsz, 1 + n, 1), ctx(1 + n), 8)
    state.moved(where1, n)
    state.park(parked1, anchors1, then1)
    x2_in = x1 + rnd(*x1.shape)  # the rest of the block and the next blocks
    x2, _, parked2, where2, anchors2, then2 = pass_tokens(
        x2_in + rnd(*x1.shape), x2_in, torch.ones(bsz, 9, 1), ctx(9), 5)
    state.moved(where2, 8)
    state.park(parked2, anchors2, then2)
    final = x2 + rnd(*x2.shape)
    got = state.restore(final)
    assert got.shape == (bsz, n, c)

    for b in range(bsz):
        def raw(slot1):  # the stale value of the token in pass-1 active slot ``slot1``
            t = int(where2[b, slot1])
            return final[b, 1 + t] if t < 5 else x2_in[b, 1 + slot1]

        def carried(slot1):
            t = int(where2[b, slot1])
            if t < 5:
                return final[b, 1 + t]
            j = t - 5
            return x2_in[b, 1 + slot1] + final[b, 1 + int(anchors2[b, j])] - then2[b, j]

        for patch in range(n):
            s1 = int(where1[b, patch])
            if s1 < 8:
                expected = carried(s1)
            else:
                j = s1 - 8
                anchor = int(anchors1[b, j])
                expected = x0[b, 1 + patch] + raw(anchor) - then1[b, j]
            torch.testing.assert_close(got[b, patch], expected)


def test_dense_state_composes_merges():
    from edgeprune.families.dense import DenseState
    from edgeprune.reducers.common import compose, gather_tokens

    x = torch.randn(2, 1 + 6, 4)
    state = DenseState(x, 1)
    assert torch.equal(state.restore(x), x[:, 1:])  # nothing moved yet: identity
    step1 = torch.tensor([[0, 1, 1, 2, 3, 3], [3, 2, 1, 0, 0, 1]])
    step2 = torch.tensor([[0, 0, 1, 1], [1, 0, 0, 1]])
    state.moved(step1, 6)
    state.moved(step2, 4)
    final = torch.randn(2, 1 + 2, 4)
    assert torch.equal(state.restore(final), gather_tokens(final[:, 1:], compose(step1, step2)))


# ---------------------------------------------------------------------------------------------
# ONNX export
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(BUDGETS))
def test_export_parity_and_safety(segmenters, method, tmp_path_factory):
    model = segmenters("cls")
    plan = plan_for(model, method)
    out_dir = tmp_path_factory.mktemp("dense") / method
    artifact = export(model, plan, out_dir, dynamic_batch=True)  # raises ParityError on a mismatch
    m = artifact.manifest
    assert m["method"] == method
    assert set(m["parity"]["batches"]) == {"1", "2"} and m["parity"]["max"] <= 1e-4
    assert m["outputs"][0]["name"] == "logits" and m["outputs"][0]["shape"][1:] == [CLASSES, IMG, IMG]
    graph = load_graph(artifact.onnx_path)
    assert safety_problems(graph) == []
    assert not {"ScatterElements", "ScatterND", "Scatter"} & {n.op_type for n in graph.graph.node}
    # One more batch size, on an input of our own.
    x = randn(11, 3)
    with torch.no_grad():
        expected = edgeprune.reduce_model(model, plan)(x).numpy()
    with OrtRunner(artifact.onnx_path) as runner:
        got = runner.infer({"pixel_values": x.numpy()})["logits"]
    assert got.shape == (3, CLASSES, IMG, IMG)
    assert relative_error(got, expected) <= 1e-4


# ---------------------------------------------------------------------------------------------
# Plans for dense methods
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens,snapped", [(7, 4), (15, 12), (16, 16), (17, 16), (3, 1), (63, 56)])
def test_cluster_snaps_to_a_grid_count(segmenters, tokens, snapped):
    model = segmenters("cls")
    counts = feasible_center_counts((8, 8))
    plan = edgeprune.build_plan(model, "cluster", tokens=tokens)
    assert len(plan.reduction_points) == 1
    k = plan.keep[plan.reduction_points[0]]
    assert k == snapped == max(c for c in counts if c <= tokens)
    assert plan.final_tokens == k


def test_cluster_flops_budget_gives_a_grid_count(segmenters):
    model = segmenters("cls")
    plan = edgeprune.build_plan(model, "cluster", flops=0.85)
    assert plan.macs_ratio <= 0.85 + 1e-9
    assert plan.final_tokens in feasible_center_counts((8, 8))


def test_cluster_plan_errors(segmenters):
    model = segmenters("cls")
    with pytest.raises(EdgepruneError, match="exactly one block"):
        edgeprune.build_plan(model, "cluster", tokens=16, points=[1, 2])
    with pytest.raises(EdgepruneError, match="exactly one block"):
        edgeprune.build_plan(model, "cluster", tokens=16, schedule="constant")
    spec = edgeprune.build_plan(model, "none").spec
    with pytest.raises(EdgepruneError, match="choose a count such as"):
        TokenPlan("cluster", spec, (64, 7, 7, 7))
    with pytest.raises(EdgepruneError, match="clusters once"):
        TokenPlan("cluster", spec, (64, 16, 4, 4))


@pytest.mark.parametrize("method", ["cluster", "pass"])
def test_dense_methods_refuse_classifiers(method):
    classifier = make_tiny("cls")
    with pytest.raises(EdgepruneError, match="segmentation models"):
        edgeprune.build_plan(classifier, method, keep=0.5)


def test_plan_from_another_model_is_refused(segmenters):
    plan = plan_for(segmenters("cls"), "tome")
    with pytest.raises(EdgepruneError, match="different model configuration"):
        edgeprune.reduce_model(segmenters("registers"), plan)

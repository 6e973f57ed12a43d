"""Importance-ranked prune-then-merge.

The spec is a per-sample loop written from the method's description: rank patch tokens by the
attention of the CLS query (mean over heads; the mean patch query without a CLS token), keep the
top ``keep`` in token order, drop the least important ``round(R * prune_share)`` of the ``R``
removed tokens and merge the others into their most similar kept token (cosine of the head-averaged
keys), size-weighted, rescaled to the largest merged norm unless ``merge_mode`` is ``mean``. Every
removed token's ``where`` is that most similar kept token. Inputs are float64.
"""

from __future__ import annotations


import pytest
import torch

from edgeprune.reducers import ReductionContext, prune_merge
from edgeprune.plan.token_counts import split_removed

from tests.reducers.inputs import BATCH, DIM, HEADS, random_inputs, seed_of  # noqa: E402
SCALE = (DIM // HEADS) ** -0.5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(seed, prefix, n_tok, sizes="random", batch=BATCH, class_token=None, options=None, bias=False):
    x, size, q, k = random_inputs(seed, prefix, n_tok, sizes, batch)
    attn_bias = size.log().transpose(1, 2).unsqueeze(1) if bias else None
    ctx = ReductionContext(q, k, SCALE, prefix, attn_bias, dict(options or {}),
                           class_token=prefix > 0 if class_token is None else class_token)
    return x, size, ctx


def importance_by_hand(ctx, b):
    """Attention paid to every patch token by the CLS query (or the mean patch query), one sample."""
    p = ctx.num_prefix
    q, k = ctx.q[b], ctx.k[b]  # [H, N, D]
    query = q[:, :1] if ctx.class_token and p > 0 else q[:, p:].mean(dim=1, keepdim=True)
    logits = (query * ctx.scale) @ k.transpose(-1, -2)  # [H, 1, N]
    if ctx.attn_bias is not None:
        logits = logits + ctx.attn_bias[b]
    return logits.softmax(dim=-1).mean(dim=0)[0, p:]


def reference(x, size, ctx, keep, prune_share, merge_mode):
    """Per-sample loop: returns (x, size, where, [(kept, merged, pruned) token lists per sample])."""
    p = ctx.num_prefix
    xs, sizes, wheres, parts = [], [], [], []
    for b in range(x.shape[0]):
        tok, s = x[b, p:], size[b, p:]
        n = tok.shape[0]
        att = importance_by_hand(ctx, b)
        ranked = sorted(range(n), key=lambda i: -float(att[i]))
        kept, removed = sorted(ranked[:keep]), ranked[keep:]
        n_pruned = round(len(removed) * prune_share)
        merged, pruned = removed[: len(removed) - n_pruned], removed[len(removed) - n_pruned :]
        metric = ctx.k[b].mean(dim=0)[p:]
        unit = metric / metric.norm(dim=-1, keepdim=True)
        dst = {i: max(range(keep), key=lambda j: float(unit[i] @ unit[kept[j]])) for i in removed}
        out_x, out_s = [], []
        for j, t in enumerate(kept):
            group = [t] + [i for i in merged if dst[i] == j]
            total = sum(s[i] for i in group)
            feat = sum(tok[i] * s[i] for i in group) / total
            if merge_mode == "mlerp":
                feat = feat * (max(float(tok[i].norm()) for i in group) / feat.norm())
            out_x.append(feat)
            out_s.append(total)
        xs.append(torch.cat([x[b, :p], torch.stack(out_x)]))
        sizes.append(torch.cat([size[b, :p], torch.stack(out_s)]))
        wheres.append(torch.tensor([kept.index(i) if i in kept else dst[i] for i in range(n)]))
        parts.append((kept, merged, pruned))
    return torch.stack(xs), torch.stack(sizes), torch.stack(wheres), parts


LAYOUTS = [(0, False), (1, True), (5, True), (4, False)]  # (num_prefix, class_token); (4, False): registers only
CASES = [(16, 6), (17, 9), (12, 1), (16, 15)]


@pytest.mark.parametrize("merge_mode", ["mean", "mlerp"])
@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prefix,cls", LAYOUTS)
@pytest.mark.parametrize("n_tok,keep", CASES)
def test_matches_reference(merge_mode, share, prefix, cls, n_tok, keep):
    """Tokens, sizes and ``where`` equal the per-sample loop for every layout, share and mode (random
    sizes, so the size weighting and the size bookkeeping are both exercised)."""
    x, size, ctx = make(seed_of(merge_mode, share, prefix, n_tok, keep), prefix, n_tok, class_token=cls,
                        options={"prune_share": share, "merge_mode": merge_mode})
    out, out_size, where = prune_merge(x, size, ctx, keep)
    ref_x, ref_s, ref_w, _ = reference(x, size, ctx, keep, share, merge_mode)
    assert out.shape == (BATCH, prefix + keep, DIM)
    torch.testing.assert_close(out, ref_x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_size, ref_s, rtol=0, atol=0)
    assert where.dtype == torch.int64 and torch.equal(where, ref_w)
    assert torch.equal(out[:, :prefix], x[:, :prefix])  # protected tokens untouched


def test_defaults_are_half_pruned_and_mlerp():
    x, size, ctx = make(seed_of("defaults"), 1, 16)
    out, out_size, where = prune_merge(x, size, ctx, 6)
    ref_x, ref_s, ref_w, _ = reference(x, size, ctx, 6, 0.5, "mlerp")
    torch.testing.assert_close(out, ref_x, rtol=1e-10, atol=1e-10)
    assert torch.equal(out_size, ref_s) and torch.equal(where, ref_w)


@pytest.mark.parametrize("share,merged,pruned", [(0.0, 10, 0), (0.5, 5, 5), (1.0, 0, 10), (0.3, 7, 3)])
def test_prune_share_counts(share, merged, pruned):
    """16 patches down to 6 remove 10: exactly ``round(10 * share)`` are dropped and the rest merged.
    Each patch carries its own basis vector, so the output shows which patches it holds: the dropped
    ones appear nowhere, are all less important than every merged one, and their sizes leave."""
    assert split_removed(10, share) == (merged, pruned)
    _, size, ctx = make(seed_of("counts", share), 1, 16, sizes="ones", options={"prune_share": share, "merge_mode": "mean"})
    x = torch.zeros(BATCH, 17, 17, dtype=torch.float64)
    x[:, 1:, 1:] = torch.eye(16, dtype=torch.float64)
    x[:, 0, 0] = 1.0
    out, out_size, _ = prune_merge(x, size, ctx, 6)
    assert torch.equal(out_size[:, 1:].sum(dim=(1, 2)), torch.full((BATCH,), 6.0 + merged, dtype=torch.float64))
    for b in range(BATCH):
        att = importance_by_hand(ctx, b)
        kept = torch.topk(att, 6).indices.sort().values.tolist()
        present = (out[b, 1:, 1:] != 0).any(dim=0)  # patches some output token holds
        held = present.nonzero()[:, 0].tolist()
        merged_tok = [i for i in held if i not in kept]
        dropped = [i for i in range(16) if i not in held]
        assert set(kept) <= set(held)
        assert (len(merged_tok), len(dropped)) == (merged, pruned)
        if merged and pruned:
            assert float(att[merged_tok].min()) > float(att[dropped].max())
        if pruned == 10:  # nothing merged: the output is exactly the kept tokens
            assert torch.equal(out[b, 1:], x[b, 1:][kept])


def test_split_removed_rounding_and_range():
    assert split_removed(5, 0.5) == (5 - round(2.5), round(2.5))
    assert split_removed(0, 0.5) == (0, 0)
    assert split_removed(7, 1.0) == (0, 7)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="prune_share"):
            split_removed(4, bad)


@pytest.mark.parametrize("prefix,cls", LAYOUTS)
def test_kept_are_top_keep_by_importance_in_token_order(prefix, cls):
    """With share 1 (pure pruning) the output patch tokens are exactly the ``keep`` most attended
    input tokens, in their original order, and each kept token's ``where`` is its own position."""
    x, size, ctx = make(seed_of("top", prefix), prefix, 20, class_token=cls, options={"prune_share": 1.0})
    x[:, prefix:, 0] = torch.arange(20, dtype=torch.float64)  # a marker: which patch a token is
    keep = 7
    out, out_size, where = prune_merge(x, size, ctx, keep)
    for b in range(BATCH):
        top = torch.topk(importance_by_hand(ctx, b), keep).indices.sort().values
        assert out[b, prefix:, 0].tolist() == top.tolist()
        assert torch.equal(out[b, prefix:], x[b, prefix:][top])
        assert where[b, top].tolist() == list(range(keep))
        assert torch.equal(out_size[b, prefix:], size[b, prefix:][top])


@pytest.mark.parametrize("prefix,cls", LAYOUTS)
def test_size_sum_is_kept_plus_merged(prefix, cls):
    """Random sizes: the output patch sizes sum to the kept tokens' sizes plus the merged ones';
    dropped tokens' sizes leave. The prefix sizes pass through."""
    x, size, ctx = make(seed_of("sizes", prefix), prefix, 18, class_token=cls, options={"prune_share": 0.5})
    out, out_size, _ = prune_merge(x, size, ctx, 5)
    _, _, _, parts = reference(x, size, ctx, 5, 0.5, "mlerp")
    for b, (kept, merged, pruned) in enumerate(parts):
        s = size[b, prefix:, 0]
        assert float(out_size[b, prefix:].sum()) == float(s[kept].sum() + s[merged].sum())
        assert float(out_size[b, prefix:].sum()) == float(s.sum() - s[pruned].sum())
    assert torch.equal(out_size[:, :prefix], size[:, :prefix])


def test_mean_vs_mlerp():
    """Both modes merge the same tokens the same way; MLERP only rescales: same direction, norm no
    smaller than the mean's (a mean is never longer than its longest member), and kept tokens that
    took nothing are identical in both."""
    x, size, ctx = make(seed_of("modes"), 1, 16)
    outs = {}
    for mode in ("mean", "mlerp"):
        opts = {"merge_mode": mode, "prune_share": 0.0}
        outs[mode] = prune_merge(x, size, ReductionContext(ctx.q, ctx.k, SCALE, 1, options=opts), 10)
    (mean, mean_size, mean_where), (mlerp, mlerp_size, mlerp_where) = outs["mean"], outs["mlerp"]
    assert torch.equal(mean_size, mlerp_size) and torch.equal(mean_where, mlerp_where)
    cos = torch.nn.functional.cosine_similarity(mean[:, 1:], mlerp[:, 1:], dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))
    assert (mlerp[:, 1:].norm(dim=-1) >= mean[:, 1:].norm(dim=-1) - 1e-12).all()
    assert (mlerp[:, 1:].norm(dim=-1) > mean[:, 1:].norm(dim=-1) + 1e-6).any()  # the modes do differ
    # Kept tokens nothing was merged into (share 0: every removed token is merged somewhere).
    untouched = torch.stack([torch.bincount(w, minlength=10) for w in mean_where]) == 1
    assert untouched.any()
    torch.testing.assert_close(mean[:, 1:][untouched], mlerp[:, 1:][untouched], rtol=1e-12, atol=1e-12)
    for b, j in untouched.nonzero().tolist():
        (i,) = (mean_where[b] == j).nonzero()[:, 0].tolist()
        torch.testing.assert_close(mean[b, 1 + j], x[b, 1 + i], rtol=1e-12, atol=1e-12)


def test_query_without_cls_is_mean_patch_query():
    """Registers without a CLS token (and no prefix at all) rank by the mean patch query: the kept
    set is the top of that attention row, and here differs from the set token 0's query would pick."""
    x, size, ctx = make(seed_of("no-cls"), 4, 16, class_token=False, options={"prune_share": 1.0})
    ctx.q[:, :, 0] = 10 * ctx.k[:, :, 4 + 3]  # a register query that would single out patch 3
    out, _, where = prune_merge(x, size, ctx, 4)
    mean_query = ((ctx.q[:, :, 4:].mean(2, keepdim=True) * SCALE) @ ctx.k.transpose(-1, -2)).softmax(-1).mean(1)[:, 0, 4:]
    first_query = ((ctx.q[:, :, :1] * SCALE) @ ctx.k.transpose(-1, -2)).softmax(-1).mean(1)[:, 0, 4:]
    differs = False
    for b in range(BATCH):
        top = torch.topk(mean_query[b], 4).indices.sort().values
        assert torch.equal(out[b, 4:], x[b, 4:][top])
        differs |= set(top.tolist()) != set(torch.topk(first_query[b], 4).indices.tolist())
    assert differs
    # No prefix at all: the same rule.
    x0, size0, ctx0 = make(seed_of("no-prefix"), 0, 16, options={"prune_share": 1.0})
    out0, _, _ = prune_merge(x0, size0, ctx0, 4)
    row = ((ctx0.q.mean(2, keepdim=True) * SCALE) @ ctx0.k.transpose(-1, -2)).softmax(-1).mean(1)[:, 0]
    for b in range(BATCH):
        assert torch.equal(out0[b], x0[b][torch.topk(row[b], 4).indices.sort().values])


def test_proportional_attention_bias_enters_the_ranking():
    """With an attention bias (log sizes) the ranking includes it, as the reference does."""
    x, size, ctx = make(seed_of("bias"), 1, 16, bias=True, options={"prune_share": 0.5})
    out, out_size, where = prune_merge(x, size, ctx, 6)
    ref_x, ref_s, ref_w, _ = reference(x, size, ctx, 6, 0.5, "mlerp")
    torch.testing.assert_close(out, ref_x, rtol=1e-10, atol=1e-10)
    assert torch.equal(where, ref_w)
    unbiased = ReductionContext(ctx.q, ctx.k, SCALE, 1, None, ctx.options)
    assert not torch.equal(prune_merge(x, size, unbiased, 6)[2], where)


@pytest.mark.parametrize("prefix,cls", LAYOUTS)
def test_batch_elements_independent(prefix, cls):
    x, size, ctx = make(seed_of("batch", prefix), prefix, 19, class_token=cls)
    out, out_size, where = prune_merge(x, size, ctx, 6)
    for b in range(BATCH):
        one = ReductionContext(ctx.q[b : b + 1], ctx.k[b : b + 1], SCALE, prefix, None, ctx.options, cls)
        s_out, s_size, s_where = prune_merge(x[b : b + 1], size[b : b + 1], one, 6)
        torch.testing.assert_close(s_out[0], out[b], rtol=1e-12, atol=1e-12)
        assert torch.equal(s_size[0], out_size[b]) and torch.equal(s_where[0], where[b])


def test_keep_all_is_identity_and_keep_zero_is_refused():
    x, size, ctx = make(seed_of("noop"), 1, 16)
    for keep in (16, 20):
        out, out_size, where = prune_merge(x, size, ctx, keep)
        assert out is x and out_size is size
        assert torch.equal(where, torch.arange(16).expand(BATCH, -1))
    with pytest.raises(ValueError, match="at least one"):
        prune_merge(x, size, ctx, 0)


def test_plan_macs_and_latency_of_prune_merge():
    """Plan defaults (proportional attention, validated options), the reducer's MAC count by hand,
    and the latency model charging one reducer call per point whatever the step."""
    from edgeprune import EdgepruneError, build_plan
    from edgeprune.plan.macs import reducer_macs
    from edgeprune.plan.latency import LatencyModel
    from tests.plan.test_plan import VIT_B

    plan = build_plan(VIT_B, "prune-merge", flops=0.5, options={"prune_share": 0.25, "merge_mode": "mean"})
    assert plan.prop_attn and plan.options == {"prune_share": 0.25, "merge_mode": "mean"} and plan.macs_ratio <= 0.5
    with pytest.raises(EdgepruneError, match="merge_mode"):
        build_plan(VIT_B, "prune-merge", flops=0.5, options={"merge_mode": "median"})
    # CLS row: 12 heads x 196 tokens x 64; similarity 96 x 100 x 64; merge matmul for the 48 merged
    # of the 96 removed (prune_share 0.5 by default) x 100 x 768.
    assert reducer_macs(VIT_B, "prune-merge", 196, 100) == 12 * 196 * 64 + 96 * 100 * 64 + 48 * 100 * 768
    assert reducer_macs(VIT_B, "prune-merge", 196, 100, {"prune_share": 1.0}) == 12 * 196 * 64 + 96 * 100 * 64
    assert reducer_macs(VIT_B, "prune-merge", 196, 196) == 0

    dims = dict(embed_dim=64, num_heads=2, head_dim=32, mlp_hidden=256, num_prefix=1, num_patches=64)
    lm = LatencyModel("prune-merge", dims, [9, 65], [1.0, 2.0], [1.0, 2.0], [17, 65], [0.1, 0.3])
    assert lm.reduction_ms(65, 9) == pytest.approx(0.3)  # one call, although ToMe would need three rounds
    assert lm.reduction_ms(65, 33) == pytest.approx(0.3) and lm.reduction_ms(33, 33) == 0.0


def test_merge_mode_reaches_the_reducer_in_a_model():
    """A plan's options travel through ReducedViT's context: mean and mlerp plans differ end to end."""
    import edgeprune
    from tests.conftest import make_tiny

    model = make_tiny("cls")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    outs = {}
    for mode in ("mean", "mlerp"):
        plan = edgeprune.build_plan(model, "prune-merge", tokens=5, points=[0], options={"merge_mode": mode, "prune_share": 0.0})
        with torch.no_grad():
            outs[mode] = edgeprune.reduce_model(model, plan)(pixels)
    assert not torch.allclose(outs["mean"], outs["mlerp"])


def test_plan_refuses_prune_share_outside_unit_interval():
    """A prune_share outside [0, 1] is a bad option value: build_plan should refuse it up front (as it
    does an unknown merge_mode), not hand back a plan whose model raises on its first forward."""
    from edgeprune import EdgepruneError, build_plan
    from tests.plan.test_plan import VIT_B

    with pytest.raises(EdgepruneError, match="prune_share"):
        build_plan(VIT_B, "prune-merge", flops=0.5, options={"prune_share": 1.5})

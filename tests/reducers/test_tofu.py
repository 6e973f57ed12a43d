"""ToFu and the bipartite round's three combine modes (``mean``, ``mlerp``, ``prune``).

The spec is a plain per-sample loop written from the description of the method (alternating A/B
sets, each A token proposes its most similar B token, the ``r`` best proposals are taken; ``mean``
averages by size, ``mlerp`` rescales that average to the largest norm among the merged tokens, B
included, ``prune`` keeps B's features and moves A's size over). Inputs are float64 so "unchanged"
can be tested with exact equality.
"""

from __future__ import annotations


import pytest
import torch

from edgeprune.reducers import ReductionContext, tofu_reduce
from edgeprune.plan.token_counts import round_sizes
from edgeprune.reducers.tome import COMBINES, bipartite_merge_round, bipartite_reduce, rescale_to_largest_norm

from tests.reducers.inputs import BATCH, DIM, HEADS, random_inputs, seed_of  # noqa: E402
PREFIXES = [0, 1, 5]
ROUND_CASES = [(16, 3), (16, 8), (17, 9), (17, 1), (9, 4)]  # (patch tokens, r) for one round
REDUCE_CASES = [(16, 12), (16, 8), (17, 5), (24, 3)]  # (patch tokens, keep): one round and several


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_inputs(seed, prefix, n_tok, sizes="random", batch=BATCH):
    return random_inputs(seed, prefix, n_tok, sizes, batch)


def context(q, k, prefix, block=0, options=None):
    return ReductionContext(q, k, (DIM // HEADS) ** -0.5, prefix, options=dict(options or {}), block=block)


def reference_round(x, size, metric, r, p, combine):
    """One bipartite round, one sample at a time, written from the method's description."""
    xs, sizes, metrics, wheres = [], [], [], []
    for b in range(x.shape[0]):
        tok, s, m = x[b, p:], size[b, p:], metric[b, p:]
        n = tok.shape[0]
        a_idx, b_idx = list(range(0, n, 2)), list(range(1, n, 2))
        unit = m / m.norm(dim=-1, keepdim=True)
        best, partner = [], []
        for i in a_idx:
            sims = [float(unit[i] @ unit[j]) for j in b_idx]
            j = max(range(len(b_idx)), key=lambda c: sims[c])
            best.append(sims[j])
            partner.append(j)
        ranked = sorted(range(len(a_idx)), key=lambda i: -best[i])
        merged_a = set(ranked[:r])
        unmerged_a = [i for i in range(len(a_idx)) if i not in merged_a]  # token order
        members = {j: [b_idx[j]] for j in range(len(b_idx))}  # B slot -> input tokens it holds
        for i in merged_a:
            members[partner[i]].append(a_idx[i])

        out_x = [tok[a_idx[i]] for i in unmerged_a]
        out_s = [s[a_idx[i]] for i in unmerged_a]
        out_m = [m[a_idx[i]] for i in unmerged_a]
        for j in range(len(b_idx)):
            group = members[j]
            total = sum(s[t] for t in group)
            out_s.append(total)
            if combine == "prune":
                out_x.append(tok[b_idx[j]])
                out_m.append(m[b_idx[j]])
                continue
            feat = sum(tok[t] * s[t] for t in group) / total
            out_m.append(sum(m[t] * s[t] for t in group) / total)
            if combine == "mlerp":
                feat = feat * (max(float(tok[t].norm()) for t in group) / feat.norm())
            out_x.append(feat)

        where = []
        for t in range(n):
            if t % 2:  # B token: every one survives, after the unmerged A tokens
                where.append(len(unmerged_a) + t // 2)
            elif t // 2 in merged_a:
                where.append(len(unmerged_a) + partner[t // 2])
            else:
                where.append(unmerged_a.index(t // 2))
        xs.append(torch.cat([x[b, :p], torch.stack(out_x)]))
        sizes.append(torch.cat([size[b, :p], torch.stack(out_s)]))
        metrics.append(torch.cat([metric[b, :p], torch.stack(out_m)]))
        wheres.append(torch.tensor(where))
    return torch.stack(xs), torch.stack(sizes), torch.stack(metrics), torch.stack(wheres)


def members_of(where, n_out):
    """[N] where map -> for each output patch token, the input patch tokens it stands for."""
    groups = [[] for _ in range(n_out)]
    for i, o in enumerate(where.tolist()):
        groups[o].append(i)
    return groups


# ---------------------------------------------------------------------------------------------
# One round against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("n_tok,r", ROUND_CASES)
def test_round_matches_reference(combine, prefix, n_tok, r):
    """Features, sizes, the carried metric and ``where`` of one round equal the per-sample loop in
    every combine mode, for odd and even token counts and r up to the whole of set A."""
    x, size, q, k = make_inputs(seed_of("round", combine, prefix, n_tok, r), prefix, n_tok)
    metric = k.mean(dim=1)
    got_x, got_s, got_m, got_w = bipartite_merge_round(x, size, metric, r, prefix, combine)
    ref_x, ref_s, ref_m, ref_w = reference_round(x, size, metric, r, prefix, combine)
    assert got_x.shape == (BATCH, prefix + n_tok - r, DIM)
    torch.testing.assert_close(got_x, ref_x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_s, ref_s, rtol=0, atol=0)
    torch.testing.assert_close(got_m, ref_m, rtol=1e-10, atol=1e-10)
    assert got_w.dtype == torch.int64
    assert torch.equal(got_w, ref_w)


def test_mlerp_by_hand():
    """Two tokens, A = (3, 0) and B = (0, 1), unit sizes: the mean (1.5, 0.5) is rescaled to norm 3
    (the larger of 3 and 1); ``mean`` leaves it at norm sqrt(2.5) and ``prune`` keeps B."""
    x = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    size = torch.ones(1, 2, 1, dtype=torch.float64)
    mean = torch.tensor([1.5, 0.5], dtype=torch.float64)
    out = {c: bipartite_merge_round(x, size, x, 1, 0, c) for c in COMBINES}
    torch.testing.assert_close(out["mean"][0][0, 0], mean)
    torch.testing.assert_close(out["mlerp"][0][0, 0], mean * 3 / mean.norm())
    assert torch.equal(out["prune"][0][0, 0], x[0, 1])
    for c in COMBINES:
        assert out[c][0].shape == (1, 1, 2) and out[c][1].item() == 2.0
        assert out[c][3].tolist() == [[0, 0]]


def test_rescale_to_largest_norm_counts_b_itself():
    """A B token that takes no source keeps its own norm; one that takes a smaller source keeps the
    larger B norm; one that takes a larger source gets the source's norm."""
    x_tok = torch.tensor([[[1.0, 0.0], [0.0, 5.0], [0.0, 9.0], [2.0, 0.0]]], dtype=torch.float64)  # A0, B0, A1, B1
    merged_b = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    src_idx = torch.tensor([[0, 1]])  # A0 -> B0, A1 -> B1
    assign_t = torch.eye(2, dtype=torch.float64).unsqueeze(0)  # [B, Nb, r]
    out = rescale_to_largest_norm(merged_b, x_tok, src_idx, assign_t)
    torch.testing.assert_close(out.norm(dim=-1), torch.tensor([[5.0, 9.0]], dtype=torch.float64))
    none_assigned = rescale_to_largest_norm(merged_b, x_tok, src_idx, torch.zeros(1, 2, 2, dtype=torch.float64))
    torch.testing.assert_close(none_assigned.norm(dim=-1), torch.tensor([[5.0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(out / out.norm(dim=-1, keepdim=True), merged_b / merged_b.norm(dim=-1, keepdim=True))


def test_unknown_combine_is_refused():
    x = torch.randn(1, 9, 4)
    with pytest.raises(ValueError, match="combine"):
        bipartite_merge_round(x, torch.ones(1, 9, 1), x, 2, 1, "median")


# ---------------------------------------------------------------------------------------------
# Properties over several rounds
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("n_tok,keep", REDUCE_CASES)
def test_mlerp_norm_is_largest_merged_norm(prefix, n_tok, keep):
    """After any number of MLERP rounds each output token's norm is the largest norm among the
    patches it stands for (by induction over rounds), and it points the way the ToMe mean does."""
    x, size, q, k = make_inputs(seed_of("mlerp", prefix, n_tok, keep), prefix, n_tok, sizes="ones")
    ctx = context(q, k, prefix)
    out, _, where = bipartite_reduce(x, size, ctx, keep, "mlerp")
    mean, _, mean_where = bipartite_reduce(x, size, ctx, keep, "mean")
    assert torch.equal(where, mean_where)  # the matching does not depend on how B tokens combine
    norms = x[:, prefix:].norm(dim=-1)
    for b in range(BATCH):
        for o, group in enumerate(members_of(where[b], keep)):
            assert group, "every output token stands for at least one patch"
            torch.testing.assert_close(out[b, prefix + o].norm(), norms[b, group].max())
    if len(round_sizes(n_tok, keep)) == 1:  # one round: MLERP is the mean, rescaled
        cos = torch.nn.functional.cosine_similarity(out[:, prefix:], mean[:, prefix:], dim=-1)
        torch.testing.assert_close(cos, torch.ones_like(cos))


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("n_tok,keep", REDUCE_CASES)
def test_prune_keeps_b_features_and_moves_sizes(prefix, n_tok, keep):
    """Prune mode over any number of rounds: every output token is one of the input tokens
    bit for bit, the survivor its ``where`` names; sizes are the sums over the patches mapped to
    each output token, so the total is conserved."""
    x, size, q, k = make_inputs(seed_of("prune", prefix, n_tok, keep), prefix, n_tok)
    out, out_size, where = bipartite_reduce(x, size, context(q, k, prefix), keep, "prune")
    assert out.shape == (BATCH, prefix + keep, DIM)
    tok = x[:, prefix:]
    torch.testing.assert_close(out_size.sum(dim=1), size.sum(dim=1), rtol=0, atol=0)
    for b in range(BATCH):
        survivors = []
        for o, group in enumerate(members_of(where[b], keep)):
            hits = [i for i in group if torch.equal(out[b, prefix + o], tok[b, i])]
            assert len(hits) == 1, "a pruned output token must be exactly one of the patches it stands for"
            survivors.append(hits[0])
            assert out_size[b, prefix + o, 0] == size[b, prefix:][group].sum()
        assert len(set(survivors)) == keep


@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("n_tok,keep", REDUCE_CASES)
def test_where_valid_and_sizes_follow_it(combine, prefix, n_tok, keep):
    """``where`` is an int64 [B, N] map into the ``keep`` output tokens that covers each of them; the
    output sizes are the sizes of the patches mapped there; the protected prefix is untouched; in
    ``mean`` mode an output token is the size-weighted mean of its patches."""
    x, size, q, k = make_inputs(seed_of("where", combine, prefix, n_tok, keep), prefix, n_tok)
    out, out_size, where = bipartite_reduce(x, size, context(q, k, prefix), keep, combine)
    assert where.shape == (BATCH, n_tok) and where.dtype == torch.int64
    assert int(where.min()) >= 0 and int(where.max()) < keep
    assert torch.equal(out[:, :prefix], x[:, :prefix])
    assert torch.equal(out_size[:, :prefix], size[:, :prefix])
    assign = (where.unsqueeze(1) == torch.arange(keep).view(1, -1, 1)).double()  # [B, keep, N]
    assert (assign.sum(-1) >= 1).all()
    torch.testing.assert_close(out_size[:, prefix:], assign @ size[:, prefix:], rtol=0, atol=0)
    if combine == "mean":
        weighted = assign @ (x[:, prefix:] * size[:, prefix:])
        torch.testing.assert_close(out[:, prefix:], weighted / out_size[:, prefix:], rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# tofu_reduce
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [0, 1, 2, 3, 5])
def test_tofu_prunes_before_prune_until_and_merges_after(block):
    """``tofu_reduce`` is prune mode in blocks ``< prune_until`` and MLERP from ``prune_until`` on
    (bit for bit the bipartite reduction in that mode); the two modes do give different tokens."""
    x, size, q, k = make_inputs(seed_of("tofu", block), 1, 20)
    ctx = context(q, k, 1, block=block, options={"prune_until": 3})
    out, out_size, where = tofu_reduce(x, size, ctx, 7)
    mode = "prune" if block < 3 else "mlerp"
    other = "mlerp" if mode == "prune" else "prune"
    exp, exp_size, exp_where = bipartite_reduce(x, size, ctx, 7, mode)
    assert torch.equal(out, exp) and torch.equal(out_size, exp_size) and torch.equal(where, exp_where)
    assert not torch.allclose(out, bipartite_reduce(x, size, ctx, 7, other)[0])


def test_tofu_without_prune_until_merges_everywhere():
    x, size, q, k = make_inputs(seed_of("tofu-default"), 1, 16)
    for block in (0, 4):
        out, _, _ = tofu_reduce(x, size, context(q, k, 1, block=block), 6)
        assert torch.equal(out, bipartite_reduce(x, size, context(q, k, 1), 6, "mlerp")[0])


@pytest.mark.parametrize("block", [0, 2])
@pytest.mark.parametrize("prefix", PREFIXES)
def test_tofu_batch_elements_independent(prefix, block):
    """Row i of a batch reduces exactly as that row alone, in both modes."""
    x, size, q, k = make_inputs(seed_of("tofu-batch", prefix, block), prefix, 19)
    opts = {"prune_until": 1}
    out, out_size, where = tofu_reduce(x, size, context(q, k, prefix, block, opts), 6)
    for b in range(BATCH):
        one = context(q[b : b + 1], k[b : b + 1], prefix, block, opts)
        s_out, s_size, s_where = tofu_reduce(x[b : b + 1], size[b : b + 1], one, 6)
        torch.testing.assert_close(s_out[0], out[b], rtol=1e-12, atol=1e-12)
        assert torch.equal(s_size[0], out_size[b]) and torch.equal(s_where[0], where[b])


def test_tofu_plan_defaults_and_block_index_reaches_the_reducer():
    """build_plan gives ToFu ``prune_until = depth // 4`` (an explicit value wins) and proportional
    attention; ReducedViT hands each reduction point its block index, so the reducer prunes exactly
    where the plan says."""
    import dataclasses

    import edgeprune
    from edgeprune.families import adapter_for
    from edgeprune import build_plan
    from tests.conftest import make_tiny
    from tests.plan.test_plan import VIT_B

    plan = build_plan(VIT_B, "tofu", flops=0.5)
    assert plan.options["prune_until"] == 3 and plan.prop_attn
    assert build_plan(VIT_B, "tofu", flops=0.5, options={"prune_until": 5}).options["prune_until"] == 5

    model = make_tiny("cls")  # depth 4
    plan = build_plan(model, "tofu", tokens=6, points=[0, 2], options={"prune_until": 1})
    reduced = adapter_for(model).reduced(plan)
    seen = []

    def spy(x, size, ctx, keep):
        seen.append((ctx.block, ctx.block < ctx.options["prune_until"]))
        return tofu_reduce(x, size, ctx, keep)

    reduced.reducer = spy
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        spied = reduced(pixels)
        merged_only = edgeprune.reduce_model(model, dataclasses.replace(plan, options={"prune_until": 0}))(pixels)
    assert seen == [(0, True), (2, False)]
    assert not torch.allclose(spied, merged_only)  # pruning at block 0 changes the result

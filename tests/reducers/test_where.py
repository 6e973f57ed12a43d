"""The ``where`` maps the reducers report for dense heads: every incoming patch token -> the index of
the output patch token that now stands for it. Checked as properties on random inputs (float64, so
"the same token" can be tested with exact equality) for every prefix layout, odd and even token
counts, and keep values that need one or several bipartite rounds."""

from __future__ import annotations

import pytest
import torch

from edgeprune.reducers import ReductionContext, evit_prune, gsp_prune, tome_merge
from edgeprune.reducers.common import compose, gather_tokens, interleave, membership, rank_among
from edgeprune.plan.token_counts import round_sizes
from tests.reducers.inputs import BATCH, DIM, HEADS, random_inputs, seed_of

PREFIXES = [0, 1, 5]
# (patch tokens, keep): one round (keep >= N/2), exactly half, and several rounds (keep < N/2).
CASES = [(16, 15), (16, 9), (16, 8), (16, 5), (16, 2), (17, 16), (17, 9), (17, 8), (17, 3), (24, 7)]
REDUCERS = {"tome": tome_merge, "evit": evit_prune, "gsp": gsp_prune}


def make_inputs(seed: int, prefix: int, n_tok: int, sizes: str = "ones"):
    x, size, q, k = random_inputs(seed, prefix, n_tok, sizes)
    return x, size, ReductionContext(q, k, (DIM // HEADS) ** -0.5, prefix, class_token=prefix > 0)


def one_element(ctx: ReductionContext, b: int) -> ReductionContext:
    return ReductionContext(ctx.q[b : b + 1], ctx.k[b : b + 1], ctx.scale, ctx.num_prefix,
                            options=ctx.options, class_token=ctx.class_token)


def mapped_sum(where: torch.Tensor, values: torch.Tensor, keep: int) -> torch.Tensor:
    """sum over patches i with where[b, i] == j of values[b, i]: [B, N, C] -> [B, keep, C]."""
    assign = (where.unsqueeze(1) == torch.arange(keep).view(1, -1, 1)).to(values.dtype)  # [B, keep, N]
    return assign @ values


# ---------------------------------------------------------------------------------------------
# Shared properties
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(REDUCERS))
@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("n_tok,keep", CASES)
def test_where_shape_range_and_size_accounting(method, prefix, n_tok, keep):
    if method == "evit" and keep < 2:
        pytest.skip("EViT keeps at least two tokens")
    x, size, ctx = make_inputs(seed_of(method, prefix, n_tok, keep), prefix, n_tok, sizes="random")
    out, out_size, where = REDUCERS[method](x, size, ctx, keep)
    assert out.shape == (BATCH, prefix + keep, DIM)
    assert where.shape == (BATCH, n_tok)
    assert where.dtype == torch.int64
    assert int(where.min()) >= 0 and int(where.max()) < keep
    # Every output token stands for at least one patch, and its size is the sizes of its patches.
    counts = mapped_sum(where, torch.ones(BATCH, n_tok, 1, dtype=torch.float64), keep)
    assert (counts >= 1).all()
    torch.testing.assert_close(out_size[:, prefix:], mapped_sum(where, size[:, prefix:], keep))
    torch.testing.assert_close(out[:, :prefix], x[:, :prefix], rtol=0, atol=0)


@pytest.mark.parametrize("method", list(REDUCERS))
@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("n_tok,keep", [(16, 5), (17, 9), (24, 7)])
def test_where_batch_elements_independent(method, prefix, n_tok, keep):
    x, size, ctx = make_inputs(seed_of("batch", method, prefix, n_tok), prefix, n_tok)
    out, _, where = REDUCERS[method](x, size, ctx, keep)
    for b in range(BATCH):
        single, _, single_where = REDUCERS[method](x[b : b + 1], size[b : b + 1], one_element(ctx, b), keep)
        assert torch.equal(single_where[0], where[b])
        torch.testing.assert_close(single[0], out[b])


# ---------------------------------------------------------------------------------------------
# ToMe
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("n_tok,keep", CASES)
def test_tome_merged_token_is_mean_of_its_patches(prefix, n_tok, keep):
    """With unit sizes, size-weighted merging over any number of rounds makes each output token the
    plain mean of the patches mapped to it, and its size their count: merge -> unmerge is exact."""
    x, size, ctx = make_inputs(seed_of("tome-mean", prefix, n_tok, keep), prefix, n_tok)
    out, out_size, where = tome_merge(x, size, ctx, keep)
    counts = mapped_sum(where, torch.ones(BATCH, n_tok, 1, dtype=torch.float64), keep)
    assert torch.equal(out_size[:, prefix:], counts)
    means = mapped_sum(where, x[:, prefix:], keep) / counts
    torch.testing.assert_close(out[:, prefix:], means, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("n_tok,keep", [(16, 12), (17, 9), (16, 8)])
def test_tome_single_round_where_pairs_a_with_b(prefix, n_tok, keep):
    """One round: B (odd) tokens all survive, each alone or with A tokens; merged A tokens share a B
    token's index and unmerged A tokens keep one of their own."""
    assert len(round_sizes(n_tok, keep)) == 1
    x, size, ctx = make_inputs(seed_of("tome-1", prefix, n_tok, keep), prefix, n_tok)
    out, _, where = tome_merge(x, size, ctx, keep)
    r = n_tok - keep
    for b in range(BATCH):
        w = where[b].tolist()
        b_targets = [w[i] for i in range(1, n_tok, 2)]
        assert len(set(b_targets)) == len(b_targets)  # distinct B tokens stay distinct
        merged_a = [i for i in range(0, n_tok, 2) if w[i] in b_targets]
        assert len(merged_a) == r
        unmerged_a = [i for i in range(0, n_tok, 2) if i not in merged_a]
        # Unmerged A tokens come first, in token order, each unchanged.
        assert [w[i] for i in unmerged_a] == list(range(len(unmerged_a)))
        for i in unmerged_a:
            assert torch.equal(out[b, prefix + w[i]], x[b, prefix + i])


# ---------------------------------------------------------------------------------------------
# EViT
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("n_tok,keep", [c for c in CASES if c[1] >= 2])
def test_evit_kept_map_to_themselves_dropped_to_fused(prefix, n_tok, keep):
    x, size, ctx = make_inputs(seed_of("evit", prefix, n_tok, keep), prefix, n_tok)
    out, out_size, where = evit_prune(x, size, ctx, keep)
    attention = ctx.query_attention()[:, prefix:]
    tok = x[:, prefix:]
    for b in range(BATCH):
        top = set(torch.topk(attention[b], keep - 1).indices.tolist())
        kept = [i for i in range(n_tok) if int(where[b, i]) != keep - 1]
        dropped = [i for i in range(n_tok) if int(where[b, i]) == keep - 1]
        assert set(kept) == top  # the most attended patches are the kept ones
        # Kept patches map, in token order, to output tokens identical to themselves.
        assert [int(where[b, i]) for i in kept] == list(range(keep - 1))
        for i in kept:
            assert torch.equal(out[b, prefix + int(where[b, i])], tok[b, i])
        # Every dropped patch lives on in the fused (last) token: their attention-weighted mean.
        assert len(dropped) == n_tok - keep + 1
        w = attention[b, dropped].unsqueeze(-1)
        fused = (tok[b, dropped] * w).sum(0) / w.sum()
        torch.testing.assert_close(out[b, prefix + keep - 1], fused)
        assert out_size[b, prefix + keep - 1, 0] == len(dropped)


def test_evit_keep_all_is_identity_map():
    x, size, ctx = make_inputs(7, 1, 16)
    out, _, where = evit_prune(x, size, ctx, 16)
    assert torch.equal(out, x)
    assert torch.equal(where, torch.arange(16).expand(BATCH, -1))


# ---------------------------------------------------------------------------------------------
# GSP (pruning): output tokens are input tokens
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("n_tok,keep", CASES)
def test_gsp_kept_map_to_themselves(prefix, n_tok, keep):
    x, size, ctx = make_inputs(seed_of("gsp", prefix, n_tok, keep), prefix, n_tok)
    out, _, where = gsp_prune(x, size, ctx, keep)
    tok = x[:, prefix:]
    for b in range(BATCH):
        source = []  # for each output token: the input patch it is
        for j in range(keep):
            hits = [i for i in range(n_tok) if torch.equal(out[b, prefix + j], tok[b, i])]
            assert len(hits) == 1, "a pruned output token must be exactly one of the input tokens"
            source.append(hits[0])
        # A kept patch maps to itself; every other patch maps to some kept token.
        for j, i in enumerate(source):
            assert int(where[b, i]) == j
        survivors = {i for i in range(n_tok) if torch.equal(out[b, prefix + int(where[b, i])], tok[b, i])}
        assert survivors == set(source)
        assert len(survivors) == keep


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("n_tok,keep", [(16, 12), (17, 9), (16, 8)])
def test_gsp_single_round_dropped_map_to_nearest_target(prefix, n_tok, keep):
    assert len(round_sizes(n_tok, keep)) == 1
    x, size, ctx = make_inputs(seed_of("gsp-1", prefix, n_tok, keep), prefix, n_tok)
    out, _, where = gsp_prune(x, size, ctx, keep)
    tok = x[:, prefix:]
    unit = tok / tok.norm(dim=-1, keepdim=True)
    for b in range(BATCH):
        dropped = [i for i in range(n_tok) if not torch.equal(out[b, prefix + int(where[b, i])], tok[b, i])]
        assert len(dropped) == n_tok - keep
        assert all(i % 2 == 0 for i in dropped)  # only sources (A, even) are dropped in a round
        for i in dropped:
            nearest = 1 + 2 * int((unit[b, i] @ unit[b, 1::2].T).argmax())
            assert torch.equal(out[b, prefix + int(where[b, i])], tok[b, nearest])


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def test_interleave_restores_token_order():
    even = torch.tensor([[10, 12, 14], [20, 22, 24]])
    odd = torch.tensor([[11, 13], [21, 23]])
    assert interleave(even, odd).tolist() == [[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]]
    assert interleave(even[:, :2], odd).tolist() == [[10, 11, 12, 13], [20, 21, 22, 23]]
    t = torch.randn(2, 9)
    assert torch.equal(interleave(t[:, ::2], t[:, 1::2]), t)


def test_rank_among_counts_true_items_in_order():
    mask = torch.tensor([[True, False, True, True, False], [False, False, True, False, True]])
    ranks = rank_among(mask)
    assert ranks.dtype == torch.int64
    assert ranks[mask].tolist() == [0, 1, 2, 0, 1]
    assert ranks[0].tolist()[:4] == [0, 0, 1, 2]


def test_membership_marks_selected_items():
    idx = torch.tensor([[2, 0], [3, 3]])
    assert membership(idx, 4).tolist() == [[True, False, True, False], [False, False, False, True]]


def test_compose_follows_two_maps():
    where = torch.tensor([[0, 2, 1, 2], [1, 1, 0, 0]])
    later = torch.tensor([[1, 2, 0], [0, 0, 1]])
    assert compose(where, later).tolist() == [[1, 0, 2, 0], [0, 0, 0, 0]]
    ident = torch.arange(4).expand(2, -1)
    assert torch.equal(compose(ident, where), where)


def test_gather_tokens_matches_indexing():
    t = torch.randn(3, 7, 5)
    idx = torch.tensor([[6, 0, 0], [1, 2, 3], [5, 5, 4]])
    expected = torch.stack([t[b, idx[b]] for b in range(3)])
    assert torch.equal(gather_tokens(t, idx), expected)

"""Bipartite soft matching (ToMe, Bolya et al. 2023) without scatter reductions.

Patch tokens alternate into sets A and B; each A token proposes its most similar B token (cosine
similarity of the attention keys); the ``r`` A tokens with the best matches are merged into their
B partners by size-weighted averaging. The merge is a matmul with a one-hot assignment matrix, so the
ONNX graph only needs TopK, GatherElements, Equal and MatMul.
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgeprune.plan.token_counts import check_round, round_sizes
from edgeprune.reducers.common import (
    ReductionContext,
    alternating_similarity,
    compose,
    descending_order,
    gather_tokens,
    in_token_order,
    interleave,
    membership,
    mlerp_rescale,
    one_hot,
    rank_among,
    split_prefix,
)


COMBINES = ("mean", "mlerp", "prune")


def bipartite_merge_round(
    x: Tensor, size: Tensor, metric: Tensor, r: int, num_prefix: int, combine: str = "mean"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Merge ``r`` tokens of set A into set B once; returns new (x, size, metric, where).

    ``combine`` says what a B token becomes: ``mean`` is ToMe's size-weighted average; ``mlerp``
    rescales that average to the largest norm among the merged tokens (ToFu: averaging nearly
    parallel vectors keeps their direction but shrinks the norm less than averaging dissimilar ones,
    and later blocks read the shrunken norm as a different token); ``prune`` keeps the B token's
    features and drops the A token (its size still moves over, so the B token counts for both).
    ``metric`` is merged like ``x`` so that a further round at the same point can match again.
    """
    if combine not in COMBINES:
        raise ValueError(f"unknown combine '{combine}' (one of {', '.join(COMBINES)})")
    x_pre, x_tok = split_prefix(x, num_prefix)
    s_pre, s_tok = split_prefix(size, num_prefix)
    m_pre, m_tok = split_prefix(metric, num_prefix)
    check_round(x_tok.shape[1], r)

    scores = alternating_similarity(m_tok)  # [B, Na, Nb]
    best_score, best_dst = scores.max(dim=-1)
    order = descending_order(best_score)
    src_idx, unmerged_idx = order[:, :r], in_token_order(order[:, r:])
    dst_idx = best_dst.gather(1, src_idx)
    assign_t = one_hot(dst_idx, scores.shape[-1], x.dtype).transpose(1, 2)  # [B, Nb, r]

    def merge(t: Tensor, weight: Tensor) -> Tensor:
        t_a, t_b = t[:, ::2], t[:, 1::2]
        w_a, w_b = weight[:, ::2], weight[:, 1::2]
        weighted_src = gather_tokens(t_a * w_a, src_idx)
        merged_b = t_b * w_b + assign_t @ weighted_src
        return gather_tokens(t_a, unmerged_idx), merged_b

    s_a, s_b = s_tok[:, ::2], s_tok[:, 1::2]
    new_s_b = s_b + assign_t @ gather_tokens(s_a, src_idx)
    s_unm = gather_tokens(s_a, unmerged_idx)
    if combine == "prune":
        x_unm, x_b = gather_tokens(x_tok[:, ::2], unmerged_idx), x_tok[:, 1::2]
        m_unm, m_b = gather_tokens(m_tok[:, ::2], unmerged_idx), m_tok[:, 1::2]
    else:
        x_unm, x_b = merge(x_tok, s_tok)
        m_unm, m_b = merge(m_tok, s_tok)
        x_b, m_b = x_b / new_s_b, m_b / new_s_b
        if combine == "mlerp":
            x_b = rescale_to_largest_norm(x_b, x_tok, src_idx, assign_t)
    x_out = torch.cat((x_pre, x_unm, x_b), dim=1)
    size_out = torch.cat((s_pre, s_unm, new_s_b), dim=1)
    metric_out = torch.cat((m_pre, m_unm, m_b), dim=1)

    # Unmerged A tokens come first (in token order), then every B token; a merged A token lives on
    # in its B partner.
    n_unm = unmerged_idx.shape[1]
    merged = membership(src_idx, best_dst.shape[1])
    where_a = torch.where(merged, n_unm + best_dst, rank_among(~merged))
    where_b = n_unm + torch.arange(scores.shape[-1], device=x.device).expand(x.shape[0], -1)
    return x_out, size_out, metric_out, interleave(where_a, where_b)


def rescale_to_largest_norm(merged_b: Tensor, x_tok: Tensor, src_idx: Tensor, assign_t: Tensor) -> Tensor:
    """MLERP for one bipartite round: B tokens' averages against the norms of B itself and of the
    A tokens (``src_idx``) merged into it."""
    return mlerp_rescale(merged_b, x_tok[:, 1::2].norm(dim=-1), x_tok[:, ::2].norm(dim=-1).gather(1, src_idx), assign_t)


def bipartite_reduce(x: Tensor, size: Tensor, ctx: ReductionContext, keep: int, combine: str) -> tuple[Tensor, Tensor, Tensor]:
    """Bipartite rounds down to ``keep`` patch tokens; more than half go in several rounds."""
    metric = ctx.key_metric()
    n_tok = x.shape[1] - ctx.num_prefix
    where = torch.arange(n_tok, device=x.device).expand(x.shape[0], -1)
    for r in round_sizes(n_tok, keep):
        x, size, metric, step = bipartite_merge_round(x, size, metric, r, ctx.num_prefix, combine)
        where = compose(where, step)
    return x, size, where


def tome_merge(x: Tensor, size: Tensor, ctx: ReductionContext, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """ToMe: merge patch tokens down to ``keep`` by size-weighted averaging."""
    return bipartite_reduce(x, size, ctx, keep, "mean")


def tofu_reduce(x: Tensor, size: Tensor, ctx: ReductionContext, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """ToFu (Kim et al. 2024): the same matching, pruning in early blocks (before ``prune_until``),
    where features are still local and averaging blurs them, and norm-preserving MLERP merging in
    later ones. ``prune_until`` 0 merges everywhere."""
    prune = ctx.block < int(ctx.options.get("prune_until", 0))
    return bipartite_reduce(x, size, ctx, keep, "prune" if prune else "mlerp")

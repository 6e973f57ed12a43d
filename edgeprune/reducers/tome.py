"""Bipartite soft matching (ToMe, Bolya et al. 2023) without scatter reductions.

Patch tokens alternate into sets A and B; each A token proposes its most similar B token (cosine
similarity of the attention keys); the ``r`` A tokens with the best matches are merged into their
B partners by size-weighted averaging. The merge is a matmul with a one-hot assignment matrix, so the
ONNX graph only needs TopK, GatherElements, Equal and MatMul.
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgeprune.reducers.common import (
    ReductionContext,
    alternating_similarity,
    check_round,
    compose,
    descending_order,
    gather_tokens,
    in_token_order,
    interleave,
    membership,
    one_hot,
    rank_among,
    round_sizes,
    split_prefix,
)


def bipartite_merge_round(
    x: Tensor, size: Tensor, metric: Tensor, r: int, num_prefix: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Merge ``r`` tokens of set A into set B once; returns new (x, size, metric, where).

    ``metric`` is merged like ``x`` so that a further round at the same point can match again.
    """
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
    x_unm, x_b = merge(x_tok, s_tok)
    m_unm, m_b = merge(m_tok, s_tok)
    s_unm = gather_tokens(s_a, unmerged_idx)

    x_out = torch.cat((x_pre, x_unm, x_b / new_s_b), dim=1)
    size_out = torch.cat((s_pre, s_unm, new_s_b), dim=1)
    metric_out = torch.cat((m_pre, m_unm, m_b / new_s_b), dim=1)

    # Unmerged A tokens come first (in token order), then every B token; a merged A token lives on
    # in its B partner.
    n_unm = unmerged_idx.shape[1]
    merged = membership(src_idx, best_dst.shape[1])
    where_a = torch.where(merged, n_unm + best_dst, rank_among(~merged))
    where_b = n_unm + torch.arange(scores.shape[-1], device=x.device).expand(x.shape[0], -1)
    return x_out, size_out, metric_out, interleave(where_a, where_b)


def tome_merge(x: Tensor, size: Tensor, ctx: ReductionContext, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """Merge patch tokens down to ``keep``; more than half go in several rounds at this point."""
    metric = ctx.key_metric()
    n_tok = x.shape[1] - ctx.num_prefix
    where = torch.arange(n_tok, device=x.device).expand(x.shape[0], -1)
    for r in round_sizes(n_tok, keep):
        x, size, metric, step = bipartite_merge_round(x, size, metric, r, ctx.num_prefix)
        where = compose(where, step)
    return x, size, where

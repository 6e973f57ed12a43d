"""Graph-structured redundancy pruning (the graph module of Script, Yang et al. 2025).

Patch tokens alternate into sources (A) and targets (B) and are linked by cosine similarity of their
hidden states; only edges above a threshold count. A source is redundant when it has many
neighbours and is very similar to them, so the most redundant sources are dropped: every dropped
token has a close kept neighbour, which keeps the image covered. A dropped token's size moves to its
nearest target so size-weighted pooling and proportional attention still see the whole image; the
target's features are left as they are (this is pruning, not merging).

The threshold is ``mean + alpha * std`` of each image's similarities (``gsp_alpha``, default 0), or
an absolute cosine value (``gsp_threshold``): both are static-shape.
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
    one_hot,
    rank_among,
    split_prefix,
)


def redundancy_scores(similarity: Tensor, threshold: Tensor) -> Tensor:
    """Per source: summed weight of its above-threshold edges, plus its best match as tie-break."""
    edges = (similarity > threshold).to(similarity.dtype)
    return (similarity * edges).sum(dim=-1) + similarity.amax(dim=-1)


def edge_threshold(similarity: Tensor, options: dict) -> Tensor:
    if options.get("gsp_threshold") is not None:
        return torch.full_like(similarity[:, :1, :1], float(options["gsp_threshold"]))
    flat = similarity.flatten(1)
    alpha = float(options.get("gsp_alpha", 0.0))
    # Population std: a single similarity (two tokens left) has spread 0, not NaN.
    return (flat.mean(dim=1) + alpha * flat.std(dim=1, correction=0)).view(-1, 1, 1)


def graph_prune_choice(x_tok: Tensor, r: int, options: dict) -> tuple[Tensor, Tensor, Tensor]:
    """Which ``r`` sources (even tokens) one round drops: (similarity [B, Na, Nb], dropped [B, r] in
    redundancy order, kept [B, Na - r] in token order); indices are among the even tokens."""
    similarity = alternating_similarity(x_tok)  # [B, Na, Nb]
    scores = redundancy_scores(similarity, edge_threshold(similarity, options))
    order = descending_order(scores)
    return similarity, order[:, :r], in_token_order(order[:, r:])


def graph_prune_round(
    x: Tensor, size: Tensor, r: int, num_prefix: int, options: dict
) -> tuple[Tensor, Tensor, Tensor]:
    x_pre, x_tok = split_prefix(x, num_prefix)
    s_pre, s_tok = split_prefix(size, num_prefix)
    check_round(x_tok.shape[1], r)

    similarity, dropped_idx, kept_idx = graph_prune_choice(x_tok, r, options)
    nearest_all = similarity.argmax(dim=-1)
    nearest = nearest_all.gather(1, dropped_idx)
    assign_t = one_hot(nearest, similarity.shape[-1], x.dtype).transpose(1, 2)  # [B, Nb, r]

    s_a, s_b = s_tok[:, ::2], s_tok[:, 1::2]
    s_b = s_b + assign_t @ gather_tokens(s_a, dropped_idx)
    x_out = torch.cat((x_pre, gather_tokens(x_tok[:, ::2], kept_idx), x_tok[:, 1::2]), dim=1)
    size_out = torch.cat((s_pre, gather_tokens(s_a, kept_idx), s_b), dim=1)

    # Kept A tokens first, then every B token; a dropped token is represented by its nearest target.
    n_kept = kept_idx.shape[1]
    dropped = membership(dropped_idx, similarity.shape[1])
    where_a = torch.where(dropped, n_kept + nearest_all, rank_among(~dropped))
    where_b = n_kept + torch.arange(similarity.shape[-1], device=x.device).expand(x.shape[0], -1)
    return x_out, size_out, interleave(where_a, where_b)


def gsp_prune(x: Tensor, size: Tensor, ctx: ReductionContext, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """Drop patch tokens down to ``keep``; more than half go in several rounds at this point."""
    n_tok = x.shape[1] - ctx.num_prefix
    where = torch.arange(n_tok, device=x.device).expand(x.shape[0], -1)
    for r in round_sizes(n_tok, keep):
        x, size, step = graph_prune_round(x, size, r, ctx.num_prefix, ctx.options)
        where = compose(where, step)
    return x, size, where

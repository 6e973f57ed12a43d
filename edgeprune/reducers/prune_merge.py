"""Importance-ranked prune-then-merge (after DiffRate, Chen et al. 2023; importance-aware partitions
as in Zero-TPrune and PiToMe).

Patch tokens are ranked by the attention the CLS query pays them (mean over heads; models without a
CLS token use the mean patch query). The ``keep`` most important stay and are the only merge
destinations, so important tokens are never averaged away into unimportant ones, which is what
ToMe's alternating partition allows. Of the removed tokens, the least important share
``prune_share`` is dropped outright (background) and the rest, the next-ranked, are merged into
their most similar kept token (cosine of the attention keys) by size-weighted averaging, rescaled
MLERP-style to the largest merged norm unless ``merge_mode`` is ``mean``.

One TopK ranks all tokens, one [removed x kept] similarity picks destinations and one one-hot
matmul merges: static shapes, no scatter.
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgeprune.plan.methods import option_defaults
from edgeprune.plan.token_counts import split_removed
from edgeprune.reducers.common import (
    ReductionContext,
    cosine_normalize,
    descending_order,
    gather_tokens,
    in_token_order,
    membership,
    mlerp_rescale,
    one_hot,
    rank_among,
    split_prefix,
)

DEFAULTS = option_defaults("prune-merge")



def prune_merge(x: Tensor, size: Tensor, ctx: ReductionContext, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    num_tok = x.shape[1] - ctx.num_prefix
    if keep >= num_tok:
        return x, size, torch.arange(num_tok, device=x.device).expand(x.shape[0], -1)
    if keep < 1:
        raise ValueError("prune-merge keeps at least one patch token")
    opts = {**DEFAULTS, **ctx.options}
    n_merge, _ = split_removed(num_tok - keep, float(opts["prune_share"]))
    x_pre, x_tok = split_prefix(x, ctx.num_prefix)
    s_pre, s_tok = split_prefix(size, ctx.num_prefix)
    importance = ctx.query_attention()[:, ctx.num_prefix :]  # [B, N]
    metric = cosine_normalize(ctx.key_metric()[:, ctx.num_prefix :])  # [B, N, D]

    order = descending_order(importance)
    kept_idx, removed_idx = in_token_order(order[:, :keep]), order[:, keep:]  # removed: most important first
    # Every removed token gets a destination (a dense head puts it back there); only the first
    # n_merge hand their features over.
    similarity = gather_tokens(metric, removed_idx) @ gather_tokens(metric, kept_idx).transpose(1, 2)
    dst = similarity.argmax(dim=-1)  # [B, R] index among the kept tokens

    x_keep, s_keep = gather_tokens(x_tok, kept_idx), gather_tokens(s_tok, kept_idx)
    if n_merge:
        src_idx = removed_idx[:, :n_merge]
        assign_t = one_hot(dst[:, :n_merge], keep, x.dtype).transpose(1, 2)  # [B, keep, n_merge]
        s_src = gather_tokens(s_tok, src_idx)
        x_src = gather_tokens(x_tok, src_idx)
        new_s = s_keep + assign_t @ s_src
        merged = (x_keep * s_keep + assign_t @ (x_src * s_src)) / new_s
        if opts["merge_mode"] == "mlerp":
            merged = mlerp_rescale(merged, x_keep.norm(dim=-1), x_src.norm(dim=-1), assign_t)
        x_keep, s_keep = merged, new_s

    x_out = torch.cat((x_pre, x_keep), dim=1)
    size_out = torch.cat((s_pre, s_keep), dim=1)
    kept = membership(kept_idx, num_tok)
    # A removed token's destination, looked up by token: [B, N] from the [B, R] ranking order.
    removed_onehot = one_hot(removed_idx, num_tok, torch.float32)  # [B, R, N]
    dst_by_token = (removed_onehot * dst.unsqueeze(-1).to(torch.float32)).sum(dim=1).to(torch.int64)
    where = torch.where(kept, rank_among(kept), dst_by_token)
    return x_out, size_out, where

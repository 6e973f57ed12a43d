"""Attention top-k pruning with a fused token (EViT, Liang et al. 2022).

The patch tokens the CLS query attends to most are kept; the rest are fused into one token, averaged
with their attention as weights, so their information is not simply thrown away. ``keep`` counts the
fused token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgeprune.reducers.common import (
    ReductionContext,
    descending_order,
    gather_tokens,
    in_token_order,
    membership,
    rank_among,
    split_prefix,
)


def evit_prune(x: Tensor, size: Tensor, ctx: ReductionContext, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    num_tok = x.shape[1] - ctx.num_prefix
    if keep >= num_tok:
        return x, size, torch.arange(num_tok, device=x.device).expand(x.shape[0], -1)
    if keep < 2:
        raise ValueError("EViT keeps at least one attentive token plus the fused token")
    x_pre, x_tok = split_prefix(x, ctx.num_prefix)
    s_pre, s_tok = split_prefix(size, ctx.num_prefix)
    attention = ctx.query_attention()[:, ctx.num_prefix :]  # [B, N_tok]

    order = descending_order(attention)
    kept_idx, dropped_idx = in_token_order(order[:, : keep - 1]), order[:, keep - 1 :]
    weight = attention.gather(1, dropped_idx).unsqueeze(-1)  # [B, N_drop, 1]
    fused = (gather_tokens(x_tok, dropped_idx) * weight).sum(dim=1, keepdim=True)
    fused = fused / weight.sum(dim=1, keepdim=True).clamp_min(1e-12)
    fused_size = gather_tokens(s_tok, dropped_idx).sum(dim=1, keepdim=True)

    x_out = torch.cat((x_pre, gather_tokens(x_tok, kept_idx), fused), dim=1)
    size_out = torch.cat((s_pre, gather_tokens(s_tok, kept_idx), fused_size), dim=1)
    kept = membership(kept_idx, num_tok)
    where = torch.where(kept, rank_among(kept), keep - 1)  # dropped tokens live on in the fused one
    return x_out, size_out, where

"""Shared pieces of the reducers: the context a block hands over, and export-safe tensor helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

# TensorRT's TopK needs K < 3840; every TopK here runs over one image's tokens.
TOPK_LIMIT = 3840


@dataclass
class ReductionContext:
    """What a reducer may use from the block it runs in (between attention and MLP)."""

    q: Tensor  # [B, H, N, D] queries after q-norm
    k: Tensor  # [B, H, N, D] keys after k-norm
    scale: float
    num_prefix: int
    attn_bias: Optional[Tensor] = None  # [B, 1, 1, N] additive logit bias (log size) or None
    options: dict[str, Any] = field(default_factory=dict)

    def key_metric(self) -> Tensor:
        """ToMe's matching metric: the keys averaged over heads, [B, N, D]."""
        return self.k.mean(dim=1)

    def query_attention(self) -> Tensor:
        """Attention paid to every token by the CLS query (mean over heads), [B, N].

        Only this one row of the attention matrix is computed, so the block itself keeps its fused
        attention kernel. Models without a CLS token use the mean query instead.
        """
        if self.num_prefix > 0:
            query = self.q[:, :, :1]
        else:
            query = self.q.mean(dim=2, keepdim=True)
        logits = (query * self.scale) @ self.k.transpose(-2, -1)  # [B, H, 1, N]
        if self.attn_bias is not None:
            logits = logits + self.attn_bias
        return logits.softmax(dim=-1).mean(dim=1)[:, 0]


def gather_tokens(t: Tensor, idx: Tensor) -> Tensor:
    """``t[b, idx[b, j]]`` for every batch element: [B, N, C] x [B, K] -> [B, K, C]."""
    return t.gather(1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


def descending_order(scores: Tensor) -> Tensor:
    """Indices that sort ``scores`` [B, N] from high to low, as one sorted TopK (never argsort)."""
    n = scores.shape[-1]
    if n >= TOPK_LIMIT:
        raise ValueError(f"cannot rank {n} tokens in one TopK (TensorRT needs K < {TOPK_LIMIT})")
    return torch.topk(scores, n, dim=-1, largest=True, sorted=True).indices


def one_hot(idx: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """[B, K] integer indices -> [B, K, n] one-hot assignment built from Equal (no scatter)."""
    return (idx.unsqueeze(-1) == torch.arange(n, device=idx.device)).to(dtype)


def split_prefix(t: Tensor, num_prefix: int) -> tuple[Tensor, Tensor]:
    return t[:, :num_prefix], t[:, num_prefix:]


def cosine_normalize(t: Tensor) -> Tensor:
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-6)

"""Shared pieces of the reducers: the context a block hands over, and export-safe tensor helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from edgeprune.core.limits import TOPK_LIMIT



@dataclass
class ReductionContext:
    """What a reducer may use from the block it runs in (between attention and MLP)."""

    q: Tensor  # [B, H, N, D] queries after q-norm
    k: Tensor  # [B, H, N, D] keys after k-norm
    scale: float
    num_prefix: int
    attn_bias: Optional[Tensor] = None  # [B, 1, 1, N] additive logit bias (log size) or None
    options: dict[str, Any] = field(default_factory=dict)
    class_token: bool = True  # token 0 is a CLS token (False: no CLS, or registers only)
    block: int = 0  # index of the block the reduction point sits in (ToFu prunes early, merges late)

    def key_metric(self) -> Tensor:
        """ToMe's matching metric: the keys averaged over heads, [B, N, D]."""
        return self.k.mean(dim=1)

    def query_attention(self) -> Tensor:
        """Attention paid to every token by the CLS query (mean over heads), [B, N].

        Only this one row of the attention matrix is computed, so the block itself keeps its fused
        attention kernel. Models without a CLS token use the mean query of the patch tokens
        (register tokens start near zero, so their queries would attend almost uniformly).
        """
        if self.class_token and self.num_prefix > 0:
            query = self.q[:, :, :1]
        else:
            query = self.q[:, :, self.num_prefix :].mean(dim=2, keepdim=True)
        logits = (query * self.scale) @ self.k.transpose(-2, -1)  # [B, H, 1, N]
        if self.attn_bias is not None:
            logits = logits + self.attn_bias
        return logits.softmax(dim=-1).mean(dim=1)[:, 0]


def gather_tokens(t: Tensor, idx: Tensor) -> Tensor:
    """``t[b, idx[b, j]]`` for every batch element: [B, N, C] x [B, K] -> [B, K, C].

    Written as a row Gather on the flattened batch rather than GatherElements with an index
    expanded over channels: the engine then reads one index per token instead of one per value,
    which is most of the cost of a gather at small widths.
    """
    b, n, c = t.shape
    offsets = torch.arange(b, device=idx.device).unsqueeze(1) * n
    rows = torch.index_select(t.reshape(b * n, c), 0, (idx + offsets).reshape(-1))
    return rows.reshape(b, idx.shape[1], c)


def descending_order(scores: Tensor) -> Tensor:
    """Indices that sort ``scores`` [B, N] from high to low, as one sorted TopK (never argsort)."""
    n = scores.shape[-1]
    if n >= TOPK_LIMIT:
        raise ValueError(f"cannot rank {n} tokens in one TopK (TensorRT needs K < {TOPK_LIMIT})")
    return torch.topk(scores, n, dim=-1, largest=True, sorted=True).indices


def in_token_order(idx: Tensor) -> Tensor:
    """Sort selected token indices [B, K] ascending, so kept tokens stay in their original order.

    Score order would let two nearly tied scores swap places between engines (float rounding), which
    permutes the output sequence; in token order only ties at the keep/drop boundary can matter.
    """
    if idx.shape[-1] <= 1:
        return idx
    position = torch.topk(-idx.to(torch.float32), idx.shape[-1], dim=-1, largest=True, sorted=True).indices
    return idx.gather(-1, position)


def one_hot(idx: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """[B, K] integer indices -> [B, K, n] one-hot assignment built from Equal (no scatter)."""
    return (idx.unsqueeze(-1) == torch.arange(n, device=idx.device)).to(dtype)


def membership(idx: Tensor, n: int) -> Tensor:
    """[B, K] indices into n items -> [B, n] bool, True where an item was selected (no scatter)."""
    return (idx.unsqueeze(-1) == torch.arange(n, device=idx.device)).any(dim=1)


def rank_among(mask: Tensor) -> Tensor:
    """[B, N] bool -> int64: each True item's index among the True items, in token order.

    Counting runs in float (exact below 2**24 tokens) because CumSum over floats is the form every
    backend supports.
    """
    return mask.to(torch.float32).cumsum(dim=-1).to(torch.int64) - 1


def interleave(even: Tensor, odd: Tensor) -> Tensor:
    """Values of set A (even tokens) and set B (odd tokens), [B, Na] and [B, Nb] -> token order."""
    n_a, n = even.shape[1], even.shape[1] + odd.shape[1]
    order = torch.tensor([p // 2 if p % 2 == 0 else n_a + p // 2 for p in range(n)], device=even.device)
    return torch.index_select(torch.cat((even, odd), dim=1), 1, order)


def compose(where: Tensor, later: Tensor) -> Tensor:
    """Follow two reductions: token i went to ``where[i]``, which then went to ``later[where[i]]``."""
    return later.gather(1, where)


def split_prefix(t: Tensor, num_prefix: int) -> tuple[Tensor, Tensor]:
    return t[:, :num_prefix], t[:, num_prefix:]


def cosine_normalize(t: Tensor) -> Tensor:
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def alternating_similarity(features: Tensor) -> Tensor:
    """Cosine similarity between the even (set A) and odd (set B) tokens: [B, Na, Nb]."""
    unit = cosine_normalize(features)
    return unit[:, ::2] @ unit[:, 1::2].transpose(-1, -2)



def mlerp_rescale(merged: Tensor, dst_norm: Tensor, src_norm: Tensor, assign_t: Tensor) -> Tensor:
    """ToFu's MLERP: each merged average [B, Nd, C] scaled to the largest norm among the tokens merged
    into it, its destination ``dst_norm`` [B, Nd] included. The max over a destination's sources
    ``src_norm`` [B, r] is a ReduceMax over the one-hot assignment ``assign_t`` [B, Nd, r] times the
    norms (norms are >= 0, so unassigned zeros never win): no scatter."""
    largest = torch.maximum(dst_norm, (assign_t * src_norm.unsqueeze(1)).amax(dim=-1))
    return merged * (largest / merged.norm(dim=-1).clamp_min(1e-6)).unsqueeze(-1)

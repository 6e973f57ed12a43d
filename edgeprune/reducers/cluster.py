"""Token clustering and reconstruction for dense prediction (Expedite, Liang et al. 2022).

After a chosen block the patch tokens are grouped into K centers by soft k-means: the centers start
as the average tokens of a coarse grid over the image, and each iteration lets a token choose among
the centers near its own cell only (a locality window), weighted by ``softmax(-distance / tau)``.
The following blocks run on the centers. Before the head, per-patch tokens are re-created from the
refined centers through each token's relation to its nearest centers, measured when it was
clustered.

Two reconstructions are offered: Expedite's (``x_p = sum_k w_pk c_k``) and a residual one that
keeps the pre-cluster token and adds what the blocks did to its centers
(``x_p = x0_p + sum_k w_pk (c_k - c0_k)``, ClustViT's regenerator without training). Everything is
matmuls, one small TopK and constant matrices: static shapes, no scatter.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from edgeprune.plan.methods import option_defaults
from edgeprune.plan.token_counts import center_grid, cluster_macs, feasible_center_counts
from edgeprune.reducers.common import ReductionContext, split_prefix

DEFAULTS = option_defaults("cluster")
PRIOR_MASS = 2.0  # tokens' worth; 1.0 kept 1% more mIoU but doubled the rounding amplification


@dataclass
class Clustering:
    """What a reconstruction needs: token-to-center weights and the state at clustering time."""

    weights: Tensor  # [B, P, K] rows sum to 1 over each token's nearest centers
    tokens: Tensor  # [B, P, C] patch tokens when they were clustered
    centers: Tensor  # [B, K, C] centers when they were formed
    residual: bool

    def restore(self, centers: Tensor) -> Tensor:
        """Refined centers [B, K, C] -> one token per patch [B, P, C]."""
        if self.residual:
            return self.tokens + self.weights @ (centers - self.centers)
        return self.weights @ centers


@lru_cache(maxsize=64)
def _layout(grid: tuple[int, int], centers: tuple[int, int], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Constant matrices: adaptive-average pooling [K, P] (initial centers) and the locality bias
    [P, K] (0 for centers within ``window`` cells of a token's own cell, -inf elsewhere)."""
    (gh, gw), (kh, kw) = grid, centers

    def cells(n: int, m: int) -> list[tuple[int, int]]:  # adaptive pooling bounds, as in PyTorch
        return [(i * n // m, -(-(i + 1) * n // m)) for i in range(m)]

    pool = np.zeros((kh * kw, gh * gw), np.float32)
    for ci, (y0, y1) in enumerate(cells(gh, kh)):
        for cj, (x0, x1) in enumerate(cells(gw, kw)):
            for y in range(y0, y1):
                pool[ci * kw + cj, y * gw + x0: y * gw + x1] = 1.0
    pool /= pool.sum(axis=1, keepdims=True)
    own_row = np.minimum(np.arange(gh) * kh // gh, kh - 1)
    own_col = np.minimum(np.arange(gw) * kw // gw, kw - 1)
    rows = np.abs(own_row[:, None] - np.arange(kh)[None]) <= window  # [gh, kh]
    cols = np.abs(own_col[:, None] - np.arange(kw)[None]) <= window  # [gw, kw]
    near = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(gh * gw, kh * kw)
    bias = np.where(near, 0.0, -np.inf).astype(np.float32)
    return pool, bias


def squared_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared difference per channel between rows of a [B, P, C] and b [B, K, C]: [B, P, K].

    Dividing by C keeps one temperature meaningful across model widths. Both sides are first
    moved by the mean of ``a``: ViT tokens share a large common offset, and the expanded form below
    would otherwise lose digits to cancellation (and differ between engines)."""
    offset = a.mean(dim=1, keepdim=True)
    a, b = a - offset, b - offset
    d = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1).unsqueeze(1) - 2 * a @ b.transpose(1, 2)
    return d.clamp_min(0) / a.shape[-1]


def cluster_tokens(x: Tensor, size: Tensor, ctx: ReductionContext, keep: int,
                   grid: tuple[int, int]) -> tuple[Tensor, Tensor, Clustering]:
    """Cluster the patch tokens of ``x`` into ``keep`` centers; prefix tokens pass through."""
    opts = {**DEFAULTS, **ctx.options}
    tau, iters = float(opts["cluster_tau"]), int(opts["cluster_iters"])
    x_pre, x_tok = split_prefix(x, ctx.num_prefix)
    s_pre, _ = split_prefix(size, ctx.num_prefix)
    if x_tok.shape[1] != grid[0] * grid[1]:
        raise ValueError("clustering needs every patch token of the grid (cluster once, before other reductions)")
    pool, bias = _layout(tuple(grid), center_grid(keep, tuple(grid)), int(opts["cluster_window"]))
    pool_t = torch.as_tensor(pool, device=x.device, dtype=x.dtype)
    bias_t = torch.as_tensor(bias, device=x.device, dtype=x.dtype)

    centers = pool_t @ x_tok  # [B, K, C]
    for _ in range(iters):
        assign = (bias_t - squared_distance(x_tok, centers) / tau).softmax(dim=-1)  # [B, P, K]
        # A center keeps its previous position with the weight of PRIOR_MASS tokens: a center that lost
        # (almost) all its tokens would otherwise be a mean over vanishing weights, as sensitive
        # to rounding as 1 / mass, and its engines' outputs would disagree.
        mass = assign.sum(dim=1).unsqueeze(-1)  # [B, K, 1]
        centers = (assign.transpose(1, 2) @ x_tok + PRIOR_MASS * centers) / (mass + PRIOR_MASS)
    logits = bias_t - squared_distance(x_tok, centers) / tau
    assign = logits.softmax(dim=-1)
    top = int(opts["cluster_topk"])
    if 0 < top < keep:
        kth = logits.topk(top, dim=-1, largest=True, sorted=True).values[..., -1:]
        logits = torch.where(logits >= kth, logits, torch.full_like(logits, float("-inf")))
    weights = logits.softmax(dim=-1)

    sizes = assign.sum(dim=1).unsqueeze(-1)  # soft patch counts, for proportional attention
    x_out = torch.cat((x_pre, centers), dim=1)
    size_out = torch.cat((s_pre, sizes), dim=1)
    return x_out, size_out, Clustering(weights, x_tok, centers, bool(opts["cluster_residual"]))



__all__ = ["Clustering", "DEFAULTS", "center_grid", "cluster_macs", "cluster_tokens", "feasible_center_counts"]

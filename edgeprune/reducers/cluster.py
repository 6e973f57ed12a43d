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

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from edgeprune.reducers.common import ReductionContext, split_prefix

DEFAULTS = {"cluster_iters": 3, "cluster_tau": 0.02, "cluster_window": 2, "cluster_topk": 0,
            "cluster_residual": True}
MAX_ASPECT_DISTORTION = 1.34
PRIOR_MASS = 1.0


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


def center_grid(k: int, grid: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) layout of ``k`` centers over a ``grid`` of patches: the factor pair of k
    closest to the grid's aspect ratio; an error when every layout would distort it too much."""
    gh, gw = grid
    best = None
    for rows in range(1, min(k, gh) + 1):
        if k % rows or k // rows > gw:
            continue
        distortion = math.exp(abs(math.log((rows / (k // rows)) / (gh / gw))))
        if best is None or distortion < best[0]:
            best = (distortion, (rows, k // rows))
    if best is None or best[0] > MAX_ASPECT_DISTORTION:
        raise ValueError(f"{k} centers do not form a grid over {gh}x{gw} patches")
    return best[1]


def feasible_center_counts(grid: tuple[int, int]) -> list[int]:
    """Every K that :func:`center_grid` accepts for ``grid``, ascending."""
    counts = []
    for k in range(1, grid[0] * grid[1] + 1):
        try:
            center_grid(k, grid)
        except ValueError:
            continue
        counts.append(k)
    return counts


@lru_cache(maxsize=64)
def _layout(grid: tuple[int, int], centers: tuple[int, int], window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Constants: adaptive-average pooling [K, P] (initial centers), and per token the centers
    within ``window`` cells of its own cell, [P, NB] indices with a [P, NB] validity mask (rows are
    padded with the token's own cell, marked invalid)."""
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
    span = 2 * window + 1
    slots = min(span, kh) * min(span, kw)
    neighbours = np.zeros((gh * gw, slots), np.int64)
    valid = np.zeros((gh * gw, slots), bool)
    for y in range(gh):
        for x in range(gw):
            near = [r * kw + c for r in range(kh) for c in range(kw)
                    if abs(r - own_row[y]) <= window and abs(c - own_col[x]) <= window]
            row = y * gw + x
            neighbours[row] = near + [own_row[y] * kw + own_col[x]] * (slots - len(near))
            valid[row, : len(near)] = True
    return pool, neighbours, valid


def window_distance(tokens: Tensor, centers: Tensor, neighbours: Tensor) -> Tensor:
    """Mean squared difference per channel between each token [B, P, C] and its window's centers
    (``neighbours`` [P, NB] into centers [B, K, C]): [B, P, NB].

    Differences are taken directly, not as |a|^2 + |b|^2 - 2ab: with a sharp temperature the
    expanded form's rounding (relative ~1e-6) was amplified into 1e-4 disagreements between
    engines. Dividing by C keeps one temperature meaningful across model widths."""
    b, p, c = tokens.shape
    near = torch.index_select(centers, 1, neighbours.reshape(-1)).reshape(b, p, neighbours.shape[1], c)
    return (tokens.unsqueeze(2) - near).pow(2).mean(dim=-1)


def cluster_tokens(x: Tensor, size: Tensor, ctx: ReductionContext, keep: int,
                   grid: tuple[int, int]) -> tuple[Tensor, Tensor, Clustering]:
    """Cluster the patch tokens of ``x`` into ``keep`` centers; prefix tokens pass through."""
    opts = {**DEFAULTS, **ctx.options}
    tau, iters = float(opts["cluster_tau"]), int(opts["cluster_iters"])
    x_pre, x_tok = split_prefix(x, ctx.num_prefix)
    s_pre, _ = split_prefix(size, ctx.num_prefix)
    if x_tok.shape[1] != grid[0] * grid[1]:
        raise ValueError("clustering needs every patch token of the grid (cluster once, before other reductions)")
    pool, neighbours, valid = _layout(tuple(grid), center_grid(keep, tuple(grid)), int(opts["cluster_window"]))
    pool_t = torch.as_tensor(pool, device=x.device, dtype=x.dtype)
    nbr_t = torch.as_tensor(neighbours, device=x.device)
    valid_t = torch.as_tensor(valid, device=x.device)
    # [P, NB, K]: spreads per-window weights back over all centers (a constant one-hot).
    spread = (nbr_t.unsqueeze(-1) == torch.arange(keep, device=x.device)).to(x.dtype) * valid_t.unsqueeze(-1).to(x.dtype)
    blocked = torch.full((), float("-inf"), dtype=x.dtype, device=x.device)

    def window_logits(centers: Tensor) -> Tensor:
        return torch.where(valid_t, -window_distance(x_tok, centers, nbr_t) / tau, blocked)

    def dense(weights: Tensor) -> Tensor:  # [B, P, NB] -> [B, P, K]
        return (weights.unsqueeze(-2) @ spread).squeeze(-2)

    centers = pool_t @ x_tok  # [B, K, C]
    for _ in range(iters):
        assign = dense(window_logits(centers).softmax(dim=-1))  # [B, P, K]
        # A center keeps its previous position with the weight of one token: a center that lost
        # (almost) all its tokens would otherwise be a mean over vanishing weights, as sensitive
        # to rounding as 1 / mass, and its engines' outputs would disagree.
        mass = assign.sum(dim=1).unsqueeze(-1)  # [B, K, 1]
        centers = (assign.transpose(1, 2) @ x_tok + PRIOR_MASS * centers) / (mass + PRIOR_MASS)
    logits = window_logits(centers)
    sizes = dense(logits.softmax(dim=-1)).sum(dim=1).unsqueeze(-1)  # soft patch counts
    top = int(opts["cluster_topk"])
    if 0 < top < logits.shape[-1]:
        kth = logits.topk(top, dim=-1, largest=True, sorted=True).values[..., -1:]
        logits = torch.where(logits >= kth, logits, blocked)
    weights = dense(logits.softmax(dim=-1))

    x_out = torch.cat((x_pre, centers), dim=1)
    size_out = torch.cat((s_pre, sizes), dim=1)
    return x_out, size_out, Clustering(weights, x_tok, centers, bool(opts["cluster_residual"]))


def cluster_macs(num_patches: int, k: int, dim: int, iters: int, window: int = DEFAULTS["cluster_window"]) -> int:
    """Window distances (and spreading them over the centers) for every iteration and the final
    weights, plus one center update per iteration."""
    slots = min(k, (2 * window + 1) ** 2)
    return (iters + 1) * num_patches * slots * (dim + k) + iters * num_patches * k * dim


__all__ = ["Clustering", "DEFAULTS", "center_grid", "cluster_macs", "cluster_tokens", "feasible_center_counts"]

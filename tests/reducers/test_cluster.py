"""Expedite-style clustering: center layouts, shapes and prefix passthrough, the reconstruction
weights (normalised, sparse, local), exact residual restore, and batch independence."""

from __future__ import annotations

import math

import pytest
import torch

from edgeprune.reducers import ReductionContext
from edgeprune.plan.token_counts import MAX_ASPECT_DISTORTION, center_grid, feasible_center_counts
from edgeprune.reducers.cluster import Clustering, cluster_tokens

BATCH, DIM = 3, 16


def make_inputs(seed: int, prefix: int, grid: tuple[int, int], **options):
    gen = torch.Generator().manual_seed(seed)
    n = prefix + grid[0] * grid[1]
    x = torch.randn(BATCH, n, DIM, generator=gen)
    size = torch.ones(BATCH, n, 1)
    q = torch.randn(BATCH, 2, n, DIM // 2, generator=gen)
    k = torch.randn(BATCH, 2, n, DIM // 2, generator=gen)
    return x, size, ReductionContext(q, k, (DIM // 2) ** -0.5, prefix, options=options)


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,grid,expected", [
    (1, (8, 8), (1, 1)),
    (4, (8, 8), (2, 2)),
    (16, (8, 8), (4, 4)),
    (64, (8, 8), (8, 8)),
    (12, (8, 8), (3, 4)),  # 4/3 is just inside the allowed distortion; (4, 3) ties and loses
    (6, (8, 12), (2, 3)),
    (6, (12, 8), (3, 2)),
    (24, (8, 12), (4, 6)),
    (96, (8, 12), (8, 12)),
])
def test_center_grid_follows_the_aspect(k, grid, expected):
    rows, cols = center_grid(k, grid)
    assert (rows, cols) == expected
    assert rows * cols == k and rows <= grid[0] and cols <= grid[1]


@pytest.mark.parametrize("k,grid", [
    (7, (8, 8)),  # prime on a square grid: only 1x7 / 7x1
    (13, (8, 8)),
    (2, (8, 8)),  # 1x2 distorts by 2
    (8, (8, 8)),  # 2x4 distorts by 2
    (6, (8, 8)),  # 2x3 distorts by 1.5
    (65, (8, 8)),  # more centers than patches
    (10, (4, 4)),  # 2x5 needs 5 columns
])
def test_center_grid_rejects_distorted_layouts(k, grid):
    with pytest.raises(ValueError, match="do not form a grid"):
        center_grid(k, grid)


@pytest.mark.parametrize("grid", [(4, 4), (8, 8), (14, 14)])
def test_feasible_counts_on_square_grids(grid):
    counts = feasible_center_counts(grid)
    assert counts == sorted(set(counts))
    assert {s * s for s in range(1, grid[0] + 1)} <= set(counts)
    for prime in (2, 3, 5, 7, 11, 13):
        if prime < grid[0] * grid[1]:
            assert prime not in counts
    for k in counts:
        rows, cols = center_grid(k, grid)
        assert math.exp(abs(math.log(rows / cols))) <= MAX_ASPECT_DISTORTION


def test_feasible_counts_on_wide_grid():
    counts = feasible_center_counts((8, 12))
    assert 6 in counts and 24 in counts and 96 in counts
    assert 4 not in counts and 16 not in counts  # square layouts distort a 2:3 grid by 1.5
    assert all(k <= 96 for k in counts)


# ---------------------------------------------------------------------------------------------
# cluster_tokens
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [0, 1, 5])
@pytest.mark.parametrize("keep,grid", [(16, (8, 8)), (4, (8, 8)), (6, (4, 6)), (9, (6, 6))])
def test_shapes_and_prefix_passthrough(prefix, keep, grid):
    x, size, ctx = make_inputs(prefix * 31 + keep, prefix, grid)
    size = size.clone()
    size[:, :prefix] = 3.0  # prefix sizes must pass through unchanged too
    out, out_size, clustering = cluster_tokens(x, size, ctx, keep, grid)
    p = grid[0] * grid[1]
    assert out.shape == (BATCH, prefix + keep, DIM)
    assert out_size.shape == (BATCH, prefix + keep, 1)
    assert torch.equal(out[:, :prefix], x[:, :prefix])
    assert torch.equal(out_size[:, :prefix], size[:, :prefix])
    # Soft patch counts: every patch is spread over the centers with total weight 1.
    torch.testing.assert_close(out_size[:, prefix:].sum(1), torch.full((BATCH, 1), float(p)))
    assert clustering.weights.shape == (BATCH, p, keep)
    assert torch.equal(clustering.tokens, x[:, prefix:])
    assert torch.equal(clustering.centers, out[:, prefix:])
    assert torch.isfinite(out).all() and torch.isfinite(clustering.weights).all()
    assert clustering.restore(out[:, prefix:]).shape == (BATCH, p, DIM)


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_residual_restore_of_unchanged_centers_is_exact(prefix):
    x, size, ctx = make_inputs(100 + prefix, prefix, (8, 8))
    out, _, clustering = cluster_tokens(x, size, ctx, 16, (8, 8))
    assert clustering.residual  # the default
    assert torch.equal(clustering.restore(out[:, prefix:]), x[:, prefix:])
    # What the later blocks add to the centers is carried to the patches through the weights.
    delta = torch.randn_like(out[:, prefix:])
    restored = clustering.restore(out[:, prefix:] + delta)
    torch.testing.assert_close(restored, x[:, prefix:] + clustering.weights @ delta)


def test_plain_restore_is_weighted_centers():
    x, size, ctx = make_inputs(5, 1, (8, 8), cluster_residual=False)
    out, _, clustering = cluster_tokens(x, size, ctx, 16, (8, 8))
    assert not clustering.residual
    centers = torch.randn_like(out[:, 1:])
    torch.testing.assert_close(clustering.restore(centers), clustering.weights @ centers)
    # Rows sum to one, so a constant token everywhere is restored as that constant.
    const = torch.ones_like(centers) * 2.5
    torch.testing.assert_close(clustering.restore(const), torch.full_like(x[:, 1:], 2.5))


def window_mask(grid: tuple[int, int], centers: tuple[int, int], window: int) -> torch.Tensor:
    """[P, K] True where center (r, c) is within ``window`` center cells of the patch's own cell."""
    (gh, gw), (kh, kw) = grid, centers
    allowed = torch.zeros(gh * gw, kh * kw, dtype=torch.bool)
    for y in range(gh):
        for x in range(gw):
            own_r, own_c = min(y * kh // gh, kh - 1), min(x * kw // gw, kw - 1)
            for r in range(kh):
                for c in range(kw):
                    allowed[y * gw + x, r * kw + c] = abs(own_r - r) <= window and abs(own_c - c) <= window
    return allowed


@pytest.mark.parametrize("window,topk,tau", [(1, 4, 0.02), (2, 4, 0.02), (1, 3, 2.0), (0, 4, 2.0), (2, 2, 1.0)])
@pytest.mark.parametrize("prefix", [0, 1])
def test_weights_are_normalised_sparse_and_local(window, topk, tau, prefix):
    grid, keep = (8, 8), 16
    x, size, ctx = make_inputs(window * 7 + topk + prefix, prefix, grid,
                               cluster_window=window, cluster_topk=topk, cluster_tau=tau)
    _, _, clustering = cluster_tokens(x, size, ctx, keep, grid)
    w = clustering.weights
    torch.testing.assert_close(w.sum(-1), torch.ones(BATCH, grid[0] * grid[1]))
    assert (w >= 0).all()
    nonzero = w > 0
    assert (nonzero.sum(-1) <= topk).all() and (nonzero.sum(-1) >= 1).all()
    outside = ~window_mask(grid, center_grid(keep, grid), window)
    assert not (nonzero & outside).any(), "a patch draws on a center outside its locality window"
    if tau >= 1.0:  # a high temperature spreads weight over every allowed center up to top-k
        assert (nonzero.sum(-1) == min(topk, int((~outside).sum(-1).min()))).all()


def test_clusters_recover_piecewise_constant_image():
    """Four flat quadrants plus small noise: four centers land on the four quadrant values and the
    plain reconstruction gives every patch its quadrant's value back."""
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(BATCH, 4, DIM, generator=gen) * 3
    quadrant = torch.tensor([(y // 4) * 2 + (x // 4) for y in range(8) for x in range(8)])
    tokens = values[:, quadrant] + 0.01 * torch.randn(BATCH, 64, DIM, generator=gen)
    x = torch.cat((torch.randn(BATCH, 1, DIM, generator=gen), tokens), dim=1)
    ctx = ReductionContext(torch.zeros(BATCH, 1, 65, DIM), torch.zeros(BATCH, 1, 65, DIM), 1.0, 1,
                           options={"cluster_residual": False})
    out, out_size, clustering = cluster_tokens(x, torch.ones(BATCH, 65, 1), ctx, 4, (8, 8))
    torch.testing.assert_close(out[:, 1:], values, atol=0.01, rtol=0)
    torch.testing.assert_close(out_size[:, 1:, 0], torch.full((BATCH, 4), 16.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(clustering.restore(out[:, 1:]), values[:, quadrant], atol=0.01, rtol=0)


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_batch_elements_independent(prefix):
    x, size, ctx = make_inputs(50 + prefix, prefix, (8, 8))
    out, out_size, clustering = cluster_tokens(x, size, ctx, 16, (8, 8))
    for b in range(BATCH):
        one = ReductionContext(ctx.q[b : b + 1], ctx.k[b : b + 1], ctx.scale, prefix)
        s_out, s_size, s_cl = cluster_tokens(x[b : b + 1], size[b : b + 1], one, 16, (8, 8))
        torch.testing.assert_close(s_out[0], out[b], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s_size[0], out_size[b], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s_cl.weights[0], clustering.weights[b], rtol=1e-5, atol=1e-5)


def test_clustering_needs_the_full_grid():
    x, size, ctx = make_inputs(1, 1, (8, 8))
    with pytest.raises(ValueError, match="every patch token"):
        cluster_tokens(x[:, :-1], size[:, :-1], ctx, 16, (8, 8))
    with pytest.raises(ValueError, match="do not form a grid"):
        cluster_tokens(x, size, ctx, 7, (8, 8))


def test_clustering_dataclass_restore_by_hand():
    weights = torch.tensor([[[1.0, 0.0], [0.25, 0.75]]])
    tokens = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])
    centers = torch.tensor([[[0.0, 0.0], [4.0, 8.0]]])
    moved = centers + torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    assert Clustering(weights, tokens, centers, True).restore(moved).tolist() == [[[2.0, 1.0], [2.25, 3.5]]]
    assert Clustering(weights, tokens, centers, False).restore(moved).tolist() == [[[1.0, 0.0], [3.25, 7.5]]]

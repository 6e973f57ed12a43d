"""Token arithmetic the reducers and the cost models share: how many tokens each round removes,
how a removal splits between merging and pruning, which center counts form a grid.

Pure Python (no torch): plans, MACs and latency models are computed where only the runtime is
installed, and the reducers (which do need torch) import these same functions.
"""

from __future__ import annotations

import math

# Cluster layouts whose rows/cols ratio strays further than this from the patch grid's are refused.
MAX_ASPECT_DISTORTION = 1.34


def check_round(num_tok: int, r: int) -> None:
    """One bipartite round can remove 1..len(A) tokens, A being the even half."""
    num_a = (num_tok + 1) // 2
    if not 0 < r <= num_a:
        raise ValueError(f"a bipartite round removes 1..{num_a} of {num_tok} tokens, asked for {r}")


def round_sizes(num_tok: int, keep: int) -> list[int]:
    """How many tokens each bipartite round removes to go from ``num_tok`` to ``keep``: a round
    takes at most half, so big steps at one reduction point run as several rounds."""
    sizes = []
    while num_tok > keep:
        r = min(num_tok - keep, (num_tok + 1) // 2)
        sizes.append(r)
        num_tok -= r
    return sizes


def split_removed(removed: int, prune_share: float) -> tuple[int, int]:
    """(merged, pruned) counts of ``removed`` tokens; the pruned ones are the least important."""
    if not 0.0 <= prune_share <= 1.0:
        raise ValueError(f"prune_share must be in [0, 1], got {prune_share}")
    pruned = int(round(removed * prune_share))
    return removed - pruned, pruned


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


def cluster_macs(num_patches: int, k: int, dim: int, iters: int) -> int:
    """Distances and center updates per iteration, plus the final distances."""
    return (2 * iters + 1) * num_patches * k * dim

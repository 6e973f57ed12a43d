"""Float64 NumPy references for the selectors, to check the exported graphs against.

:func:`greedy_map_reference` is the textbook greedy MAP of a DPP (Chen, Zhang & Zhou 2018, fast greedy
MAP inference) for one image, with the same floor on the pivot as :func:`edgeprune.mllm.select.greedy_dpp`
so that both agree past the kernel's rank. It also returns, at every step, the gap between the best
and the second-best gain: where that gap is at float32 rounding level, the float32 graph may
legitimately pick the other token (a near-tie), and a comparison reports it instead of hiding it.
"""

from __future__ import annotations

import numpy as np

from edgeprune.mllm.select import DPP_EPS, RELEVANCE_EPS


def relevance_reference(joint: np.ndarray, query: np.ndarray, negate: bool = False) -> np.ndarray:
    """[N, D] tokens, [D] query -> min-max normalised relevance [N] (float64)."""
    joint = joint.astype(np.float64)
    unit = joint / np.maximum(np.linalg.norm(joint, axis=-1, keepdims=True), 1e-6)
    score = unit @ query.astype(np.float64)
    score = -score if negate else score
    return (score - score.min()) / max(score.max() - score.min(), RELEVANCE_EPS)


def kernel_reference(similar: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """diag(r) S diag(r) with S the cosine similarity of ``similar`` [N, D] (float64)."""
    x = similar.astype(np.float64)
    unit = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    weighted = unit * rel[:, None]
    return weighted @ weighted.T


def greedy_map_reference(kernel: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """Picks in order, and per step the relative gap between the best and second-best gain."""
    kernel = kernel.astype(np.float64)
    n = kernel.shape[0]
    gains = np.diag(kernel).copy()
    factor = np.zeros((0, n))
    picks: list[int] = []
    gaps: list[float] = []
    for step in range(k):
        order = np.argsort(-gains, kind="stable")
        best = int(order[0])
        second = gains[order[1]] if n > 1 and np.isfinite(gains[order[1]]) else -np.inf
        scale = max(abs(gains[best]), 1e-12)
        gaps.append(float((gains[best] - second) / scale) if np.isfinite(second) else float("inf"))
        picks.append(best)
        if step == k - 1:
            break
        row = kernel[best] - factor[:, best] @ factor
        column = row / np.sqrt(max(gains[best], DPP_EPS))
        factor = np.vstack([factor, column])
        gains = gains - column**2
        gains[best] = -np.inf
    return picks, gaps

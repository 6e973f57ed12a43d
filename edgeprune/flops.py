"""Analytic multiply-accumulate (MAC) counts of a ViT under a token plan.

Counts the matmuls (projections, attention, MLP, patch embedding, head, and the reducers' own
similarity and merge matmuls); norms and activations are left out as they are a few percent at most.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from edgeprune.reducers.common import round_sizes
from edgeprune.spec import ViTSpec

if TYPE_CHECKING:
    from edgeprune.plan import TokenPlan


def attention_macs(spec: ViTSpec, n: int) -> int:
    c, a = spec.embed_dim, spec.attn_dim
    return n * c * 3 * a + 2 * n * n * a + n * a * c


def mlp_macs(spec: ViTSpec, n: int) -> int:
    return 2 * n * spec.embed_dim * spec.mlp_hidden


def reducer_macs(spec: ViTSpec, method: str, n_tok_in: int, n_tok_out: int, options: Optional[dict] = None) -> int:
    """MACs of one reduction point from ``n_tok_in`` to ``n_tok_out`` patch tokens."""
    if n_tok_out >= n_tok_in or method in ("none", "pass"):
        return 0
    if method == "cluster":
        from edgeprune.reducers.cluster import DEFAULTS, cluster_macs

        iters = int({**DEFAULTS, **(options or {})}["cluster_iters"])
        return cluster_macs(n_tok_in, n_tok_out, spec.embed_dim, iters) + n_tok_in * spec.embed_dim
    if method == "evit":
        return spec.num_heads * n_tok_in * spec.head_dim + n_tok_in * spec.embed_dim
    if method == "prune-merge":  # CLS attention row, removed-to-kept similarity, the merge matmul
        from edgeprune.reducers.prune_merge import DEFAULTS, split_removed

        removed = n_tok_in - n_tok_out
        merged, _ = split_removed(removed, float({**DEFAULTS, **(options or {})}["prune_share"]))
        return spec.num_heads * n_tok_in * spec.head_dim + removed * n_tok_out * spec.head_dim + merged * n_tok_out * spec.embed_dim
    width = spec.head_dim if method in ("tome", "tofu") else spec.embed_dim
    macs, n = 0, n_tok_in
    for r in round_sizes(n_tok_in, n_tok_out):  # the rounds the reducers run
        n_a, n_b = (n + 1) // 2, n // 2
        macs += n_a * n_b * width + n_b * r * spec.embed_dim
        n -= r
    return macs


def embed_macs(spec: ViTSpec) -> int:
    if spec.stem_macs:
        return spec.stem_macs
    return spec.num_patches * spec.in_chans * spec.patch_size**2 * spec.embed_dim


def head_macs(spec: ViTSpec) -> int:
    return spec.embed_dim * spec.head_dim_out


def block_macs(spec: ViTSpec, method: str, n_tok_in: int, n_tok_out: int, options: Optional[dict] = None) -> int:
    """One block whose attention sees ``n_tok_in`` patch tokens and whose MLP sees ``n_tok_out``."""
    p = spec.num_prefix
    return (
        attention_macs(spec, p + n_tok_in)
        + reducer_macs(spec, method, n_tok_in, n_tok_out, options)
        + mlp_macs(spec, p + n_tok_out)
    )


def prefix_block_macs(spec: ViTSpec, n_tok_in: int) -> int:
    """The last block run for the prefix tokens only: keys and values for every token, queries,
    attention rows, out-projection and MLP for the prefix."""
    p, c, a = spec.num_prefix, spec.embed_dim, spec.attn_dim
    n = p + n_tok_in
    return n * c * 2 * a + p * c * a + 2 * p * n * a + p * a * c + mlp_macs(spec, p)


def restore_macs(spec: ViTSpec, method: str, tokens: int) -> int:
    """Putting one token back per patch before a dense head: gathers are free, a cluster
    reconstruction is one [P, K] x [K, C] matmul."""
    if method != "cluster" or tokens >= spec.num_patches:
        return 0
    return spec.num_patches * tokens * spec.embed_dim


def plan_macs(plan: "TokenPlan") -> int:
    spec = plan.spec
    total = embed_macs(spec) + head_macs(spec) + spec.dense_head_macs
    n_in = spec.num_patches
    for i, n_out in enumerate(plan.keep):
        if plan.prefix_only_last and i == spec.depth - 1:
            total += prefix_block_macs(spec, n_in)
            continue
        total += block_macs(spec, plan.method, n_in, n_out, plan.options)
        if i in spec.feature_blocks:
            total += restore_macs(spec, plan.method, n_out)
        n_in = n_out
    return total


def baseline_macs(spec: ViTSpec) -> int:
    n = spec.num_patches
    return embed_macs(spec) + head_macs(spec) + spec.dense_head_macs + spec.depth * block_macs(spec, "none", n, n)

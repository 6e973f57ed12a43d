"""Analytic multiply-accumulate (MAC) counts of a ViT under a token plan.

Counts the matmuls (projections, attention, MLP, patch embedding, head, and the reducers' own
similarity and merge matmuls); norms and activations are left out as they are a few percent at most.
"""

from __future__ import annotations

from typing import Any, Optional

from edgeprune.core.spec import ViTSpec
from edgeprune.plan import methods


def attention_macs(spec: ViTSpec, n: int) -> int:
    c, a = spec.embed_dim, spec.attn_dim
    return n * c * 3 * a + 2 * n * n * a + n * a * c


def mlp_macs(spec: ViTSpec, n: int) -> int:
    return 2 * n * spec.embed_dim * spec.mlp_hidden


def reducer_macs(spec: ViTSpec, method: str, n_tok_in: int, n_tok_out: int, options: Optional[dict] = None) -> int:
    """MACs of one reduction point from ``n_tok_in`` to ``n_tok_out`` patch tokens (the method's
    declared term, see :mod:`edgeprune.plan.methods`)."""
    if n_tok_out >= n_tok_in:
        return 0
    return methods.get(method).macs(spec, n_tok_in, n_tok_out, options or {})


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


def plan_macs(plan: Any) -> int:
    """MACs of a TokenPlan (duck-typed: this module sits below the plan it counts)."""
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

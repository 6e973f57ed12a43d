"""The reduced forward pass of dense-prediction models: reduce tokens, then give every patch its
token back before the head.

Three ways of giving tokens back, one per kind of reduction:

* merge/prune (``tome``, ``evit``, ``gsp``): each reducer reports where every incoming patch token
  went; composing those maps gives, per patch, the index of the token that now stands for it, and
  one gather restores a token per patch (merge -> unmerge);
* token pass (``pass``): stopped tokens are parked with their features; the same kind of map points
  into ``cat(active tokens, parked tokens)``;
* clustering (``cluster``): the centers are turned back into patch tokens through each token's
  weights to its nearest centers (:class:`~edgeprune.reducers.cluster.Clustering`).

The head sees restored tokens at every feature block, so a multi-level head gets full-resolution
maps at each level. All of it is static-shape: gathers, small TopKs and matmuls.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from edgeprune.families.base import ReducedViT
from edgeprune.reducers import ReductionContext
from edgeprune.reducers.cluster import Clustering, cluster_tokens
from edgeprune.reducers.common import compose, gather_tokens
from edgeprune.reducers.token_pass import pass_tokens


class DenseState:
    """Where every patch's token is: the running tokens, parked tokens, and the patch map."""

    def __init__(self, x: Tensor, num_prefix: int) -> None:
        self.num_prefix = num_prefix
        self.num_patches = x.shape[1] - num_prefix
        self.where: Optional[Tensor] = None  # patch -> index in cat(active, parked); None: identity
        self.parked: Optional[Tensor] = None
        self.anchors: Optional[Tensor] = None  # per parked token: index of its anchor in cat(active, parked)
        self.anchors_then: Optional[Tensor] = None  # the anchors' features when the token was parked
        self.clustering: Optional[Clustering] = None

    def moved(self, step: Tensor, num_active_in: int) -> None:
        """Active tokens were reduced: ``step`` maps the ``num_active_in`` active tokens to their new
        index; parked tokens keep theirs (new ones are parked in front of older ones)."""
        if self.parked is not None:
            tail = torch.arange(num_active_in, self.num_patches, device=step.device).expand(step.shape[0], -1)
            step = torch.cat((step, tail), dim=1)
        self.where = step[:, : self.num_patches] if self.where is None else compose(self.where, step)
        if self.anchors is not None:
            self.anchors = compose(self.anchors, step)

    def park(self, parked: Tensor, anchors: Optional[Tensor], anchors_then: Optional[Tensor]) -> None:
        """New parked tokens go in front of older ones; ``anchors`` index the active tokens."""
        self.parked = parked if self.parked is None else torch.cat((parked, self.parked), dim=1)
        if anchors is not None:
            self.anchors = anchors if self.anchors is None else torch.cat((anchors, self.anchors), dim=1)
            self.anchors_then = anchors_then if self.anchors_then is None else torch.cat((anchors_then, self.anchors_then), dim=1)
    def restore(self, x: Tensor) -> Tensor:
        """Running tokens [B, prefix + n, C] -> one token per patch [B, P, C], in patch order."""
        tokens = x[:, self.num_prefix:]
        if self.clustering is not None:
            return self.clustering.restore(tokens)
        if self.parked is not None:
            parked = self.parked
            if self.anchors is not None:  # carry each anchor's update since the stop over
                stale = torch.cat((tokens, parked), dim=1)
                parked = parked + gather_tokens(stale, self.anchors) - self.anchors_then
            tokens = torch.cat((tokens, parked), dim=1)
        return tokens if self.where is None else gather_tokens(tokens, self.where)


class ReducedDense(ReducedViT):
    """Runs a dense adapter's model under a plan; logits keep the input resolution."""

    def forward(self, pixels: Tensor) -> Tensor:
        plan, spec = self.plan, self.plan.spec
        x = self.adapter.embed(pixels)
        state = DenseState(x, spec.num_prefix)
        feats: list[Tensor] = []

        def reduce(x: Tensor, x_in: Tensor, size: Tensor, ctx: ReductionContext, keep: int, n_in: int) -> tuple[Tensor, Tensor]:
            if plan.method == "cluster":
                x, size, state.clustering = cluster_tokens(x, size, ctx, keep, spec.grid)
            elif plan.method == "pass":
                x, size, parked, step, anchors, anchors_then = pass_tokens(x, x_in, size, ctx, keep)
                state.moved(step, n_in)
                carry = bool(plan.options.get("pass_carry", True))
                state.park(parked, anchors if carry else None, anchors_then if carry else None)
            else:
                x, size, step = self.reducer(x, size, ctx, keep)
                state.moved(step, n_in)
            return x, size

        def tap(i: int, x: Tensor) -> None:
            if i in spec.feature_blocks:
                tokens = state.restore(x)
                feats.append(self.adapter.final_norm(tokens) if i == spec.feature_blocks[-1] else tokens)

        self.run_blocks(x, torch.ones_like(x[..., :1]), reduce, tap)
        return self.adapter.head(feats, pixels.shape[-2:])


__all__ = ["DenseState", "ReducedDense"]

"""Model-family adapters and the reduced forward pass they share.

An adapter is a thin view of one model family (timm ViT, HF CLIP vision, ...): how to embed pixels,
how to reach each block's norms, projections and MLP, and how to turn the final tokens into the
family's outputs. :class:`ReducedViT` runs any adapter's model under a :class:`TokenPlan` without
editing the library's source: it calls the model's own submodules in its own block loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeprune.core.errors import EdgepruneError
from edgeprune.plan.token_plan import TokenPlan
from edgeprune.reducers import REDUCERS, ReductionContext
from edgeprune.core.spec import ViTSpec


class BlockView(ABC):
    """One pre-norm transformer block seen as its parts."""

    scale: float

    @abstractmethod
    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalized tokens [B, N, C] -> q, k, v [B, H, N, D] (after any q/k norms)."""

    @abstractmethod
    def attn_out(self, a: Tensor) -> Tensor:
        """Attention output [B, H, N, D] -> projected tokens [B, N, C]."""

    def prefix_query_qkv(self, h: Tensor, num_query: int) -> tuple[Tensor, Tensor, Tensor]:
        """q for the first ``num_query`` tokens only, k and v for all: the last block of a model whose
        head reads only the prefix tokens. Families with a fused qkv projection override this to
        project queries for those tokens alone (the saving the MACs count assumes)."""
        q, k, v = self.qkv(h)
        return q[:, :, :num_query], k, v

    norm1: Callable[[Tensor], Tensor]
    norm2: Callable[[Tensor], Tensor]
    mlp: Callable[[Tensor], Tensor]
    ls1: Callable[[Tensor], Tensor]
    ls2: Callable[[Tensor], Tensor]


class FamilyAdapter(ABC):
    """How edgeprune drives one model family."""

    family: ClassVar[str]
    output_names: tuple[str, ...]

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @classmethod
    @abstractmethod
    def matches(cls, model: nn.Module) -> bool:
        """True when ``model`` belongs to this family."""

    @property
    @abstractmethod
    def spec(self) -> ViTSpec: ...

    @abstractmethod
    def embed(self, pixels: Tensor) -> Tensor:
        """Pixels [B, C, H, W] -> tokens [B, N, C] entering block 0 (prefix tokens first)."""

    @abstractmethod
    def blocks(self) -> list[BlockView]: ...

    @abstractmethod
    def finish(self, x: Tensor, size: Tensor) -> tuple[Tensor, ...]:
        """Final tokens and their sizes -> the family's outputs, in ``output_names`` order."""

    def input_config(self) -> Optional[dict]:
        """The preprocessing the model was trained with, ``{"mean": [...], "std": [...]}`` (pixels in
        0..1, per channel), when the model itself records it (timm ``pretrained_cfg``); None otherwise."""
        return None

    def reduced(self, plan: TokenPlan) -> nn.Module:
        """The model with ``plan`` applied (a module whose outputs are ``output_names``)."""
        return ReducedViT(self, plan)

    def describe(self) -> dict:
        """Model facts for the manifest."""
        return {"family": self.family, "class": type(self.model).__name__}


def size_weighted_mean(x: Tensor, size: Tensor) -> Tensor:
    """Mean over tokens where a merged token counts as many patches as it stands for."""
    return (x * size).sum(dim=1) / size.sum(dim=1)


class ReducedViT(nn.Module):
    """Runs a supported ViT with a token plan baked in; output shapes are static for the plan."""

    def __init__(self, adapter: FamilyAdapter, plan: TokenPlan) -> None:
        super().__init__()
        if plan.spec != adapter.spec:
            raise EdgepruneError("the plan was built for a different model configuration")
        self.model = adapter.model.eval()
        self.adapter = adapter
        self.plan = plan
        self.views = adapter.blocks()
        self.reducer = REDUCERS.get(plan.method)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.adapter.output_names

    def forward(self, pixels: Tensor):
        x = self.adapter.embed(pixels)
        x, size = self.run_blocks(x, torch.ones_like(x[..., :1]), self._reduce)
        out = self.adapter.finish(x, size)
        return out[0] if len(out) == 1 else out

    def forward_from(self, x: Tensor, start: int) -> tuple[Tensor, ...]:
        """The outputs, from the (unreduced) tokens entering block ``start``: a search over plans
        that agree on the first blocks runs those once and starts every candidate here."""
        if any(k < self.plan.spec.num_patches for k in self.plan.keep[:start]):
            raise EdgepruneError(f"the plan reduces before block {start}; it cannot start from unreduced tokens there")
        x, size = self.run_blocks(x, torch.ones_like(x[..., :1]), self._reduce, start=start)
        return self.adapter.finish(x, size)

    def run_blocks(self, x: Tensor, size: Tensor, reduce: Callable, after: Optional[Callable[[int, Tensor], None]] = None,
                   start: int = 0) -> tuple[Tensor, Tensor]:
        """The block loop from block ``start``: ``reduce(x, x_in, size, ctx, keep, n_in) -> (x, size)``
        runs at each reduction point (between attention and MLP); ``after(i, x)`` sees every block's output."""
        plan = self.plan
        for i, view in enumerate(self.views):
            if i < start:
                continue
            # Sizes are all 1 until the first reduction, where log(size) would add nothing.
            merged = plan.prop_attn and i > 0 and plan.keep[i - 1] < plan.spec.num_patches
            bias = size.log().transpose(1, 2).unsqueeze(1) if merged else None
            x, size = self._block(view, x, size, bias, i, reduce)
            if after is not None:
                after(i, x)
        return x, size

    def _block(self, view: BlockView, x: Tensor, size: Tensor, bias: Optional[Tensor], i: int,
               reduce: Callable) -> tuple[Tensor, Tensor]:
        if self.plan.prefix_only_last and i == self.plan.spec.depth - 1:
            return self._prefix_block(view, x, size, bias)
        x_in = x
        q, k, v = view.qkv(view.norm1(x))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=view.scale)
        x = x + view.ls1(view.attn_out(a))
        plan = self.plan
        keep, n_in = plan.keep[i], plan.tokens_in(i)
        if plan.method != "none" and keep < n_in:
            spec = plan.spec
            ctx = ReductionContext(q, k, view.scale, spec.num_prefix, bias, plan.options, spec.class_token, block=i)
            x, size = reduce(x, x_in, size, ctx, keep, n_in)
        x = x + view.ls2(view.mlp(view.norm2(x)))
        return x, size

    def _prefix_block(self, view: BlockView, x: Tensor, size: Tensor, bias: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """The last block for the prefix tokens alone: their queries attend to every token, then only
        they go through the MLP. Exact for a head that reads nothing else."""
        p = self.plan.spec.num_prefix
        q, k, v = view.prefix_query_qkv(view.norm1(x), p)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=view.scale)
        x = x[:, :p] + view.ls1(view.attn_out(a))
        x = x + view.ls2(view.mlp(view.norm2(x)))
        return x, size[:, :p]

    def _reduce(self, x: Tensor, x_in: Tensor, size: Tensor, ctx: ReductionContext, keep: int, n_in: int) -> tuple[Tensor, Tensor]:
        x, size, _ = self.reducer(x, size, ctx, keep)
        return x, size

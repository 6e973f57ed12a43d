"""timm VisionTransformer family: vit_*, deit_* (distilled too), register tokens, avg/token pooling."""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from edgeprune.core.errors import EdgepruneError
from edgeprune.families.base import BlockView, FamilyAdapter, size_weighted_mean
from edgeprune.core.spec import ViTSpec

SIZE_AWARE_POOLS = ("avg", "avgmax", "max")


class TimmBlockView(BlockView):
    def __init__(self, block: nn.Module) -> None:
        attn = block.attn
        self.attn = attn
        self.scale = float(attn.scale)
        self.norm1, self.norm2, self.mlp = block.norm1, block.norm2, block.mlp
        self.ls1, self.ls2 = block.ls1, block.ls2

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attn = self.attn
        b, n, _ = h.shape
        q, k, v = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return attn.q_norm(q), attn.k_norm(k), v

    def prefix_query_qkv(self, h: Tensor, num_query: int) -> tuple[Tensor, Tensor, Tensor]:
        attn = self.attn
        b, n, _ = h.shape
        width = attn.num_heads * attn.head_dim
        weight, bias = attn.qkv.weight, attn.qkv.bias
        q = F.linear(h[:, :num_query], weight[:width], None if bias is None else bias[:width])
        kv = F.linear(h, weight[width:], None if bias is None else bias[width:])
        q = q.reshape(b, num_query, attn.num_heads, attn.head_dim).transpose(1, 2)
        k, v = kv.reshape(b, n, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return attn.q_norm(q), attn.k_norm(k), v

    def attn_out(self, a: Tensor) -> Tensor:
        b, _, n, _ = a.shape
        x = a.transpose(1, 2).reshape(b, n, self.attn.attn_dim)
        return self.attn.proj(self.attn.norm(x))


class TimmViTAdapter(FamilyAdapter):
    family = "timm-vit"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        from timm.layers import Attention
        from timm.models.vision_transformer import Block

        for i, block in enumerate(model.blocks):
            if type(block) is not Block or type(block.attn) is not Attention:
                raise EdgepruneError(
                    f"block {i} is {type(block).__name__}/{type(getattr(block, 'attn', None)).__name__}; "
                    "edgeprune supports timm's pre-norm Block with the standard Attention"
                )
            if getattr(block.attn, "gate", None) is not None:
                raise EdgepruneError(f"block {i} uses gated attention, which edgeprune does not support")
        pool = "map" if model.attn_pool is not None else model.global_pool
        if pool not in ("token", "map", "", *SIZE_AWARE_POOLS):
            raise EdgepruneError(f"global_pool '{pool}' is not supported")
        if getattr(model.patch_embed, "dynamic_img_size", False):
            raise EdgepruneError("dynamic_img_size models are not supported: export needs a fixed image size")
        self.distilled = hasattr(model, "head_dist")
        self.pool = pool
        self.output_names = ("tokens",) if (pool == "" and not self.distilled) else ("logits",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        try:
            from timm.models.vision_transformer import VisionTransformer
        except ImportError:
            return False
        return isinstance(model, VisionTransformer)

    @property
    def spec(self) -> ViTSpec:
        m = self.model
        first = m.blocks[0]
        head = getattr(m, "head", None)
        return ViTSpec(
            depth=len(m.blocks),
            embed_dim=m.embed_dim,
            num_heads=first.attn.num_heads,
            mlp_hidden=first.mlp.fc1.out_features,
            num_prefix=m.num_prefix_tokens,
            num_patches=m.patch_embed.num_patches,
            patch_size=m.patch_embed.patch_size[0],
            in_chans=m.patch_embed.proj.in_channels,
            img_size=tuple(m.patch_embed.img_size),
            head_dim_out=head.out_features if isinstance(head, nn.Linear) else 0,
            class_token=getattr(m, "cls_token", None) is not None,
            head_width=0 if first.attn.head_dim * first.attn.num_heads == m.embed_dim else first.attn.head_dim,
            prefix_head=m.num_prefix_tokens > 0 and (self.distilled or self.pool == "token"),
        )

    def input_config(self) -> Optional[dict]:
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean"), cfg.get("std")
        if mean is None or std is None:
            return None
        chans = self.model.patch_embed.proj.in_channels
        mean, std = list(mean), list(std)
        if len(mean) != chans:  # e.g. a 1-channel model built from a 3-channel config
            mean, std = [sum(mean) / len(mean)] * chans, [sum(std) / len(std)] * chans
        return {"mean": mean, "std": std, "source": "timm pretrained_cfg"}

    def embed(self, pixels: Tensor) -> Tensor:
        m = self.model
        x = m._pos_embed(m.patch_embed(pixels))
        return m.norm_pre(m.patch_drop(x))

    def blocks(self) -> list[BlockView]:
        return [TimmBlockView(b) for b in self.model.blocks]

    def finish(self, x: Tensor, size: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        x = m.norm(x)
        if self.distilled or self.pool in ("token", "map", ""):
            return (m.forward_head(x),)
        p = 0 if m.pool_include_prefix else m.num_prefix_tokens
        tokens, sizes = x[:, p:], size[:, p:]
        if self.pool == "avg":
            pooled = size_weighted_mean(tokens, sizes)
        elif self.pool == "max":
            pooled = tokens.amax(dim=1)
        else:
            pooled = 0.5 * (tokens.amax(dim=1) + size_weighted_mean(tokens, sizes))
        return (m.head(m.head_drop(m.fc_norm(pooled))),)

    def describe(self) -> dict:
        d = super().describe()
        d.update(pool=self.pool, distilled=self.distilled)
        return d

"""torchvision ``VisionTransformer`` family (``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ``vit_l_32``, ``vit_h_14``).

Each ``EncoderBlock`` is a pre-norm block (``ln_1``, ``self_attention``: an ``nn.MultiheadAttention``
with one packed ``in_proj_weight``, ``ln_2``, ``mlp``), so a :class:`BlockView` maps onto it directly;
the classifier reads ``encoder.ln`` of the CLS token only. We refuse anything else (conv stems, MHA
variants, subclasses with their own forward) because the reduced forward pass re-implements the
model's and would silently differ from it.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeprune.core.errors import EdgepruneError
from edgeprune.families.base import BlockView, FamilyAdapter
from edgeprune.core.spec import ViTSpec

# The normalisation torchvision's ImageNet ViT weights were trained with (their transforms' mean/std).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Architecture of torchvision's builders, so --model-arg can override any of it: the builders pass
# these to the constructor themselves and reject the same keyword a second time.
STOCK = {
    "vit_b_16": dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
    "vit_b_32": dict(patch_size=32, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
    "vit_l_16": dict(patch_size=16, num_layers=24, num_heads=16, hidden_dim=1024, mlp_dim=4096),
    "vit_l_32": dict(patch_size=32, num_layers=24, num_heads=16, hidden_dim=1024, mlp_dim=4096),
    "vit_h_14": dict(patch_size=14, num_layers=32, num_heads=16, hidden_dim=1280, mlp_dim=5120),
}


class TorchvisionBlockView(BlockView):
    """An ``EncoderBlock``; torchvision has no layer scale, so ls1/ls2 are identities."""

    def __init__(self, block: nn.Module) -> None:
        self.attn = attn = block.self_attention
        self.heads, self.width = attn.num_heads, attn.head_dim
        self.scale = float(self.width) ** -0.5
        self.norm1, self.norm2, self.mlp = block.ln_1, block.ln_2, block.mlp
        self.ls1 = self.ls2 = nn.Identity()

    def _split(self, t: Tensor, parts: int) -> tuple[Tensor, ...]:
        b, n, _ = t.shape
        return t.reshape(b, n, parts, self.heads, self.width).permute(2, 0, 3, 1, 4).unbind(0)

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = self.attn
        return self._split(F.linear(h, a.in_proj_weight, a.in_proj_bias), 3)

    def prefix_query_qkv(self, h: Tensor, num_query: int) -> tuple[Tensor, Tensor, Tensor]:
        """Project queries for the prefix tokens alone: the packed weight is [q; k; v] along rows."""
        a, c = self.attn, self.attn.embed_dim
        w, bias = a.in_proj_weight, a.in_proj_bias
        q = F.linear(h[:, :num_query], w[:c], None if bias is None else bias[:c])
        kv = F.linear(h, w[c:], None if bias is None else bias[c:])
        (q,) = self._split(q, 1)
        k, v = self._split(kv, 2)
        return q, k, v

    def attn_out(self, a: Tensor) -> Tensor:
        b, _, n, _ = a.shape
        return self.attn.out_proj(a.transpose(1, 2).reshape(b, n, -1))


class TorchvisionViTAdapter(FamilyAdapter):
    """torchvision ``VisionTransformer``: one output, ``logits``, from the CLS token (so the spec's
    ``prefix_head`` is True). torchvision models do not record their normalisation, so
    :meth:`input_config` is None; the CLI's loader adds torchvision's ImageNet mean/std instead."""

    family = "torchvision-vit"
    output_names = ("logits",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._check_structure()

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        try:
            from torchvision.models.vision_transformer import VisionTransformer
        except ImportError:
            return False
        return isinstance(model, VisionTransformer)

    def _check_structure(self) -> None:
        from torchvision.models.vision_transformer import EncoderBlock, MLPBlock, VisionTransformer

        m = self.model
        for name in ("forward", "_process_input"):
            if getattr(type(m), name) is not getattr(VisionTransformer, name):
                raise EdgepruneError(f"{type(m).__name__} overrides {name}; edgeprune supports torchvision's stock VisionTransformer")
        if type(m.conv_proj) is not nn.Conv2d:
            raise EdgepruneError("conv-stem ViTs (conv_stem_configs) are not supported: edgeprune needs the plain patch Conv2d")
        if getattr(m.heads, "head", None) is None:
            raise EdgepruneError("the model has no heads.head classifier; edgeprune supports torchvision's stock heads")
        for i, block in enumerate(m.encoder.layers):
            a = getattr(block, "self_attention", None)
            found = f"{type(block).__name__}/{type(a).__name__}/{type(getattr(block, 'mlp', None)).__name__}"
            stock = type(block) is EncoderBlock and type(a) is nn.MultiheadAttention and type(block.mlp) is MLPBlock
            if not stock:
                raise EdgepruneError(f"encoder layer {i} is {found}; edgeprune supports the stock EncoderBlock/MultiheadAttention/MLPBlock")
            if not (a.batch_first and a._qkv_same_embed_dim) or a.bias_k is not None or a.add_zero_attn:
                raise EdgepruneError(f"encoder layer {i}: MultiheadAttention with bias_k/add_zero_attn/separate q,k,v weights is not supported")

    @property
    def spec(self) -> ViTSpec:
        m = self.model
        first = m.encoder.layers[0]
        attn = first.self_attention
        grid = m.image_size // m.patch_size
        return ViTSpec(
            depth=len(m.encoder.layers),
            embed_dim=m.hidden_dim,
            num_heads=attn.num_heads,
            mlp_hidden=first.mlp[0].out_features,
            num_prefix=1,
            num_patches=grid * grid,
            patch_size=m.patch_size,
            in_chans=m.conv_proj.in_channels,
            img_size=(m.image_size, m.image_size),
            head_dim_out=m.heads.head.out_features,
            class_token=True,
            prefix_head=True,
        )

    def embed(self, pixels: Tensor) -> Tensor:
        m = self.model
        got = tuple(pixels.shape[-2:])
        if got != (m.image_size, m.image_size):
            raise EdgepruneError(f"input is {got} pixels but the model takes {(m.image_size, m.image_size)}")
        x = m._process_input(pixels)
        x = torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return m.encoder.dropout(x + m.encoder.pos_embedding)

    def blocks(self) -> list[BlockView]:
        return [TorchvisionBlockView(b) for b in self.model.encoder.layers]

    def finish(self, x: Tensor, size: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        return (m.heads(m.encoder.ln(x[:, 0])),)

    def describe(self) -> dict:
        d = super().describe()
        d.update(representation_size=self.model.representation_size)
        return d


def torchvision_vit_names() -> list[str]:
    """torchvision's ViT builders (``vit_b_16``, ...), as torchvision itself lists them."""
    import torchvision.models as tvm

    return sorted(n for n in tvm.list_models(module=tvm) if n.startswith("vit_"))


def create_torchvision_vit(name: str, model_args: Optional[dict[str, Any]] = None) -> nn.Module:
    """Build torchvision's ``name`` with random weights (never downloads), eval mode.

    ``model_args`` override the builder's architecture too (``patch_size=8 num_layers=2 ...``): the
    builders hard-code those, so for the known ones we call the constructor with the stock values
    merged with the overrides. Any failure is one :class:`EdgepruneError` line.
    """
    from torchvision.models import get_model
    from torchvision.models.vision_transformer import VisionTransformer

    args = dict(model_args or {})
    names = torchvision_vit_names()
    if name not in names:
        raise EdgepruneError(f"unknown torchvision model '{name}' (valid: {', '.join('torchvision:' + n for n in names)})")
    refused = sorted({"weights", "progress"} & set(args))
    if refused:
        raise EdgepruneError(f"--model-arg {refused[0]} is not accepted: weights come from --checkpoint only, never downloaded")
    try:
        if name in STOCK:
            net = VisionTransformer(**{"image_size": 224, **STOCK[name], **args})
        else:
            net = get_model(name, weights=None, **args)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise EdgepruneError(f"cannot build torchvision {name} with {args}: {' '.join(str(exc).split())}") from None
    return net.eval()

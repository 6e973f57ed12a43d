"""HF transformers vision towers: CLIP (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``) and
SigLIP (``SiglipVisionModel``), the image encoders of most multimodal LLMs.

Both are pre-norm ViTs whose layers expose ``layer_norm1``, ``self_attn`` (q/k/v/out projections),
``layer_norm2`` and ``mlp``, so a :class:`BlockView` maps onto them directly. Only the static image
size is supported (``interpolate_pos_encoding=False``): an exported graph has one input shape anyway.
We call the submodules ourselves, so the model's ``attn_implementation`` does not matter.

Written for the flat layout of transformers 5 (``CLIPVisionModel.embeddings``); the older layout with
the parts one level down (``.vision_model.embeddings``) is unwrapped the same way, but only 5.x is tested.
Loading ``save_pretrained`` folders (of every HF family) lives in :mod:`edgeprune.families.hf_loading`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from edgeprune.core.errors import EdgepruneError
from edgeprune.families.base import BlockView, FamilyAdapter, size_weighted_mean
from edgeprune.families.hf_loading import load_hf_folder, load_hf_vision  # noqa: F401 - their old home
from edgeprune.core.spec import ViTSpec

HF_OUTPUTS = ("last_hidden_state", "pooler_output", "token_sizes")


class HFBlockView(BlockView):
    """A CLIP/SigLIP encoder layer; neither has layer scale, so ls1/ls2 are identities."""

    def __init__(self, layer: nn.Module) -> None:
        self.attn = attn = layer.self_attn
        self.scale = float(attn.scale)
        self.norm1, self.norm2, self.mlp = layer.layer_norm1, layer.layer_norm2, layer.mlp
        self.ls1 = self.ls2 = nn.Identity()

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = self.attn
        b, n, _ = h.shape
        shape = (b, n, a.num_heads, a.head_dim)
        return tuple(proj(h).view(shape).transpose(1, 2) for proj in (a.q_proj, a.k_proj, a.v_proj))

    def attn_out(self, a: Tensor) -> Tensor:
        b, _, n, _ = a.shape
        return self.attn.out_proj(a.transpose(1, 2).reshape(b, n, -1))


def _classes(module_name: str, *names: str) -> tuple[type, ...]:
    """The named classes that exist in this transformers version (some moved between versions)."""
    import importlib

    module = importlib.import_module(f"transformers.models.{module_name}")
    return tuple(c for c in (getattr(module, n, None) for n in names) if isinstance(c, type))


class _HFVisionAdapter(FamilyAdapter):
    """What CLIP and SigLIP towers share; subclasses say which classes and how to begin and end."""

    model_module: str  # transformers.models.<model_module>
    model_classes: tuple[str, ...]  # top-level classes (and inner towers of older versions) accepted
    layer_classes: tuple[str, str, str, str]  # exact types of: embeddings, layer, attention, MLP
    num_prefix: int

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        inner = getattr(model, "vision_model", None)
        self.tower = inner if isinstance(inner, nn.Module) else model
        self.config = self.tower.config if hasattr(self.tower, "config") else model.config
        self._check_structure()
        self.output_names = HF_OUTPUTS

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        try:
            accepted = _classes(cls.model_module, *cls.model_classes)
        except ImportError:
            return False
        return isinstance(model, accepted)

    def _check_structure(self) -> None:
        """Refuse anything that is not the stock layer layout: we rebuild its forward pass by hand."""
        emb_t, layer_t, attn_t, mlp_t = _classes(self.model_module, *self.layer_classes)
        t, c = self.tower, self.config
        if type(t.embeddings) is not emb_t:
            raise EdgepruneError(f"embeddings are {type(t.embeddings).__name__}; edgeprune supports {emb_t.__name__}")
        for i, layer in enumerate(t.encoder.layers):
            found = (type(layer), type(getattr(layer, "self_attn", None)), type(getattr(layer, "mlp", None)))
            if found != (layer_t, attn_t, mlp_t):
                names = ["/".join(k.__name__ for k in ts) for ts in (found, (layer_t, attn_t, mlp_t))]
                raise EdgepruneError(f"layer {i} is {names[0]}; edgeprune supports the stock {names[1]}")
        if c.hidden_size % c.num_attention_heads:
            raise EdgepruneError(f"hidden_size {c.hidden_size} is not divisible by {c.num_attention_heads} heads")

    @property
    def spec(self) -> ViTSpec:
        t, c = self.tower, self.config
        size = c.image_size if isinstance(c.image_size, int) else c.image_size[0]
        return ViTSpec(
            depth=len(t.encoder.layers),
            embed_dim=c.hidden_size,
            num_heads=c.num_attention_heads,
            mlp_hidden=t.encoder.layers[0].mlp.fc1.out_features,
            num_prefix=self.num_prefix,
            num_patches=t.embeddings.num_patches,
            patch_size=c.patch_size,
            in_chans=t.embeddings.patch_embedding.in_channels,
            img_size=(size, size),
            head_dim_out=0,
            class_token=self.num_prefix > 0,
        )

    def _embed(self, pixels: Tensor) -> Tensor:
        """Patch + position embeddings at the model's own size (the embeddings cast the dtype)."""
        got, expected = tuple(pixels.shape[-2:]), self.spec.img_size
        if got != expected:
            msg = f"input is {got} pixels but the model takes {expected}; edgeprune does not interpolate positions"
            raise EdgepruneError(msg)
        return self.tower.embeddings(pixels, interpolate_pos_encoding=False)

    def blocks(self) -> list[BlockView]:
        return [HFBlockView(layer) for layer in self.tower.encoder.layers]

    def describe(self) -> dict:
        d = super().describe()
        d.update(model_type=getattr(self.config, "model_type", None), hidden_act=self.config.hidden_act)
        return d


class ClipVisionAdapter(_HFVisionAdapter):
    """CLIP vision tower. Outputs follow HF: ``last_hidden_state`` is the encoder output *without*
    ``post_layernorm`` (CLS first, then the reduced patch tokens); ``pooler_output`` is
    ``post_layernorm(CLS)``; ``token_sizes`` [B, N] says how many patches each token stands for
    (CLS: 1). ``CLIPVisionModelWithProjection`` adds a fourth output, ``image_embeds``.
    """

    family = "hf-clip-vision"
    model_module = "clip.modeling_clip"
    model_classes = ("CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPVisionTransformer")
    layer_classes = ("CLIPVisionEmbeddings", "CLIPEncoderLayer", "CLIPAttention", "CLIPMLP")
    num_prefix = 1

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.projection = getattr(model, "visual_projection", None)
        if self.projection is not None:
            self.output_names = (*HF_OUTPUTS, "image_embeds")

    def embed(self, pixels: Tensor) -> Tensor:
        return self.tower.pre_layrnorm(self._embed(pixels))

    def finish(self, x: Tensor, size: Tensor) -> tuple[Tensor, ...]:
        pooled = self.tower.post_layernorm(x[:, 0])
        out = (x, pooled, size[..., 0])
        return out if self.projection is None else (*out, self.projection(pooled))

    def describe(self) -> dict:
        d = super().describe()
        d.update(projection=self.projection is not None)
        return d


class SiglipVisionAdapter(_HFVisionAdapter):
    """SigLIP vision tower (no CLS token, so EViT ranks tokens by the mean query).

    ``last_hidden_state`` is ``post_layernorm`` of the reduced sequence, as HF returns it.
    ``pooler_output`` is the attention-pooling ``head`` of that sequence when the model has one; under
    a merging plan the head sees the merged tokens as they are (no size weighting inside its
    attention). Without a head HF returns ``pooler_output=None``; a graph needs a tensor, so we return
    the size-weighted mean of ``last_hidden_state``, which is the plain token mean when nothing is
    reduced. ``token_sizes`` [B, N] says how many patches each token stands for.
    """

    family = "hf-siglip-vision"
    model_module = "siglip.modeling_siglip"
    model_classes = ("SiglipVisionModel", "SiglipVisionTransformer")
    layer_classes = ("SiglipVisionEmbeddings", "SiglipEncoderLayer", "SiglipAttention", "SiglipMLP")
    num_prefix = 0

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        use_head = getattr(self.tower, "use_head", getattr(self.config, "vision_use_head", True))
        self.head = getattr(self.tower, "head", None) if use_head else None
        if self.head is not None:
            _check_pooling_head(self.head, self.model_module)

    def embed(self, pixels: Tensor) -> Tensor:
        return self._embed(pixels)

    def finish(self, x: Tensor, size: Tensor) -> tuple[Tensor, ...]:
        x = self.tower.post_layernorm(x)
        pooled = attention_pool(self.head, x) if self.head is not None else size_weighted_mean(x, size)
        return x, pooled, size[..., 0]

    def describe(self) -> dict:
        d = super().describe()
        d.update(pool="attention-head" if self.head is not None else "size-weighted-mean")
        return d


def _check_pooling_head(head: nn.Module, model_module: str) -> None:
    """:func:`attention_pool` redoes the head's math, so only the stock head and MHA settings qualify."""
    (head_t,) = _classes(model_module, "SiglipMultiheadAttentionPoolingHead")
    a = getattr(head, "attention", None)
    mha_ok = isinstance(a, nn.MultiheadAttention) and a.batch_first and a._qkv_same_embed_dim
    mha_ok = mha_ok and a.in_proj_bias is not None and a.bias_k is None and not a.add_zero_attn
    if not (type(head) is head_t and mha_ok):
        raise EdgepruneError(f"pooling head {type(head).__name__} is not the stock {head_t.__name__}")


def attention_pool(head: nn.Module, x: Tensor) -> Tensor:
    """SigLIP's attention-pooling head, same weights and math as ``head(x)``, in broadcasts and sums.

    ``nn.MultiheadAttention`` reshapes its one-token, batch-expanded probe query; traced with a batch-1
    example, that pins the exported batch axis to 1. The probe's query has no batch axis here, so the
    graph keeps a dynamic batch and needs only MatMul/Mul/ReduceSum/Softmax.
    """
    a = head.attention
    b, n, c = x.shape
    h = a.num_heads
    d = c // h
    wq, wk, wv = a.in_proj_weight.chunk(3)
    bq, bk, bv = a.in_proj_bias.chunk(3)
    q = F.linear(head.probe[0, 0], wq, bq).view(h, d) * d**-0.5
    k = F.linear(x, wk, bk).view(b, n, h, d)
    v = F.linear(x, wv, bv).view(b, n, h, d)
    weights = (k * q).sum(dim=-1).softmax(dim=1)  # [B, N, H]
    pooled = a.out_proj((weights.unsqueeze(-1) * v).sum(dim=1).reshape(b, c))
    return pooled + head.mlp(head.layernorm(pooled))


HF_ADAPTERS: list[type[FamilyAdapter]] = [ClipVisionAdapter, SiglipVisionAdapter]

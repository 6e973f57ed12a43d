"""HF transformers ViT-style image models: ViT, DeiT (distilled too) and DINOv2.

All three are pre-norm ViTs with a CLS token (DeiT adds a distillation token) and layers of two
norms, ``attention`` (q/k/v/o projections), ``mlp`` and, for DINOv2, layer scale, so a
:class:`BlockView` maps onto them directly. Written for the flat layout of transformers 5
(``ViTModel.layers``, ``ViTAttention.q_proj``); older layouts are refused with one line.

Outputs follow HF. Classifiers give ``("logits",)``. Base models give ``last_hidden_state`` (the
final ``layernorm`` of the reduced sequence, prefix tokens first), ``pooler_output`` and
``token_sizes`` [B, N] (how many patches each token stands for; prefix tokens: 1), like the CLIP and
SigLIP adapters. ``pooler_output`` is the model's pooler (dense + tanh of the CLS token) when it has
one; a ViT/DeiT built with ``add_pooling_layer=False`` makes HF return None, and a graph needs a
tensor, so we return the normed CLS token, which is also what DINOv2's own ``pooler_output`` is.

Only the static image size of the config is supported: an exported graph has one input shape anyway,
and we never interpolate position embeddings. HF configs do not record the input normalisation, so
:meth:`FamilyAdapter.input_config` stays None; ``load_hf_folder`` reads ``preprocessor_config.json``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgeprune.core.errors import EdgepruneError
from edgeprune.families.base import BlockView, FamilyAdapter, size_weighted_mean
from edgeprune.families.hf_vision import HF_OUTPUTS, _classes
from edgeprune.core.spec import ViTSpec


class HFViTBlockView(BlockView):
    """One ViT/DeiT/DINOv2 layer: its two norms, separate q/k/v projections, MLP and layer scales."""

    def __init__(self, layer: nn.Module, norms: tuple[str, str], scales: tuple[str, str] | None) -> None:
        self.attn = attn = layer.attention
        self.heads, self.width = attn.num_attention_heads, attn.head_dim
        self.scale = float(attn.scaling)
        self.norm1, self.norm2 = getattr(layer, norms[0]), getattr(layer, norms[1])
        self.mlp = layer.mlp
        self.ls1, self.ls2 = (getattr(layer, scales[0]), getattr(layer, scales[1])) if scales else (nn.Identity(),) * 2

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.width).transpose(1, 2)

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = self.attn
        return self._heads(a.q_proj(h)), self._heads(a.k_proj(h)), self._heads(a.v_proj(h))

    def prefix_query_qkv(self, h: Tensor, num_query: int) -> tuple[Tensor, Tensor, Tensor]:
        a = self.attn
        return self._heads(a.q_proj(h[:, :num_query])), self._heads(a.k_proj(h)), self._heads(a.v_proj(h))

    def attn_out(self, a: Tensor) -> Tensor:
        b, _, n, _ = a.shape
        return self.attn.o_proj(a.transpose(1, 2).reshape(b, n, -1))


class _HFViTAdapter(FamilyAdapter):
    """What the three families share; subclasses name their classes, layer parts and heads."""

    model_module: str  # transformers.models.<model_module>
    base_classes: tuple[str, ...]  # models whose outputs are HF_OUTPUTS
    head_classes: tuple[str, ...]  # classifiers: ("logits",)
    layer_classes: tuple[str, str, str]  # exact types of: embeddings, layer, attention
    mlp_classes: tuple[str, ...]
    norms: tuple[str, str] = ("layernorm_before", "layernorm_after")
    scales: tuple[str, str] | None = None
    num_prefix = 1

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.base = model.base_model  # the model itself, or e.g. ViTForImageClassification.vit
        self.config = model.config
        self.classifier = isinstance(model, _classes(self.model_module, *self.head_classes))
        self._check_structure()
        self.output_names = ("logits",) if self.classifier else HF_OUTPUTS

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        try:
            accepted = _classes(cls.model_module, *cls.base_classes, *cls.head_classes)
        except ImportError:
            return False
        return isinstance(model, accepted)

    def layers(self) -> nn.ModuleList:
        return self.base.layers

    def _check_structure(self) -> None:
        """Refuse anything but the stock layout: we rebuild its forward pass from its parts."""
        emb_t, layer_t, attn_t = _classes(self.model_module, *self.layer_classes)
        mlp_ts = _classes(self.model_module, *self.mlp_classes)
        if type(self.base.embeddings) is not emb_t:
            raise EdgepruneError(f"embeddings are {type(self.base.embeddings).__name__}; edgeprune supports {emb_t.__name__}")
        try:
            layers = list(self.layers())
        except AttributeError:
            raise EdgepruneError(f"{type(self.model).__name__} has an older layer layout; edgeprune supports transformers 5") from None
        for i, layer in enumerate(layers):
            attn = getattr(layer, "attention", None)
            found = (type(layer), type(attn), type(getattr(layer, "mlp", None)))
            if found[:2] != (layer_t, attn_t) or found[2] not in mlp_ts or not hasattr(attn, "q_proj"):
                names = "/".join(t.__name__ for t in found)
                stock = "/".join(t.__name__ for t in (layer_t, attn_t, *mlp_ts))
                raise EdgepruneError(f"layer {i} is {names}; edgeprune supports the stock {stock} of transformers 5")

    @property
    def spec(self) -> ViTSpec:
        c, first = self.config, self.layers()[0]
        patches = self.base.embeddings.patch_embeddings
        attn = first.attention
        return ViTSpec(
            depth=len(self.layers()),
            embed_dim=c.hidden_size,
            num_heads=attn.num_attention_heads,
            mlp_hidden=self._mlp_hidden(first.mlp),
            num_prefix=self.num_prefix,
            num_patches=patches.num_patches,
            patch_size=patches.patch_size[0],
            in_chans=patches.projection.in_channels,
            img_size=tuple(patches.image_size),
            head_dim_out=self._head_outputs(),
            class_token=True,
            head_width=0 if attn.num_attention_heads * attn.head_dim == c.hidden_size else attn.head_dim,
            prefix_head=self._prefix_head(),
        )

    def _mlp_hidden(self, mlp: nn.Module) -> int:
        return mlp.fc1.out_features

    def _head_outputs(self) -> int:
        head = getattr(self.model, "classifier", None) if self.classifier else None
        return head.out_features if isinstance(head, nn.Linear) else 0

    def _prefix_head(self) -> bool:
        """Classifiers read the CLS (and distillation) token only; base models return every token."""
        return self.classifier

    def _check_size(self, pixels: Tensor) -> None:
        got, expected = tuple(pixels.shape[-2:]), tuple(self.base.embeddings.patch_embeddings.image_size)
        if got != expected:
            raise EdgepruneError(f"input is {got} pixels but the model takes {expected}; edgeprune does not interpolate positions")

    def embed(self, pixels: Tensor) -> Tensor:
        self._check_size(pixels)
        return self.base.embeddings(pixels, interpolate_pos_encoding=False)

    def blocks(self) -> list[BlockView]:
        return [HFViTBlockView(layer, self.norms, self.scales) for layer in self.layers()]

    def finish(self, x: Tensor, size: Tensor) -> tuple[Tensor, ...]:
        seq = self.base.layernorm(x)
        if self.classifier:
            return (self._logits(seq, size),)
        pooler = getattr(self.base, "pooler", None)
        return seq, (pooler(seq) if pooler is not None else seq[:, 0]), size[..., 0]

    def _logits(self, seq: Tensor, size: Tensor) -> Tensor:
        return self.model.classifier(seq[:, 0])

    def describe(self) -> dict:
        d = super().describe()
        d.update(model_type=getattr(self.config, "model_type", None), hidden_act=self.config.hidden_act)
        if not self.classifier:
            d.update(pooler="pooler" if getattr(self.base, "pooler", None) is not None else "cls-after-layernorm")
        return d


class HFViTAdapter(_HFViTAdapter):
    """``ViTModel`` and ``ViTForImageClassification`` (classifier on the normed CLS token)."""

    family = "hf-vit"
    model_module = "vit.modeling_vit"
    base_classes = ("ViTModel",)
    head_classes = ("ViTForImageClassification",)
    layer_classes = ("ViTEmbeddings", "ViTLayer", "ViTAttention")
    mlp_classes = ("ViTMLP",)


class HFDeiTAdapter(_HFViTAdapter):
    """``DeiTModel``, ``DeiTForImageClassification`` (CLS token only) and
    ``DeiTForImageClassificationWithTeacher`` (the mean of the CLS and distillation heads). Two
    prefix tokens, CLS and distillation, are never reduced."""

    family = "hf-deit"
    model_module = "deit.modeling_deit"
    base_classes = ("DeiTModel",)
    head_classes = ("DeiTForImageClassification", "DeiTForImageClassificationWithTeacher")
    layer_classes = ("DeiTEmbeddings", "DeiTLayer", "DeiTAttention")
    mlp_classes = ("DeiTMLP",)
    num_prefix = 2

    def _head_outputs(self) -> int:
        m = self.model
        head = m.cls_classifier if hasattr(m, "cls_classifier") else getattr(m, "classifier", None)
        return head.out_features if self.classifier and isinstance(head, nn.Linear) else 0

    def _logits(self, seq: Tensor, size: Tensor) -> Tensor:
        m = self.model
        if hasattr(m, "distillation_classifier"):
            return (m.cls_classifier(seq[:, 0]) + m.distillation_classifier(seq[:, 1])) / 2
        return m.classifier(seq[:, 0])


class HFDinov2Adapter(_HFViTAdapter):
    """``Dinov2Model`` (``pooler_output`` is the normed CLS token, as HF returns it) and
    ``Dinov2ForImageClassification``, whose classifier reads the CLS token concatenated with the
    mean of the patch tokens: under a merging plan that mean is size-weighted (a merged token counts
    as many patches as it stands for), and since the head reads every token, ``prefix_head`` is False.

    Layer scale is supported; the SwiGLU MLP (giant models) too, with ``mlp_hidden`` set to the
    width of a plain MLP of the same MACs (1.5x its hidden width) so MACs counts stay right.
    """

    family = "hf-dinov2"
    model_module = "dinov2.modeling_dinov2"
    base_classes = ("Dinov2Model",)
    head_classes = ("Dinov2ForImageClassification",)
    layer_classes = ("Dinov2Embeddings", "Dinov2Layer", "Dinov2Attention")
    mlp_classes = ("Dinov2MLP", "Dinov2SwiGLUFFN")
    norms = ("norm1", "norm2")
    scales = ("layer_scale1", "layer_scale2")

    def layers(self) -> nn.ModuleList:
        return self.base.encoder.layer

    def _check_structure(self) -> None:
        super()._check_structure()
        size = tuple(self.base.embeddings.patch_embeddings.image_size)
        if size[0] != size[1]:  # HF DINOv2 interpolates positions for any non-square input
            raise EdgepruneError(f"image_size {size} is not square; edgeprune supports square DINOv2 inputs only")

    def _mlp_hidden(self, mlp: nn.Module) -> int:
        if hasattr(mlp, "fc1"):
            return mlp.fc1.out_features
        return 3 * mlp.up_proj.out_features // 2

    def _prefix_head(self) -> bool:
        return False

    def embed(self, pixels: Tensor) -> Tensor:
        """HF's embeddings re-interpolate positions whenever they believe they are traced; at the
        config's own size that is the identity, so we add the stored positions directly."""
        self._check_size(pixels)
        e = self.base.embeddings
        x = e.patch_embeddings(pixels)
        x = torch.cat([e.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return e.dropout(x if e.position_embeddings is None else x + e.position_embeddings)

    def finish(self, x: Tensor, size: Tensor) -> tuple[Tensor, ...]:
        seq = self.base.layernorm(x)
        if self.classifier:
            pooled = torch.cat([seq[:, 0], size_weighted_mean(seq[:, 1:], size[:, 1:])], dim=1)
            return (self.model.classifier(pooled),)
        return seq, seq[:, 0], size[..., 0]


HF_VIT_ADAPTERS: list[type[FamilyAdapter]] = [HFViTAdapter, HFDeiTAdapter, HFDinov2Adapter]

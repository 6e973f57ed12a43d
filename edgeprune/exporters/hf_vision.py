"""HF transformers vision towers: CLIP (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``) and
SigLIP (``SiglipVisionModel``), the image encoders of most multimodal LLMs.

Both are pre-norm ViTs whose layers expose ``layer_norm1``, ``self_attn`` (q/k/v/out projections),
``layer_norm2`` and ``mlp``, so a :class:`BlockView` maps onto them directly. Only the static image
size is supported (``interpolate_pos_encoding=False``): an exported graph has one input shape anyway.
We call the submodules ourselves, so the model's ``attn_implementation`` does not matter.

Written for the flat layout of transformers 5 (``CLIPVisionModel.embeddings``); the older layout with
the parts one level down (``.vision_model.embeddings``) is unwrapped the same way, but only 5.x is tested.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

import torch.nn.functional as F
from torch import Tensor, nn

from edgeprune.errors import EdgepruneError
from edgeprune.exporters.base import BlockView, FamilyAdapter, size_weighted_mean
from edgeprune.spec import ViTSpec

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

# config.json's model_type (or, without one, its architectures) -> the family to load
_TYPES = {"clip_vision_model": "clip", "clip": "clip", "siglip_vision_model": "siglip", "siglip": "siglip"}
_ARCHS = {"CLIPVisionModel": "clip", "CLIPVisionModelWithProjection": "clip", "CLIPModel": "clip"}
_ARCHS.update(SiglipVisionModel="siglip", SiglipModel="siglip")
# Checkpoint keys of the vision tower itself; other unused keys (text tower, logit scale) are expected.
_TOWER_KEYS = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.", "head.")


def load_hf_vision(folder: Union[str, Path]) -> nn.Module:
    """Load a CLIP/SigLIP vision tower saved with ``save_pretrained``, offline, in eval mode, float32.

    A full CLIP/SigLIP folder gives its vision tower. A ``CLIPVisionModelWithProjection`` folder keeps
    its projection. Weights are cast to float32 because edgeprune's parity checks and exports start
    from float32; engines pick their own precision. Any problem becomes one :class:`EdgepruneError`
    line: a half-loaded model (missing or resized weights) would otherwise run with random parts.
    """
    path = Path(folder)
    if not path.is_dir():
        raise EdgepruneError(f"model folder '{path}' does not exist")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise EdgepruneError(f"'{path}' has no config.json (expected a folder written by save_pretrained)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgepruneError(f"cannot read '{cfg_file}': {_one_line(exc)}") from None
    if not isinstance(cfg, dict):
        raise EdgepruneError(f"'{cfg_file}' is not a model config (expected a JSON object)")
    cls = _class_for(cfg, cfg_file)
    with _quiet_transformers():
        try:
            kwargs = dict(local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True)
            model, info = cls.from_pretrained(path, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the library raises many types; all mean "cannot load"
            raise EdgepruneError(f"cannot load {cls.__name__} from '{path}': {_one_line(exc)}") from None
    _check_loading(info, path)
    return model.float().eval()


def _class_for(cfg: dict, cfg_file: Path) -> type:
    import transformers

    archs = cfg.get("architectures") or []
    archs = archs if isinstance(archs, list) else []
    model_type = cfg.get("model_type")
    family = _TYPES.get(model_type) if model_type else next((_ARCHS[a] for a in archs if a in _ARCHS), None)
    if family is None:
        supported = ", ".join(_TYPES)
        found = f"model_type {model_type!r} (architectures {archs})"
        raise EdgepruneError(f"'{cfg_file}' has {found}; supported model types: {supported}")
    if family == "siglip":
        return transformers.SiglipVisionModel
    with_projection = model_type != "clip" and "CLIPVisionModelWithProjection" in archs
    return transformers.CLIPVisionModelWithProjection if with_projection else transformers.CLIPVisionModel


def _check_loading(info: dict, path: Path) -> None:
    """Every tower weight must come from the checkpoint, and it may hold no tower weights the config lacks."""
    misfit = f"weights in '{path}' do not fit config.json:"
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    if mismatched:
        key, ckpt, model = mismatched[0]
        shapes = f"{key} is {tuple(ckpt)} in the checkpoint but {tuple(model)} in the model"
        raise EdgepruneError(f"{misfit} {len(mismatched)} tensors differ in shape, e.g. {shapes}")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise EdgepruneError(f"{misfit} {len(missing)} tensors missing, e.g. {missing[0]}")
    unused = info.get("unexpected_keys") or []
    extra = sorted(k for k in unused if k.removeprefix("vision_model.").startswith(_TOWER_KEYS))
    if extra:
        raise EdgepruneError(f"{misfit} {len(extra)} vision tensors unused, e.g. {extra[0]}")


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the load report and progress bars: unused text-tower weights are expected, and real
    problems are raised by :func:`_check_loading` instead."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"

"""LLaVA-family vision front-ends: tower + feature layer(s) + select strategy + projector.

:func:`llava_parts` takes apart a transformers ``LlavaForConditionalGeneration`` (CLIP or SigLIP
tower) or ``LlavaNextForConditionalGeneration`` (the same front-end applied to a base image and its
crops); :func:`load_llava` loads either from a ``save_pretrained`` folder, offline and strictly. The
tower runs through the existing CLIP/SigLIP adapters' block views, so the features are the ones HF
computes (checked in the tests against ``get_image_features``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeprune.core.errors import EdgepruneError
from edgeprune.families import adapter_for
from edgeprune.families.base import FamilyAdapter
from edgeprune.families.hf_loading import _one_line, _quiet_transformers, _read_json_object, read_model_config

# Methods only multimodal front-ends have: asking for one routes `edgeprune export` to this family.
MLLM_ONLY_METHODS = ("visionzip", "qcsp", "script")
LLAVA_TYPES = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration"}


@dataclass
class LlavaParts:
    """What the vision graph needs from a LLaVA model (all modules are the model's own)."""

    model: nn.Module  # the whole LlavaForConditionalGeneration / LlavaNextForConditionalGeneration
    family: str  # "llava" or "llava_next"
    tower: FamilyAdapter  # the CLIP/SigLIP adapter of the vision tower
    layers: list[int]  # feature layers as hidden_states indices in 0..depth (0 = the embeddings)
    strategy: str  # "default" (drop CLS) or "full"
    projector: nn.Module
    image_token_id: int
    llm_dim: int
    image_newline: Optional[Tensor] = None  # LLaVA-NeXT's [D_llm] row separator

    @property
    def grid(self) -> tuple[int, int]:
        spec = self.tower.spec
        return spec.img_size[0] // spec.patch_size, spec.img_size[1] // spec.patch_size

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def feature_dim(self) -> int:
        return self.tower.spec.embed_dim * len(self.layers)

    @property
    def embed_tokens(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def describe(self) -> dict:
        return {"family": self.family, "class": type(self.model).__name__, "tower": self.tower.family,
                "feature_layers": self.layers, "select_strategy": self.strategy, "grid": list(self.grid),
                "llm_dim": self.llm_dim, "image_token_id": self.image_token_id}


def is_llava(model: nn.Module) -> bool:
    try:
        import transformers
    except ImportError:  # pragma: no cover - depends on the environment
        return False
    classes = tuple(getattr(transformers, name) for name in LLAVA_TYPES.values())
    return isinstance(model, classes)


def llava_parts(model: nn.Module) -> LlavaParts:
    """The vision front-end of a LLaVA / LLaVA-NeXT model, or one clear error."""
    if not is_llava(model):
        raise EdgepruneError(f"{type(model).__name__} is not a LLaVA model (supported: {', '.join(LLAVA_TYPES.values())})")
    cfg = model.config
    family = "llava_next" if type(model).__name__.startswith("LlavaNext") else "llava"
    inner = model.model
    tower = adapter_for(inner.vision_tower)
    depth = tower.spec.depth
    raw = cfg.vision_feature_layer
    layers = [raw] if isinstance(raw, int) else list(raw)
    resolved = []
    for layer in layers:
        index = layer + depth + 1 if layer < 0 else layer
        if not 0 <= index <= depth:
            raise EdgepruneError(f"vision_feature_layer {layer} is outside the tower's {depth} layers")
        resolved.append(index)
    strategy = cfg.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise EdgepruneError(f"vision_feature_select_strategy {strategy!r} is not supported (default, full)")
    if strategy == "full" and tower.spec.num_prefix > 0:
        raise EdgepruneError("vision_feature_select_strategy 'full' makes CLS a visual token; edgeprune selects "
                             "patch tokens only (use 'default', as LLaVA-1.5 does)")
    newline = getattr(inner, "image_newline", None)
    return LlavaParts(model=model.float().eval(), family=family, tower=tower, layers=resolved, strategy=strategy,
                      projector=inner.multi_modal_projector, image_token_id=int(cfg.image_token_id),
                      llm_dim=int(cfg.text_config.hidden_size),
                      image_newline=newline.detach() if isinstance(newline, Tensor) else None)


def looks_like_llava_folder(folder: Union[str, Path]) -> bool:
    """True when ``folder`` has a config.json whose model_type is a LLaVA family."""
    cfg_file = Path(folder) / "config.json"
    if not cfg_file.is_file():
        return False
    try:
        return _read_json_object(cfg_file, "a model config").get("model_type") in LLAVA_TYPES
    except EdgepruneError:
        return False


def check_llava_folder(folder: Union[str, Path]) -> str:
    """The model_type of a LLaVA ``save_pretrained`` folder, or one error line saying why it is not one."""
    path = Path(folder)
    model_type = read_model_config(path, "is not a LLaVA model folder: it has no config.json").get("model_type")
    if model_type not in LLAVA_TYPES:
        raise EdgepruneError(f"'{path}' is not a LLaVA model folder: model_type {model_type!r} "
                             f"(supported: {', '.join(LLAVA_TYPES)})")
    return model_type


def load_llava(folder: Union[str, Path]) -> nn.Module:
    """A LLaVA / LLaVA-NeXT model from a ``save_pretrained`` folder, offline, float32, eval mode.

    Every weight must come from the checkpoint: a half-loaded model would run with random parts.
    """
    import transformers

    path = Path(folder)
    cls = getattr(transformers, LLAVA_TYPES[check_llava_folder(path)])
    with _quiet_transformers():
        try:
            model, info = cls.from_pretrained(path, local_files_only=True, output_loading_info=True, use_safetensors=True)
        except Exception as exc:  # noqa: BLE001 - the library raises many types; all mean "cannot load"
            raise EdgepruneError(f"cannot load {cls.__name__} from '{path}': {_one_line(exc)}") from None
    missing = sorted(info.get("missing_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    if missing or mismatched:
        first = missing[0] if missing else mismatched[0][0]
        raise EdgepruneError(f"weights in '{path}' do not fit config.json: {len(missing) + len(mismatched)} tensors "
                             f"missing or resized, e.g. {first}")
    return model.float().eval()


def tower_features(parts: LlavaParts, pixels: Tensor, with_attention: bool = False
                   ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """The projector's input [B, N, C·layers] (HF's ``hidden_states`` at the feature layers, CLS
    dropped, concatenated on channels) and, with ``with_attention``, VisionZip's signals at the
    deepest feature layer: the attention each patch receives [B, N] (from CLS summed over heads; the
    mean over queries without CLS) and the keys averaged over heads [B, N, Dh]."""
    adapter = parts.tower
    prefix = adapter.spec.num_prefix
    last = max(parts.layers)
    x = adapter.embed(pixels)
    states = {0: x}
    received = keys = None
    for i, view in enumerate(adapter.blocks()[:last]):
        q, k, v = view.qkv(view.norm1(x))
        if with_attention and i == last - 1:
            received, keys = _attention_signals(q, k, view.scale, prefix)
        x = x + view.ls1(view.attn_out(F.scaled_dot_product_attention(q, k, v, scale=view.scale)))
        x = x + view.ls2(view.mlp(view.norm2(x)))
        states[i + 1] = x
    if with_attention and received is None:  # feature layer 0: no attention ran; rank by nothing but order
        raise EdgepruneError("visionzip needs a feature layer after at least one attention layer")
    features = torch.cat([states[layer][:, prefix:] for layer in parts.layers], dim=-1)
    return features, received, keys


def _attention_signals(q: Tensor, k: Tensor, scale: float, prefix: int) -> tuple[Tensor, Tensor]:
    """Attention received by each patch and the mean key, from one block's q, k [B, H, N, D]."""
    if prefix > 0:  # CLS's row only: the block itself keeps its fused attention
        probs = ((q[:, :, :1] * scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, H, 1, N]
        received = probs.sum(dim=1)[:, 0, prefix:]
    else:
        probs = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, H, N, N]
        received = probs.mean(dim=2).sum(dim=1)
    return received, k.mean(dim=1)[:, prefix:]


def joint_space(parts: LlavaParts, features: Tensor, projection: Optional[nn.Module]) -> Tensor:
    """The deepest feature layer's patch tokens in the query's space: the tower's ``post_layernorm``
    then the CLIP ``visual_projection`` (none for SigLIP, whose text embedding has the tower's width)."""
    width = parts.tower.spec.embed_dim
    deepest = parts.layers.index(max(parts.layers))
    tokens = parts.tower.tower.post_layernorm(features[..., deepest * width:(deepest + 1) * width])
    return tokens if projection is None else projection(tokens)

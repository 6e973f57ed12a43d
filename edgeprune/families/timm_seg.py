"""timm ViT semantic segmenters: a plain ViT backbone, a small head, one logit map per pixel.

The backbone is run block by block here (not through ``forward_features``) so that a later
token-reduction pass can hook in between blocks and restore one token per patch before the head.
Nothing in this module reduces tokens; it defines the reference family and its file format
(``config.json`` + ``model.safetensors``, see :func:`load_segmenter`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import loads_strict, write_atomic, write_text_atomic
from edgeprune.families.base import BlockView, FamilyAdapter
from edgeprune.families.weights import apply_state_dict, create_timm_model, read_state_dict
from edgeprune.core.spec import ViTSpec

FAMILY = "timm-vit-seg"
HEADS = ("linear", "multilevel")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class LinearSegHead(nn.Module):
    """Segmenter-linear: each patch token is classified on its own by one linear map (1x1 conv).

    The cheapest dense head there is, so accuracy differences after token reduction come from the
    backbone's tokens, not from a head that could paper over them with spatial context.
    """

    def __init__(self, embed_dim: int, num_classes: int, norm: bool = False) -> None:
        super().__init__()
        # The backbone's final norm already ran on the last block; an extra LayerNorm is optional.
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = feats[-1]
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.classifier(x)


class MultiLevelSegHead(nn.Module):
    """Features of several blocks, each normalised and projected (1x1) to ``width``, then summed
    or concatenated, fused by one 3x3 conv + norm + ReLU and classified by a 1x1 conv.

    Early blocks keep fine spatial detail that the last block has mixed away, which matters for
    thin or small objects; the head stays light (one 3x3 conv) so the backbone dominates cost.
    """

    def __init__(self, embed_dim: int, num_classes: int, num_levels: int, width: int = 64,
                 fuse: str = "sum", norm: str = "bn", upsample: bool = False) -> None:
        super().__init__()
        from timm.layers import LayerNorm2d

        if fuse not in ("sum", "concat"):
            raise EdgepruneError(f"multilevel head fuse must be 'sum' or 'concat', got '{fuse}'")
        if norm not in ("bn", "gn"):
            raise EdgepruneError(f"multilevel head norm must be 'bn' or 'gn', got '{norm}'")
        self.fuse_mode, self.upsample = fuse, upsample
        self.proj = nn.ModuleList(
            nn.Sequential(LayerNorm2d(embed_dim), nn.Conv2d(embed_dim, width, 1)) for _ in range(num_levels))
        fuse_in = width * num_levels if fuse == "concat" else width
        self.fuse = nn.Sequential(
            nn.Conv2d(fuse_in, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width) if norm == "bn" else nn.GroupNorm(min(8, width), width),
            nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        if len(feats) != len(self.proj):
            raise EdgepruneError(f"multilevel head expects {len(self.proj)} feature maps, got {len(feats)}")
        projected = [p(f) for p, f in zip(self.proj, feats)]
        x = torch.cat(projected, 1) if self.fuse_mode == "concat" else torch.stack(projected).sum(0)
        x = self.fuse(x)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.classifier(x)


class ConvStem(nn.Module):
    """A small convolutional stem in place of the patch projection: 3x3 stride-2 conv + BN + ReLU
    per entry of ``channels``, then a conv with kernel = stride = the remaining factor to the width.

    The total stride is still the patch size, so it emits one token per patch on the same grid and
    everything after the embedding (reducers, temporal reuse, the head) is unchanged. Why: a ViT
    trained from scratch on a few hundred images learns local edges far faster from overlapping
    convolutions than from one linear map per patch (Xiao et al., "Early convolutions help
    transformers see better"). ``in_channels`` mirrors a Conv2d so code reading the projection's
    input channels still sees the image's.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, channels: Sequence[int]) -> None:
        super().__init__()
        factor = patch_size // 2 ** len(channels)
        if not channels or factor < 1 or factor * 2 ** len(channels) != patch_size:
            raise EdgepruneError(f"a conv stem of {len(channels)} stride-2 convs cannot make patch size {patch_size} "
                                 f"(the patch size must be 2^{len(channels)} x an integer)")
        layers: list[nn.Module] = []
        prev = in_chans
        for c in channels:
            layers += [nn.Conv2d(prev, int(c), 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(int(c)), nn.ReLU(inplace=True)]
            prev = int(c)
        layers.append(nn.Conv2d(prev, embed_dim, factor, stride=factor))
        self.layers = nn.Sequential(*layers)
        self.in_channels = in_chans

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def conv_macs(module: nn.Module, *inputs: Tensor) -> int:
    """MACs of every Conv2d in ``module`` on one pass of ``inputs`` (counted by forward hooks), in eval
    mode so that the dummy pass cannot move BatchNorm's running statistics."""
    total = 0
    was_training = module.training

    def count(m: nn.Module, args: tuple, output: Tensor) -> None:
        nonlocal total
        total += output[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, nn.Conv2d)]
    module.eval()
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        module.train(was_training)
        for h in hooks:
            h.remove()
    return int(total)


class ViTSegmenter(nn.Module):
    """A timm ``VisionTransformer`` (no pooling, no classifier) plus a dense head.

    ``forward(pixels [B, C, H, W]) -> logits [B, num_classes, H, W]``: the head sees the outputs
    of ``feature_blocks`` (ascending; the deepest gets the backbone's final norm) with prefix tokens
    dropped and patch tokens laid out on the grid; its logits are upsampled bilinearly to the input.
    ``spec`` holds the arguments that rebuild the same architecture (written to ``config.json``).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, feature_blocks: Sequence[int],
                 num_classes: int, spec: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.feature_blocks: tuple[int, ...] = tuple(feature_blocks)
        self.num_classes = num_classes
        self.spec: dict[str, Any] = dict(spec or {})
        # What a user of the outputs needs (class names, palette, input normalisation); from config.json.
        self.info: dict[str, Any] = {}

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.backbone.num_prefix_tokens)

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.backbone.patch_embed.patch_size)  # type: ignore[return-value]

    def embed(self, pixels: Tensor) -> Tensor:
        """Tokens entering block 0 (prefix tokens first), exactly as timm computes them."""
        m = self.backbone
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(pixels))))

    def to_grid(self, patch_tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Patch tokens [B, h*w, C] in row-major order -> [B, C, h, w]."""
        b, n, c = patch_tokens.shape
        if n != grid[0] * grid[1]:
            raise EdgepruneError(f"head needs {grid[0] * grid[1]} patch tokens, got {n}")
        return patch_tokens.transpose(1, 2).reshape(b, c, grid[0], grid[1])

    def block_features(self, pixels: Tensor) -> list[Tensor]:
        """Token outputs [B, N, C] of each feature block; the deepest one is final-normed.

        Blocks past the deepest feature block are not run: the head cannot see them.
        """
        x = self.embed(pixels)
        wanted, last = set(self.feature_blocks), self.feature_blocks[-1]
        feats = []
        for i, block in enumerate(self.backbone.blocks):
            x = block(x)
            if i in wanted:
                feats.append(self.backbone.norm(x) if i == last else x)
            if i == last:
                break
        return feats

    def decode(self, feats: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """Patch tokens [B, h*w, C] of each feature block (prefix tokens dropped) -> logits at ``size``."""
        ph, pw = self.patch_size
        grid = (int(size[0]) // ph, int(size[1]) // pw)
        logits = self.head([self.to_grid(t, grid) for t in feats])
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, pixels: Tensor) -> Tensor:
        prefix = self.num_prefix_tokens
        return self.decode([t[:, prefix:] for t in self.block_features(pixels)], pixels.shape[-2:])


def create_segmenter(backbone: str, num_classes: int, head: str = "linear",
                     feature_blocks: Optional[Sequence[int]] = None,
                     head_args: Optional[Mapping[str, Any]] = None, stem: Optional[Mapping[str, Any]] = None,
                     **model_args: Any) -> ViTSegmenter:
    """Build a segmenter from a timm ViT name and model args (random weights, eval mode).

    ``feature_blocks`` defaults to the last block (linear) or three evenly spaced blocks ending at
    the last (multilevel); negative indices count from the end. ``head_args`` go to the head.
    ``stem={"channels": [32, 64]}`` replaces the linear patch projection by a :class:`ConvStem`.
    """
    if head not in HEADS:
        raise EdgepruneError(f"unknown segmentation head '{head}' (choose from {', '.join(HEADS)})")
    for key in ("num_classes", "global_pool"):
        if key in model_args:
            raise EdgepruneError(f"model arg '{key}' is set by the segmenter; pass num_classes directly")
    from timm.models.vision_transformer import VisionTransformer

    net = create_timm_model(backbone, {**model_args, "num_classes": 0, "global_pool": ""})
    if not isinstance(net, VisionTransformer):
        raise EdgepruneError(f"'{backbone}' is a {type(net).__name__}, not a timm VisionTransformer")
    if stem:
        unknown = set(stem) - {"channels"}
        if unknown or not isinstance(stem.get("channels"), (list, tuple)):
            raise EdgepruneError(f"stem must be {{'channels': [c1, c2, ...]}}, got {dict(stem)}")
        pe = net.patch_embed
        net.patch_embed.proj = ConvStem(pe.proj.in_channels, net.embed_dim, pe.patch_size[0], stem["channels"])
    depth = len(net.blocks)
    if feature_blocks is None:
        feature_blocks = [depth - 1] if head == "linear" else sorted({depth // 3 - 1, 2 * depth // 3 - 1, depth - 1} - {-1})
    blocks = []
    for b in feature_blocks:
        if not isinstance(b, int) or not -depth <= b < depth:
            raise EdgepruneError(f"feature block {b} is out of range for a {depth}-block backbone")
        blocks.append(b % depth)
    blocks = sorted(set(blocks))
    if not blocks:
        raise EdgepruneError("feature_blocks must name at least one block")
    if head == "linear" and len(blocks) != 1:
        raise EdgepruneError(f"the linear head uses one block, got feature_blocks {blocks}")
    head_args = dict(head_args or {})
    try:
        if head == "linear":
            head_mod: nn.Module = LinearSegHead(net.embed_dim, num_classes, **head_args)
        else:
            head_mod = MultiLevelSegHead(net.embed_dim, num_classes, len(blocks), **head_args)
    except TypeError as exc:
        raise EdgepruneError(f"bad head_args for the {head} head: {exc}") from None
    spec = {"family": FAMILY, "backbone": backbone, "model_args": dict(model_args), "head": head,
            "head_args": head_args, "feature_blocks": blocks, "num_classes": num_classes}
    if stem:
        spec["stem"] = {"channels": [int(c) for c in stem["channels"]]}
    return ViTSegmenter(net, head_mod, blocks, num_classes, spec).eval()


def save_segmenter(model: ViTSegmenter, folder: str | Path, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model.safetensors`` (fp32) and ``config.json`` (``model.spec`` + ``extra``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.contiguous().cpu()
             for k, v in model.state_dict().items()}
    write_atomic(folder / WEIGHTS_FILE, lambda p: save_file(state, p))
    config = {**model.spec, **dict(extra or {})}
    text = json.dumps(config, indent=2) + "\n"
    write_text_atomic(folder / CONFIG_FILE, text)
    return folder


def read_segmenter_config(folder_or_config: str | Path) -> tuple[dict[str, Any], Path]:
    """The parsed ``config.json`` and the weights path next to it; one-line errors otherwise."""
    path = Path(folder_or_config)
    config_path = path / CONFIG_FILE if path.is_dir() else path
    if not config_path.is_file():
        raise EdgepruneError(f"segmenter config {config_path} does not exist")
    try:
        config = loads_strict(config_path.read_text())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a duplicate key or NaN
        raise EdgepruneError(f"segmenter config {config_path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("family") != FAMILY:
        got = config.get("family") if isinstance(config, dict) else None
        raise EdgepruneError(f"segmenter config {config_path} has family {got!r}, expected '{FAMILY}'")
    missing = [k for k in ("backbone", "num_classes", "head") if k not in config]
    if missing:
        raise EdgepruneError(f"segmenter config {config_path} lacks {', '.join(missing)}")
    return config, config_path.parent / WEIGHTS_FILE


def load_segmenter(folder_or_config: str | Path) -> ViTSegmenter:
    """Rebuild a segmenter from its folder (or its ``config.json``) and load its weights strictly."""
    config, weights = read_segmenter_config(folder_or_config)
    model = create_segmenter(config["backbone"], int(config["num_classes"]), head=config["head"],
                             feature_blocks=config.get("feature_blocks"), head_args=config.get("head_args"),
                             stem=config.get("stem"), **dict(config.get("model_args") or {}))
    apply_state_dict(model, read_state_dict(weights), str(weights))
    model.info = {k: config[k] for k in ("classes", "palette", "input") if k in config}
    return model.eval()


def head_macs(model: ViTSegmenter) -> int:
    """MACs of the head's convolutions at the model's input size, counted on one dummy pass."""
    spec = model.backbone.patch_embed
    grid = tuple(s // p for s, p in zip(spec.img_size, spec.patch_size))
    dtype = next(model.head.parameters()).dtype
    feats = [torch.zeros(1, model.backbone.embed_dim, *grid, dtype=dtype) for _ in model.feature_blocks]
    return conv_macs(model.head, feats)


def stem_macs(model: ViTSegmenter) -> int:
    """MACs of a :class:`ConvStem` at the model's input size; 0 for the usual linear patchify."""
    proj = model.backbone.patch_embed.proj
    if not isinstance(proj, ConvStem):
        return 0
    size = tuple(model.backbone.patch_embed.img_size)
    dtype = next(proj.parameters()).dtype
    return conv_macs(proj, torch.zeros(1, proj.in_channels, *size, dtype=dtype))


class SegmenterAdapter(FamilyAdapter):
    """:class:`ViTSegmenter` for the reducers: the backbone's blocks up to the deepest feature block,
    then the head on one restored token per patch (see :mod:`edgeprune.families.dense`)."""

    family = FAMILY
    output_names = ("logits",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        from edgeprune.families.timm_vit import TimmViTAdapter

        self.backbone = TimmViTAdapter(model.backbone)  # checks the blocks are supported
        if getattr(model.backbone.patch_embed, "dynamic_img_size", False):
            raise EdgepruneError("dynamic_img_size models are not supported: export needs a fixed image size")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, ViTSegmenter)

    @cached_property
    def spec(self) -> ViTSpec:
        base = self.backbone.spec
        fields = {**base.__dict__, "depth": self.model.feature_blocks[-1] + 1, "head_dim_out": 0,
                  "feature_blocks": tuple(self.model.feature_blocks), "dense_head_macs": head_macs(self.model),
                  "stem_macs": stem_macs(self.model)}
        return ViTSpec(**fields)

    def embed(self, pixels: Tensor) -> Tensor:
        return self.model.embed(pixels)

    def blocks(self) -> list[BlockView]:
        return self.backbone.blocks()[: self.spec.depth]

    def final_norm(self, tokens: Tensor) -> Tensor:
        return self.model.backbone.norm(tokens)

    def head(self, patch_tokens: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """Restored patch tokens [B, P, C] per feature block -> logits [B, classes, *size]."""
        return self.model.decode(patch_tokens, size)

    def finish(self, x: Tensor, size: Tensor) -> tuple[Tensor, ...]:
        raise EdgepruneError("segmenters finish through their dense head (use reduced())")

    def reduced(self, plan) -> nn.Module:
        from edgeprune.families.dense import ReducedDense

        return ReducedDense(self, plan)

    def describe(self) -> dict:
        d = super().describe()
        d.update({"num_classes": self.model.num_classes, "head": self.model.spec.get("head"),
                  "feature_blocks": list(self.model.feature_blocks), **self.model.info})
        return d


__all__ = ["FAMILY", "HEADS", "ConvStem", "LinearSegHead", "MultiLevelSegHead", "SegmenterAdapter", "ViTSegmenter", "create_segmenter",
           "load_segmenter", "read_segmenter_config", "save_segmenter"]

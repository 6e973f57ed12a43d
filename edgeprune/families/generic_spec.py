"""The spec file of the generic adapter: where a research-code ViT keeps its parts, checked.

A spec is a small JSON document (``"format": 1, "kind": "edgeprune-vit-spec"``) naming, by dotted
path, the tensors and modules of a plain pre-norm ViT: patch embedding, CLS / register tokens,
position embedding, each block's norms, projections and MLP, and the head. This module reads and
validates it (:func:`read_spec`), lists the tensors it implies with their shapes (:func:`spec_parts`)
and checks them against a checkpoint or a live module (:func:`check_parts`). Every problem is one
:class:`EdgepruneError` line naming the field or path at fault. See docs/generic.md for the format.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import loads_strict

SPEC_FORMAT = 1
SPEC_KIND = "edgeprune-vit-spec"
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "quick_gelu")
POOLS = ("cls", "avg")
POS_COVERS = ("patches", "prefix", "cls")  # what the position embedding's rows are added to
PATCH_KINDS = ("conv", "linear")
ORDER_AXES = ("p1", "p2", "c")

# Every field a spec may hold, per section; anything else is a typo worth reporting, not ignoring.
FIELDS: dict[str, tuple[str, ...]] = {
    "": ("format", "kind", "name", "image", "patch_embed", "embed_dim", "cls_token", "registers", "pos_embed",
         "attention", "mlp", "norm_eps", "blocks", "final_norm", "head"),
    "image": ("size", "in_chans", "mean", "std"),
    "patch_embed": ("kind", "path", "patch_size", "order"),
    "registers": ("path", "count"),
    "pos_embed": ("path", "covers"),
    "attention": ("num_heads", "head_width", "scale"),
    "mlp": ("hidden", "act"),
    "blocks": ("depth", "norm1", "qkv", "q", "k", "v", "attn_out", "norm2", "fc1", "fc2", "ls1", "ls2"),
    "head": ("pool", "pool_include_prefix", "norm", "linear", "num_classes"),
}
BLOCK_PARTS = ("norm1", "qkv", "q", "k", "v", "attn_out", "norm2", "fc1", "fc2", "ls1", "ls2")


@dataclass(frozen=True)
class BlockPaths:
    """One block's resolved paths (``{i}`` filled in); unused parts are None."""

    norm1: str
    attn_out: str
    norm2: str
    fc1: str
    fc2: str
    qkv: Optional[str] = None
    q: Optional[str] = None
    k: Optional[str] = None
    v: Optional[str] = None
    ls1: Optional[str] = None
    ls2: Optional[str] = None


@dataclass(frozen=True)
class GenericSpec:
    """A validated spec. Paths are module paths (their ``.weight`` / ``.bias`` are read) except the
    token tensors (cls_token, registers, pos_embed) and layer-scale gammas, which name tensors."""

    img_size: tuple[int, int]
    in_chans: int
    patch_kind: str
    patch_path: str
    patch_size: int
    patch_order: tuple[str, str, str]
    embed_dim: int
    num_heads: int
    head_width: int
    scale: float
    mlp_hidden: int
    act: str
    eps: float
    blocks: tuple[BlockPaths, ...]
    name: str = ""
    cls_token: Optional[str] = None
    registers: Optional[str] = None
    num_registers: int = 0
    pos_embed: Optional[str] = None
    pos_covers: str = "patches"
    final_norm: Optional[str] = None
    pool: Optional[str] = None  # None: no head, the model returns its tokens
    pool_include_prefix: bool = False
    head_norm: Optional[str] = None
    head: Optional[str] = None
    num_classes: int = 0
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    source: str = "<dict>"  # the spec file, for messages and the manifest
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def attn_dim(self) -> int:
        return self.num_heads * self.head_width

    @property
    def num_prefix(self) -> int:
        return (1 if self.cls_token else 0) + self.num_registers

    @property
    def grid(self) -> tuple[int, int]:
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


def read_spec(spec: Union[str, Path, Mapping[str, Any]]) -> GenericSpec:
    """A spec file path or an already-parsed dict -> :class:`GenericSpec`, or one-line errors."""
    if isinstance(spec, Mapping):
        return parse_spec(dict(spec), "<dict>")
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgepruneError(f"spec {path} cannot be read: {exc.strerror or exc}") from None
    try:
        data = loads_strict(text)
    except ValueError as exc:
        raise EdgepruneError(f"spec {path} is not JSON: {exc}") from None
    return parse_spec(data, str(path))


class _Reader:
    """Typed field access with messages that say which field of which spec is wrong."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str) -> EdgepruneError:
        return EdgepruneError(f"spec {self.source}: {message}")

    def section(self, data: dict, key: str, required: bool) -> Optional[dict]:
        value = data.get(key)
        if value is None:
            if required:
                raise self.fail(f"missing required field '{key}'")
            return None
        if not isinstance(value, dict):
            raise self.fail(f"'{key}' must be an object, got {type(value).__name__}")
        self.known(value, key)
        return value

    def known(self, data: dict, section: str) -> None:
        allowed = FIELDS[section]
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(allowed)})"
                where = f"{section}.{key}" if section else key
                raise self.fail(f"unknown field '{where}'{hint}")

    def get(self, data: dict, key: str, kind: type, where: str, default: Any = None, required: bool = True) -> Any:
        value = data.get(key)
        name = f"{where}.{key}" if where else key
        if value is None:
            if required:
                raise self.fail(f"missing required field '{name}'")
            return default
        # JSON has one number type: accept 8 for 8.0, but not true for 1 or 2.5 for an integer.
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.fail(f"'{name}' must be a {_TYPE_NAMES[kind]}, got {json.dumps(value)}")
        if kind is int and value < (0 if key == "count" else 1):
            raise self.fail(f"'{name}' must be positive, got {value}")
        if kind is str and not value.strip():
            raise self.fail(f"'{name}' must not be empty")
        return value

    def choice(self, data: dict, key: str, where: str, choices: tuple[str, ...], default: Optional[str] = None) -> str:
        value = self.get(data, key, str, where, default, required=default is None)
        if value not in choices:
            raise self.fail(f"'{where}.{key}' must be one of {', '.join(choices)}, got '{value}'")
        return value


_TYPE_NAMES = {int: "positive integer", float: "number", str: "string (a dotted path)", bool: "boolean"}


def parse_spec(data: Any, source: str = "<dict>") -> GenericSpec:
    """Validate a parsed spec document; ``source`` names it in messages."""
    r = _Reader(source)
    if not isinstance(data, dict):
        raise r.fail(f"must be a JSON object, got {type(data).__name__}")
    if data.get("kind") != SPEC_KIND:
        raise r.fail(f"'kind' must be \"{SPEC_KIND}\", got {json.dumps(data.get('kind'))}")
    if data.get("format") != SPEC_FORMAT:
        raise r.fail(f"unsupported 'format' {json.dumps(data.get('format'))} (this edgeprune reads format {SPEC_FORMAT})")
    r.known(data, "")

    image = r.section(data, "image", required=True)
    size = image.get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise r.fail("missing required field 'image.size'" if size is None else
                     f"'image.size' must be an integer or a list of height and width, got {json.dumps(image.get('size'))}")
    in_chans = r.get(image, "in_chans", int, "image")
    mean, std = _normalisation(r, image, in_chans)

    pe = r.section(data, "patch_embed", required=True)
    patch_kind = r.choice(pe, "kind", "patch_embed", PATCH_KINDS)
    patch_path = r.get(pe, "path", str, "patch_embed")
    patch = r.get(pe, "patch_size", int, "patch_embed")
    order = r.get(pe, "order", str, "patch_embed", default="p1 p2 c", required=False)
    axes = tuple(order.split())
    if sorted(axes) != sorted(ORDER_AXES):
        raise r.fail(f"'patch_embed.order' must name p1 (row in the patch), p2 (column) and c once each, got '{order}'")
    if patch_kind == "conv" and "order" in pe:
        raise r.fail("'patch_embed.order' applies to kind 'linear' only (a conv's weight has its own layout)")
    if size[0] % patch or size[1] % patch:
        raise r.fail(f"image size {size[0]}x{size[1]} is not a multiple of patch_size {patch}")

    embed_dim = r.get(data, "embed_dim", int, "")
    cls_token = r.get(data, "cls_token", str, "", required=False)
    regs = r.section(data, "registers", required=False)
    reg_path = r.get(regs, "path", str, "registers") if regs else None
    reg_count = r.get(regs, "count", int, "registers") if regs else 0
    pos = r.section(data, "pos_embed", required=False)
    pos_path = r.get(pos, "path", str, "pos_embed") if pos else None
    covers = r.choice(pos, "covers", "pos_embed", POS_COVERS) if pos else "patches"
    if covers == "cls" and not cls_token:
        raise r.fail("'pos_embed.covers' is 'cls' but the spec has no cls_token")

    attn = r.section(data, "attention", required=True)
    heads = r.get(attn, "num_heads", int, "attention")
    if "head_width" not in attn and embed_dim % heads:
        raise r.fail(f"embed_dim {embed_dim} is not divisible by num_heads {heads}; give 'attention.head_width'")
    head_width = r.get(attn, "head_width", int, "attention", default=embed_dim // heads, required=False)
    scale = r.get(attn, "scale", float, "attention", default=head_width ** -0.5, required=False)
    if not (math.isfinite(scale) and scale > 0):
        raise r.fail(f"'attention.scale' must be a positive number, got {scale}")

    mlp = r.section(data, "mlp", required=True)
    hidden = r.get(mlp, "hidden", int, "mlp")
    act = r.choice(mlp, "act", "mlp", ACTIVATIONS)
    eps = r.get(data, "norm_eps", float, "", default=1e-5, required=False)
    if not (math.isfinite(eps) and eps > 0):
        raise r.fail(f"'norm_eps' must be a positive number, got {eps}")

    blocks = _blocks(r, r.section(data, "blocks", required=True))
    final_norm = r.get(data, "final_norm", str, "", required=False)

    head = r.section(data, "head", required=False)
    pool = head_norm = head_path = None
    include_prefix, classes = False, 0
    if head is not None:
        pool = r.choice(head, "pool", "head", POOLS)
        include_prefix = r.get(head, "pool_include_prefix", bool, "head", default=False, required=False)
        head_norm = r.get(head, "norm", str, "head", required=False)
        head_path = r.get(head, "linear", str, "head")
        classes = r.get(head, "num_classes", int, "head")
        if pool == "cls" and not cls_token:
            raise r.fail("'head.pool' is 'cls' but the spec has no cls_token")
        if include_prefix and pool != "avg":
            raise r.fail("'head.pool_include_prefix' applies to pool 'avg' only")
    return GenericSpec(
        img_size=(size[0], size[1]), in_chans=in_chans, patch_kind=patch_kind, patch_path=patch_path, patch_size=patch,
        patch_order=axes, embed_dim=embed_dim, num_heads=heads, head_width=head_width, scale=float(scale),
        mlp_hidden=hidden, act=act, eps=float(eps), blocks=blocks, name=str(data.get("name") or ""),
        cls_token=cls_token, registers=reg_path if reg_count else None, num_registers=reg_count,
        pos_embed=pos_path, pos_covers=covers, final_norm=final_norm, pool=pool, pool_include_prefix=include_prefix,
        head_norm=head_norm, head=head_path, num_classes=classes, mean=mean, std=std, source=source, raw=data,
    )


def _normalisation(r: _Reader, image: dict, chans: int) -> tuple[Optional[tuple[float, ...]], Optional[tuple[float, ...]]]:
    mean, std = image.get("mean"), image.get("std")
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise r.fail("'image.mean' and 'image.std' go together: give both or neither")
    values = []
    for key, v in (("mean", mean), ("std", std)):
        v = [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        if not (isinstance(v, list) and len(v) in (1, chans) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise r.fail(f"'image.{key}' must be a number or a list of {chans} numbers (pixels in 0..1), got {json.dumps(v)}")
        values.append(tuple(float(x) for x in v) * (chans if len(v) == 1 else 1))  # one value: every channel
    if any(s <= 0 for s in values[1]):
        raise r.fail(f"'image.std' must be positive, got {list(values[1])}")
    return values[0], values[1]


def _blocks(r: _Reader, blocks: dict) -> tuple[BlockPaths, ...]:
    depth = r.get(blocks, "depth", int, "blocks")
    templates = {k: r.get(blocks, k, str, "blocks", required=False) for k in BLOCK_PARTS}
    for key in ("norm1", "attn_out", "norm2", "fc1", "fc2"):
        if templates[key] is None:
            raise r.fail(f"missing required field 'blocks.{key}'")
    separate = [templates[k] is not None for k in ("q", "k", "v")]
    if templates["qkv"] is not None and any(separate):
        raise r.fail("give either 'blocks.qkv' (fused) or 'blocks.q', 'blocks.k', 'blocks.v' (separate), not both")
    if templates["qkv"] is None and not all(separate):
        raise r.fail("missing required field 'blocks.qkv' (or all of 'blocks.q', 'blocks.k', 'blocks.v')")
    for key, template in templates.items():
        # A block part without {i} would be one module shared by every block: almost surely a typo.
        if template is not None and depth > 1 and "{i}" not in template:
            raise r.fail(f"'blocks.{key}' must contain {{i}} (the block index), got '{template}'")
    return tuple(
        BlockPaths(**{k: t.replace("{i}", str(i)) for k, t in templates.items() if t is not None}) for i in range(depth)
    )


# --- the tensors a spec implies ------------------------------------------------------------------

@dataclass(frozen=True)
class Part:
    """One named part: ``kind`` is linear / norm / conv (a module path: ``.weight`` + optional
    ``.bias``) or tensor (the path is the tensor). ``shape`` is the weight's (or tensor's) shape,
    ``why`` how the spec arrives at it, for messages."""

    role: str
    path: str
    kind: str
    shape: tuple[int, ...]
    why: str
    template: str = ""  # the spec's block path with {i}, for block parts

    @property
    def weight(self) -> str:
        return self.path if self.kind == "tensor" else f"{self.path}.weight"

    @property
    def bias(self) -> Optional[str]:
        return None if self.kind == "tensor" else f"{self.path}.bias"

    @property
    def out(self) -> int:
        return self.shape[0] if self.kind != "tensor" else 0


def spec_parts(spec: GenericSpec) -> list[Part]:
    """Every part the spec names, in a stable order, with the shape the spec implies."""
    d, a, hid, p, c = spec.embed_dim, spec.attn_dim, spec.mlp_hidden, spec.patch_size, spec.in_chans
    # The reasons are plain words: messages end up in rich's console, where [words] are markup.
    heads = f"num_heads {spec.num_heads} x head_width {spec.head_width}"
    width = f"embed_dim {d}"
    parts = []
    if spec.patch_kind == "conv":
        parts.append(Part("patch_embed", spec.patch_path, "conv", (d, c, p, p), f"{width} x in_chans {c} x patch {p} x patch {p}"))
    else:
        parts.append(Part("patch_embed", spec.patch_path, "linear", (d, p * p * c), f"{width} by patch {p} x patch {p} x in_chans {c}"))
    if spec.cls_token:
        parts.append(Part("cls_token", spec.cls_token, "tensor", (d,), f"{width}, leading 1s allowed"))
    if spec.registers:
        parts.append(Part("registers", spec.registers, "tensor", (spec.num_registers, d),
                          f"registers.count {spec.num_registers} by {width}, leading 1s allowed"))
    if spec.pos_embed:
        extra = {"patches": 0, "prefix": spec.num_prefix, "cls": 1}[spec.pos_covers]
        parts.append(Part("pos_embed", spec.pos_embed, "tensor", (spec.num_patches + extra, d),
                          f"{spec.num_patches} patches + {extra} prefix rows (covers '{spec.pos_covers}') by {width}, "
                          "leading 1s allowed"))
    block_fields = spec.raw.get("blocks", {}) if isinstance(spec.raw.get("blocks"), dict) else {}
    shapes = {
        "norm1": ("norm", (d,), width), "norm2": ("norm", (d,), width),
        "qkv": ("linear", (3 * a, d), f"3 x {heads} by {width}"),
        "q": ("linear", (a, d), f"{heads} by {width}"), "k": ("linear", (a, d), f"{heads} by {width}"),
        "v": ("linear", (a, d), f"{heads} by {width}"), "attn_out": ("linear", (d, a), f"{width} by {heads}"),
        "fc1": ("linear", (hid, d), f"mlp.hidden {hid} by {width}"), "fc2": ("linear", (d, hid), f"{width} by mlp.hidden {hid}"),
        "ls1": ("tensor", (d,), width), "ls2": ("tensor", (d,), width),
    }
    for i, block in enumerate(spec.blocks):
        for key in BLOCK_PARTS:
            path = getattr(block, key)
            if path is not None:
                kind, shape, why = shapes[key]
                parts.append(Part(f"{key} of block {i}", path, kind, shape, why, str(block_fields.get(key, ""))))
    if spec.final_norm:
        parts.append(Part("final_norm", spec.final_norm, "norm", (d,), width))
    if spec.head_norm:
        parts.append(Part("head.norm", spec.head_norm, "norm", (d,), width))
    if spec.head:
        parts.append(Part("head.linear", spec.head, "linear", (spec.num_classes, d), f"head.num_classes {spec.num_classes} by {width}"))
    return parts


def _fits(found: tuple[int, ...], expected: tuple[int, ...], kind: str) -> bool:
    """Token tensors may carry leading 1s ([1, 1, D] for a CLS token, [1, N, D] for positions)."""
    if kind != "tensor":
        return found == expected
    lead = len(found) - len(expected)
    return lead >= 0 and found[lead:] == expected and all(s == 1 for s in found[:lead])


def _nearest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.5)
    return f"; nearest: {', '.join(close)}" if close else ""


def module_names(tensor_names: Iterable[str]) -> set[str]:
    """Every module path that holds one of ``tensor_names`` (all prefixes), for suggestions."""
    names = set()
    for key in tensor_names:
        parts = key.split(".")
        names.update(".".join(parts[:j]) for j in range(1, len(parts)))
    return names


def check_parts(parts: list[Part], shapes: Mapping[str, tuple[int, ...]], where: str,
                modules: Optional[Iterable[str]] = None) -> dict[str, tuple[int, ...]]:
    """Each part's tensors against ``shapes`` (name -> shape of a checkpoint or a module's
    parameters): the first missing path or wrong shape is an error naming it. Returns the shapes of
    the tensors the spec uses (weights and the biases that exist)."""
    modules = module_names(shapes) if modules is None else set(modules)
    used: dict[str, tuple[int, ...]] = {}
    for part in parts:
        label = f"spec path '{part.template or part.path}'" + (f" ({part.role} -> '{part.path}')" if part.template else f" ({part.role})")
        if part.weight not in shapes:
            pool = shapes.keys() if part.kind == "tensor" else modules
            what = "tensor" if part.kind == "tensor" else "module with a tensor"
            raise EdgepruneError(f"{label}: {where} has no {what} '{part.weight}'{_nearest(part.path, pool)}")
        found = tuple(shapes[part.weight])
        if not _fits(found, part.shape, part.kind):
            raise EdgepruneError(f"{label}: '{part.weight}' in {where} is {list(found)}, the spec needs "
                                 f"{list(part.shape)} ({part.why})")
        used[part.weight] = found
        if part.bias is not None and part.bias in shapes:
            bias = tuple(shapes[part.bias])
            if bias != (part.out,):
                raise EdgepruneError(f"{label}: '{part.bias}' in {where} is {list(bias)}, the spec needs [{part.out}]")
            used[part.bias] = bias
    return used


def default_shapes(parts: list[Part]) -> dict[str, tuple[int, ...]]:
    """The tensors of a freshly built model (no checkpoint): every module with a bias, token
    tensors with the usual leading batch axis."""
    shapes: dict[str, tuple[int, ...]] = {}
    for part in parts:
        if part.kind == "tensor":
            token = part.role in ("cls_token", "registers", "pos_embed")
            shapes[part.weight] = ((1,) * (3 - len(part.shape)) + part.shape) if token else part.shape
        else:
            shapes[part.weight] = part.shape
            shapes[part.bias] = (part.out,)
    return shapes

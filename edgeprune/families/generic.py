"""Generic adapter: research-code ViTs described by a spec of paths instead of a model class.

Two ways in:

* checkpoint mode, :func:`load_generic` (``edgeprune export spec.json --checkpoint ckpt.pt``): a module
  tree is built from the spec whose parameter names are exactly the spec's paths, so the
  checkpoint loads strictly and any disagreement between the two is reported, not papered over;
* Python, :func:`attach_spec`: the user's own module is checked against the spec and marked, so
  :func:`edgeprune.families.adapter_for` picks this adapter.

In both modes the adapter reads the weights by path and computes with functional ops, so the
computation is exactly what the spec says (a plain pre-norm ViT), whatever the module classes are.
The spec format lives in :mod:`edgeprune.families.generic_spec` and docs/generic.md.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeprune.core.errors import EdgepruneError
from edgeprune.families.base import BlockView, FamilyAdapter, size_weighted_mean
from edgeprune.families.generic_spec import GenericSpec, Part, check_parts, default_shapes, read_spec, spec_parts
from edgeprune.core.spec import ViTSpec

SPEC_ATTR = "edgeprune_spec"  # where attach_spec / GenericViT keep the spec on the module

SpecLike = Union[GenericSpec, Mapping[str, Any], str, Path]


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATION_FNS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "quick_gelu": _quick_gelu,
}


def _tensor(model: nn.Module, name: str) -> Optional[Tensor]:
    """The tensor at a dotted path (parameter, buffer or plain attribute), None when absent
    (a Linear built without bias has ``bias = None``)."""
    prefix, _, leaf = name.rpartition(".")
    owner = model.get_submodule(prefix) if prefix else model
    return getattr(owner, leaf, None)


class _Reader:
    """Functional ops on the tensors at the spec's paths, looked up at call time so that the
    module's own ``.to()`` / ``load_state_dict`` are always seen."""

    def __init__(self, model: nn.Module, spec: GenericSpec) -> None:
        self.model, self.spec = model, spec

    def t(self, name: str) -> Tensor:
        return _tensor(self.model, name)

    def linear(self, path: str, x: Tensor) -> Tensor:
        return F.linear(x, self.t(f"{path}.weight"), self.t(f"{path}.bias"))

    def norm(self, path: str, x: Tensor) -> Tensor:
        d = self.spec.embed_dim
        return F.layer_norm(x, (d,), self.t(f"{path}.weight"), self.t(f"{path}.bias"), self.spec.eps)

    def scaled(self, path: Optional[str], x: Tensor) -> Tensor:
        return x if path is None else x * self.t(path).reshape(-1)


class GenericBlockView(BlockView):
    def __init__(self, reader: _Reader, index: int) -> None:
        spec = reader.spec
        self.r, self.paths = reader, spec.blocks[index]
        self.scale = spec.scale
        self.heads, self.width = spec.num_heads, spec.head_width
        self.act = ACTIVATION_FNS[spec.act]

    def _heads(self, x: Tensor) -> Tensor:
        """[B, N, H*D] -> [B, H, N, D]: head-major columns, as every ViT splits them."""
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.width).transpose(1, 2)

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p = self.paths
        if p.qkv is None:
            return tuple(self._heads(self.r.linear(path, h)) for path in (p.q, p.k, p.v))
        b, n, _ = h.shape
        # Fused rows are q, then k, then v; each heads-major (timm and lucidrains' chunk(3) alike).
        qkv = self.r.linear(p.qkv, h).reshape(b, n, 3, self.heads, self.width).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def prefix_query_qkv(self, h: Tensor, num_query: int) -> tuple[Tensor, Tensor, Tensor]:
        p, r = self.paths, self.r
        if p.qkv is None:
            return self._heads(r.linear(p.q, h[:, :num_query])), self._heads(r.linear(p.k, h)), self._heads(r.linear(p.v, h))
        # Only the prefix rows need queries: project them with the q third of the fused weight.
        a = self.heads * self.width
        weight, bias = r.t(f"{p.qkv}.weight"), r.t(f"{p.qkv}.bias")
        q = F.linear(h[:, :num_query], weight[:a], None if bias is None else bias[:a])
        kv = F.linear(h, weight[a:], None if bias is None else bias[a:])
        b, n, _ = h.shape
        kv = kv.reshape(b, n, 2, self.heads, self.width).permute(2, 0, 3, 1, 4)
        return self._heads(q), kv[0], kv[1]

    def attn_out(self, a: Tensor) -> Tensor:
        b, _, n, _ = a.shape
        return self.r.linear(self.paths.attn_out, a.transpose(1, 2).reshape(b, n, self.heads * self.width))

    def norm1(self, x: Tensor) -> Tensor:
        return self.r.norm(self.paths.norm1, x)

    def norm2(self, x: Tensor) -> Tensor:
        return self.r.norm(self.paths.norm2, x)

    def mlp(self, x: Tensor) -> Tensor:
        return self.r.linear(self.paths.fc2, self.act(self.r.linear(self.paths.fc1, x)))

    def ls1(self, x: Tensor) -> Tensor:
        return self.r.scaled(self.paths.ls1, x)

    def ls2(self, x: Tensor) -> Tensor:
        return self.r.scaled(self.paths.ls2, x)


class GenericViTAdapter(FamilyAdapter):
    family = "generic-vit"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        spec = getattr(model, SPEC_ATTR, None)
        if not isinstance(spec, GenericSpec):
            raise EdgepruneError(f"{type(model).__name__} carries no generic spec; call edgeprune.families.generic.attach_spec first")
        self.g = spec
        self.r = _Reader(model, spec)
        self.output_names = ("logits",) if spec.head else ("tokens",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(getattr(model, SPEC_ATTR, None), GenericSpec)

    @property
    def spec(self) -> ViTSpec:
        g = self.g
        return ViTSpec(
            depth=g.depth, embed_dim=g.embed_dim, num_heads=g.num_heads, mlp_hidden=g.mlp_hidden,
            num_prefix=g.num_prefix, num_patches=g.num_patches, patch_size=g.patch_size, in_chans=g.in_chans,
            img_size=g.img_size, head_dim_out=g.num_classes if g.head else 0, class_token=g.cls_token is not None,
            head_width=0 if g.attn_dim == g.embed_dim else g.head_width,
            prefix_head=g.pool == "cls" and g.cls_token is not None,
        )

    def _patches(self, pixels: Tensor) -> Tensor:
        g, r = self.g, self.r
        if tuple(pixels.shape[1:]) != (g.in_chans, *g.img_size):
            raise EdgepruneError(f"input is {list(pixels.shape)}; the spec takes batch x {g.in_chans} x {g.img_size[0]} x {g.img_size[1]}")
        p, (gh, gw) = g.patch_size, g.grid
        if g.patch_kind == "conv":
            x = F.conv2d(pixels, r.t(f"{g.patch_path}.weight"), r.t(f"{g.patch_path}.bias"), stride=p)
            return x.flatten(2).transpose(1, 2)
        # Non-overlapping patches, row-major over the grid, each flattened in the spec's order.
        b = pixels.shape[0]
        x = pixels.reshape(b, g.in_chans, gh, p, gw, p)
        axis = {"c": 1, "p1": 3, "p2": 5}
        x = x.permute(0, 2, 4, *(axis[a] for a in g.patch_order)).reshape(b, gh * gw, p * p * g.in_chans)
        return r.linear(g.patch_path, x)

    def embed(self, pixels: Tensor) -> Tensor:
        g, r = self.g, self.r
        x = self._patches(pixels)
        b, d = x.shape[0], g.embed_dim
        cls = [r.t(g.cls_token).reshape(1, 1, d).expand(b, -1, -1)] if g.cls_token else []
        regs = [r.t(g.registers).reshape(1, g.num_registers, d).expand(b, -1, -1)] if g.registers else []
        pos = r.t(g.pos_embed).reshape(1, -1, d) if g.pos_embed else None
        if pos is None:
            return torch.cat(cls + regs + [x], dim=1)
        if g.pos_covers == "patches":
            return torch.cat(cls + regs + [x + pos], dim=1)
        if g.pos_covers == "prefix":
            return torch.cat(cls + regs + [x], dim=1) + pos
        x = torch.cat(cls + [x], dim=1) + pos  # covers "cls": registers join after the positions (DINOv2)
        return torch.cat([x[:, :1], *regs, x[:, 1:]], dim=1)

    def blocks(self) -> list[BlockView]:
        return [GenericBlockView(self.r, i) for i in range(self.g.depth)]

    def finish(self, x: Tensor, size: Tensor) -> tuple[Tensor, ...]:
        g, r = self.g, self.r
        if g.final_norm:
            x = r.norm(g.final_norm, x)
        if not g.head:
            return (x,)
        if g.pool == "cls":
            pooled = x[:, 0]
        else:
            # Merged tokens stand for several patches: weigh them so the mean is still over patches.
            p = 0 if g.pool_include_prefix else g.num_prefix
            pooled = size_weighted_mean(x[:, p:], size[:, p:])
        if g.head_norm:
            pooled = r.norm(g.head_norm, pooled)
        return (r.linear(g.head, pooled),)

    def input_config(self) -> Optional[dict]:
        if self.g.mean is None:
            return None
        return {"mean": list(self.g.mean), "std": list(self.g.std), "source": "spec"}

    def describe(self) -> dict:
        d = super().describe()
        g = self.g
        d.update(spec_name=g.name, spec_file=g.source, mode="checkpoint" if isinstance(self.model, GenericViT) else "attached",
                 patch_embed=g.patch_kind, pool=g.pool or "none", act=g.act)
        return d


def plain_forward(adapter: FamilyAdapter, pixels: Tensor) -> Union[Tensor, tuple[Tensor, ...]]:
    """The unreduced model: what the spec describes, block by block (pre-norm, residual)."""
    x = adapter.embed(pixels)
    for view in adapter.blocks():
        q, k, v = view.qkv(view.norm1(x))
        x = x + view.ls1(view.attn_out(F.scaled_dot_product_attention(q, k, v, scale=view.scale)))
        x = x + view.ls2(view.mlp(view.norm2(x)))
    out = adapter.finish(x, torch.ones_like(x[..., :1]))
    return out[0] if len(out) == 1 else out


# --- checkpoint mode: a module tree whose parameter names are the spec's paths ----------------------

class GenericViT(nn.Module):
    """A ViT built from a spec alone; ``state_dict()`` keys are exactly the spec's tensors."""

    def __init__(self, spec: GenericSpec, shapes: Optional[Mapping[str, tuple[int, ...]]] = None) -> None:
        super().__init__()
        setattr(self, SPEC_ATTR, spec)  # first, so a path that would shadow it is refused below
        parts = spec_parts(spec)
        shapes = default_shapes(parts) if shapes is None else shapes
        for part in parts:
            _place(self, part, _make(part, shapes, spec))

    def forward(self, pixels: Tensor) -> Union[Tensor, tuple[Tensor, ...]]:
        return plain_forward(GenericViTAdapter(self), pixels)


def _make(part: Part, shapes: Mapping[str, tuple[int, ...]], spec: GenericSpec) -> Union[nn.Module, nn.Parameter]:
    """A fresh module (or parameter) for ``part``, randomly initialised, with a bias when ``shapes`` has one."""
    weight = tuple(shapes[part.weight])
    bias = part.bias is not None and part.bias in shapes
    if part.kind == "linear":
        return nn.Linear(weight[1], weight[0], bias=bias)
    if part.kind == "norm":
        return nn.LayerNorm(weight[0], eps=spec.eps, bias=bias)
    if part.kind == "conv":
        return nn.Conv2d(weight[1], weight[0], weight[2], stride=weight[2], bias=bias)
    # Token tensors start small and random (a checkpoint replaces them); layer scales start neutral.
    init = torch.ones(weight) if part.role.startswith("ls") else 0.02 * torch.randn(weight)
    return nn.Parameter(init)


def _place(root: nn.Module, part: Part, item: Union[nn.Module, nn.Parameter]) -> None:
    """Put ``item`` at ``part.path`` under ``root``, creating plain container modules on the way,
    so that the state dict key is the path itself (research checkpoints name e.g. ``layers.0.1.fn``)."""
    *parents, leaf = part.path.split(".")
    owner = root
    try:
        for name in parents:
            child = owner._modules.get(name)
            if child is None:
                if not name or name in owner._parameters or hasattr(owner, name):
                    raise KeyError(name)
                child = nn.Module()
                owner.add_module(name, child)
            owner = child
        existing = owner._modules.get(leaf, owner._parameters.get(leaf))
        if existing is not None:
            # Two roles naming one module (a shared norm) are fine when they agree on what it is.
            if type(existing) is type(item) and _weight_shape(existing) == _weight_shape(item):
                return
            raise KeyError(leaf)
        if isinstance(item, nn.Parameter):
            owner.register_parameter(leaf, item)
        else:
            owner.add_module(leaf, item)
    except (KeyError, TypeError) as exc:
        raise EdgepruneError(f"spec path '{part.path}' ({part.role}) clashes with another path of the spec or "
                             f"with a module attribute ('{exc.args[0] if exc.args else part.path}')") from None


def _weight_shape(item: Union[nn.Module, nn.Parameter]) -> Optional[tuple[int, ...]]:
    weight = item if isinstance(item, nn.Parameter) else getattr(item, "weight", None)
    return None if weight is None else tuple(weight.shape)


def load_generic(spec_path: Union[str, Path], *, checkpoint: Optional[Union[str, Path]] = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a spec file describes and load ``checkpoint`` into it strictly.

    Returns the model (eval mode) and facts for the manifest. Every mismatch between spec and
    checkpoint (a path with no tensor, a wrong shape, a tensor the spec does not name) is one
    EdgepruneError line; without a checkpoint the weights are random.
    """
    from edgeprune.core.files import sha256_file
    from edgeprune.families.weights import apply_state_dict, read_state_dict

    spec = read_spec(spec_path)
    parts = spec_parts(spec)
    info: dict[str, Any] = {"source": "generic-spec", "name": spec.name or Path(spec_path).stem, "spec_file": str(spec_path)}
    if checkpoint is None:
        model = GenericViT(spec)
        info["weights"] = "random (no --checkpoint)"
    else:
        state = read_state_dict(checkpoint)
        where = f"checkpoint {checkpoint}"
        shapes = check_parts(parts, {k: tuple(v.shape) for k, v in state.items()}, where)
        extra = [k for k in state if k not in shapes]
        if extra:
            raise EdgepruneError(f"{where} does not match spec {spec.source}: {len(extra)} tensor(s) the spec does not "
                                 f"name, e.g. '{extra[0]}' (name it in the spec, or drop it from the checkpoint)")
        model = GenericViT(spec, shapes)
        apply_state_dict(model, state, str(checkpoint))  # strict; cannot fail after the checks above
        info.update(checkpoint=str(checkpoint), checkpoint_sha256=sha256_file(Path(checkpoint)))
    config = GenericViTAdapter(model).input_config()
    if config is not None:
        info["input"] = config
    return model.eval(), info


# --- Python mode: the user's own module, checked and marked ---------------------------------------

def attach_spec(model: nn.Module, spec: SpecLike) -> nn.Module:
    """Check ``spec``'s paths against ``model`` and mark it for the generic adapter; returns ``model``.

    ``spec`` is a dict, a spec file or a parsed :class:`GenericSpec`. The model keeps its own
    forward; edgeprune's reduced forward reads its weights by the spec's paths.
    """
    g = spec if isinstance(spec, GenericSpec) else read_spec(spec)
    tensors = chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    shapes = {name: tuple(t.shape) for name, t in tensors}
    where = type(model).__name__
    check_parts(spec_parts(g), shapes, where, modules=[n for n, _ in model.named_modules(remove_duplicate=False)])
    _check_module_kinds(model, g, where)
    setattr(model, SPEC_ATTR, g)
    return model


def _check_module_kinds(model: nn.Module, g: GenericSpec, where: str) -> None:
    """Where the modules are torch's own, their settings must agree with the spec (the adapter
    computes from the weights with the spec's eps and stride, not by calling the modules)."""
    for part in spec_parts(g):
        if part.kind == "tensor":
            continue
        module = model.get_submodule(part.path)
        if isinstance(module, nn.LayerNorm) and abs(module.eps - g.eps) > 1e-12:
            raise EdgepruneError(f"spec path '{part.path}' ({part.role}): {where}'s LayerNorm has eps {module.eps:g}, "
                                 f"the spec's norm_eps is {g.eps:g}")
        if isinstance(module, nn.Conv2d) and (tuple(module.stride) != (g.patch_size,) * 2 or any(module.padding)
                                              or module.groups != 1 or tuple(module.dilation) != (1, 1)):
            raise EdgepruneError(f"spec path '{part.path}' ({part.role}): {where}'s Conv2d is not a plain patch "
                                 f"embedding (stride {module.stride}, padding {module.padding}); edgeprune needs "
                                 f"non-overlapping {g.patch_size}x{g.patch_size} patches")


__all__ = ["GenericViT", "GenericViTAdapter", "attach_spec", "load_generic", "plain_forward"]

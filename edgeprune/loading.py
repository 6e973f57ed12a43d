"""Load the user's model: a timm name or ``torchvision:vit_*`` (+ model args + local checkpoint), or a HF
save_pretrained folder.

Weights come from local files only, read safely: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from edgeprune.artifact import sha256_file
from edgeprune.errors import EdgepruneError, first_line

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def parse_model_args(pairs: Sequence[str], flag: str = "--model-arg") -> dict[str, Any]:
    """``["depth=6", "img_size=32", "global_pool=avg"]`` -> typed kwargs (Python literals, else strings)."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise EdgepruneError(f"{flag} expects KEY=VALUE, got '{pair}'")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        args[key.strip()] = value
    return args


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, without ever unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise EdgepruneError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise EdgepruneError(f"checkpoint {path} is not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # includes UnpicklingError for files with arbitrary objects
            raise EdgepruneError(f"checkpoint {path} cannot be loaded as plain weights: {first_line(exc)}") from None
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EdgepruneError(f"checkpoint {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly; on mismatch say what does not fit in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise EdgepruneError(f"checkpoint {source} does not fit the model: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def create_timm_model(name: str, model_args: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise EdgepruneError(f"unknown model '{name}'{hint}")
    try:
        return timm.create_model(name, pretrained=False, **model_args).eval()
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise EdgepruneError(f"cannot build {name} with {model_args}: {exc}") from None


def _is_segmenter_folder(path: Path) -> bool:
    """A folder whose config.json names the edgeprune segmenter family (HF folders have other keys)."""
    import json

    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("family") == "timm-vit-seg"
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False


TORCHVISION_PREFIX = "torchvision:"


def load_torchvision(
    name: str, checkpoint: Optional[str | Path], model_args: dict[str, Any], img_size: Optional[int]
) -> tuple[nn.Module, dict[str, Any]]:
    """``torchvision:vit_b_16`` and the other torchvision ViT builders, random or from a local state dict.

    ``--img-size`` is torchvision's ``image_size``. The input normalisation is the one torchvision's
    ImageNet ViT weights use, recorded because the model itself does not carry it.
    """
    from edgeprune.exporters.torchvision_vit import IMAGENET_MEAN, IMAGENET_STD, create_torchvision_vit

    if img_size is not None:
        model_args["image_size"] = img_size
    net = create_torchvision_vit(name, model_args)
    info: dict[str, Any] = {"source": "torchvision", "name": f"{TORCHVISION_PREFIX}{name}", "model_args": model_args}
    if checkpoint is not None:
        apply_state_dict(net, read_state_dict(checkpoint), str(checkpoint))
        info.update(checkpoint=str(checkpoint), checkpoint_sha256=sha256_file(Path(checkpoint)))
    else:
        info["weights"] = "random (no --checkpoint)"
    info["input"] = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "source": "torchvision ImageNet weights"}
    return net.eval(), info


def load_model(
    model: str,
    *,
    checkpoint: Optional[str | Path] = None,
    model_args: Optional[dict[str, Any]] = None,
    img_size: Optional[int] = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model the CLI was pointed at; returns it (eval mode) and facts for the manifest."""
    model_args = dict(model_args or {})
    if model.startswith(TORCHVISION_PREFIX):
        return load_torchvision(model.removeprefix(TORCHVISION_PREFIX), checkpoint, model_args, img_size)
    if img_size is not None:
        model_args["img_size"] = img_size
    path = Path(model)
    if path.is_dir() and _is_segmenter_folder(path):
        from edgeprune.exporters.timm_seg import load_segmenter

        if checkpoint or model_args:
            raise EdgepruneError("--checkpoint/--model-arg/--img-size apply to timm models; a segmenter folder carries its own")
        weights = path / "model.safetensors"
        info = {"source": "edgeprune-segmenter", "path": str(path)}
        if weights.is_file():
            info["checkpoint_sha256"] = sha256_file(weights)
        return load_segmenter(path), info
    if path.is_file() and path.suffix == ".json":  # a generic-adapter spec file naming the model's parts
        from edgeprune.exporters.generic import load_generic

        if model_args or img_size is not None:
            raise EdgepruneError("--model-arg/--img-size apply to timm models; a spec file carries its own")
        return load_generic(path, checkpoint=checkpoint)
    if path.is_dir():
        from edgeprune.exporters.hf_loading import load_hf_folder

        if checkpoint or model_args:
            raise EdgepruneError("--checkpoint/--model-arg/--img-size apply to timm models; a HF folder carries its own")
        net, norm = load_hf_folder(path)
        info = {"source": "huggingface", "path": str(path)}
        if norm is not None:
            info["input"] = {**norm, "source": "preprocessor_config.json"}
        return net, info
    if any(sep in model for sep in ("/", "\\")) and not path.exists():
        raise EdgepruneError(f"model folder {model} does not exist")
    net = create_timm_model(model, model_args)
    info: dict[str, Any] = {"source": "timm", "name": model, "model_args": model_args}
    if checkpoint is not None:
        apply_state_dict(net, read_state_dict(checkpoint), str(checkpoint))
        info.update(checkpoint=str(checkpoint), checkpoint_sha256=sha256_file(Path(checkpoint)))
    else:
        info["weights"] = "random (no --checkpoint)"
    return net.eval(), info


def model_fingerprint(model: nn.Module) -> str:
    """Hash of every parameter and buffer: a resumed search or a reused export must be of the same weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]

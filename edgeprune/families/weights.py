"""Weights and model construction every family shares: state dicts read safely (safetensors or
weights-only torch.load), applied with one clear error, timm models created by name, fingerprints."""

from __future__ import annotations

import ast
import difflib
import hashlib
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from edgeprune.core.errors import EdgepruneError, first_line

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


def model_fingerprint(model: nn.Module) -> str:
    """Hash of every parameter and buffer: a resumed search or a reused export must be of the same weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]

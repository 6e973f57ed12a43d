"""Load the user's model: a timm name or ``torchvision:vit_*`` (+ model args + local checkpoint), or a HF
save_pretrained folder.

Weights come from local files only, read safely: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch import nn

from edgeprune.families.weights import apply_state_dict, create_timm_model, read_state_dict
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import read_json, sha256_file

def _is_segmenter_folder(path: Path) -> bool:
    """A folder whose config.json names the edgeprune segmenter family (HF folders have other keys)."""
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return read_json(config).get("family") == "timm-vit-seg"
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
    from edgeprune.families.torchvision_vit import IMAGENET_MEAN, IMAGENET_STD, create_torchvision_vit

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
        from edgeprune.families.timm_seg import load_segmenter

        if checkpoint or model_args:
            raise EdgepruneError("--checkpoint/--model-arg/--img-size apply to timm models; a segmenter folder carries its own")
        weights = path / "model.safetensors"
        info = {"source": "edgeprune-segmenter", "path": str(path)}
        if weights.is_file():
            info["checkpoint_sha256"] = sha256_file(weights)
        return load_segmenter(path), info
    if path.is_file() and path.suffix == ".json":  # a generic-adapter spec file naming the model's parts
        from edgeprune.families.generic import load_generic

        if model_args or img_size is not None:
            raise EdgepruneError("--model-arg/--img-size apply to timm models; a spec file carries its own")
        return load_generic(path, checkpoint=checkpoint)
    if path.is_dir():
        from edgeprune.families.hf_loading import load_hf_folder

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

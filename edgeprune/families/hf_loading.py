"""Load HF ``save_pretrained`` folders of the supported vision families, offline and strictly.

CLIP/SigLIP (vision towers, also out of full CLIP/SigLIP folders) and ViT/DeiT/DINOv2 (base models or
the classifier ``architectures`` names). A folder's ``preprocessor_config.json`` gives the input
normalisation, which HF model configs do not record.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

from torch import nn

from edgeprune.core.errors import EdgepruneError

# config.json's model_type (or, without one, its architectures) -> the family to load
_TYPES = {"clip_vision_model": "clip", "clip": "clip", "siglip_vision_model": "siglip", "siglip": "siglip"}
_TYPES.update(vit="vit", deit="deit", dinov2="dinov2")
_ARCHS = {"CLIPVisionModel": "clip", "CLIPVisionModelWithProjection": "clip", "CLIPModel": "clip"}
_ARCHS.update(SiglipVisionModel="siglip", SiglipModel="siglip")
# ViT/DeiT/DINOv2: the base model, and the classifiers loaded when config.json's architectures name them.
_CLASSES = {
    "vit": ("ViTModel", ("ViTForImageClassification",)),
    "deit": ("DeiTModel", ("DeiTForImageClassificationWithTeacher", "DeiTForImageClassification")),
    "dinov2": ("Dinov2Model", ("Dinov2ForImageClassification",)),
}
_ARCHS.update({name: family for family, (base, heads) in _CLASSES.items() for name in (base, *heads)})
# Checkpoint keys of the vision tower itself (after its prefix in a bigger model); other unused keys
# (text tower, logit scale, a masked-image-modeling decoder) are expected.
_TOWER_KEYS = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.", "head.", "layers.", "layernorm.")
_TOWER_PREFIXES = ("vision_model.", "vit.", "deit.", "dinov2.")


def load_hf_vision(folder: Union[str, Path]) -> nn.Module:
    """Load a vision model saved with ``save_pretrained``, offline, in eval mode, float32.

    A full CLIP/SigLIP folder gives its vision tower. A ``CLIPVisionModelWithProjection`` folder keeps
    its projection. ViT/DeiT/DINOv2 folders give the classifier their ``architectures`` name, else the
    base model (a ViT/DeiT saved without pooler loads without one). Weights are cast to float32
    because edgeprune's parity checks and exports start from float32; engines pick their own
    precision. Any problem becomes one :class:`EdgepruneError` line: a half-loaded model (missing or
    resized weights) would otherwise run with random parts.
    """
    return load_hf_folder(folder)[0]


def load_hf_folder(folder: Union[str, Path]) -> tuple[nn.Module, Optional[dict]]:
    """:func:`load_hf_vision`, plus the input normalisation ``{"mean": [...], "std": [...]}`` from the
    folder's ``preprocessor_config.json`` (None without one): HF model configs do not record it."""
    path = Path(folder)
    cfg = read_model_config(path)
    cfg_file = path / "config.json"
    cls = _class_for(cfg, cfg_file)
    with _quiet_transformers():
        try:
            kwargs = dict(local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True)
            model, info = cls.from_pretrained(path, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the library raises many types; all mean "cannot load"
            raise EdgepruneError(f"cannot load {cls.__name__} from '{path}': {_one_line(exc)}") from None
    _drop_absent_pooler(model, info)
    _check_loading(info, path)
    return model.float().eval(), _read_normalisation(path, int(getattr(model.config, "num_channels", 3)))


def read_model_config(path: Path, missing: str = "has no config.json (expected a folder written by save_pretrained)") -> dict:
    """config.json of a ``save_pretrained`` folder as a dict; a missing folder or file, or unreadable
    JSON, is one error line (``missing`` says what the folder lacks)."""
    if not path.is_dir():
        raise EdgepruneError(f"model folder '{path}' does not exist")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise EdgepruneError(f"'{path}' {missing}")
    return _read_json_object(cfg_file, "a model config")


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
    if family in _CLASSES:
        base, heads = _CLASSES[family]
        return getattr(transformers, next((h for h in heads if h in archs), base))
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
    extra = sorted(k for k in unused if _tower_key(k).startswith(_TOWER_KEYS) and "mask_token" not in k)
    if extra:
        raise EdgepruneError(f"{misfit} {len(extra)} vision tensors unused, e.g. {extra[0]}")


def _tower_key(key: str) -> str:
    return next((key.removeprefix(p) for p in _TOWER_PREFIXES if key.startswith(p)), key)


def _drop_absent_pooler(model: nn.Module, info: dict) -> None:
    """A ViT/DeiT saved with ``add_pooling_layer=False`` has no pooler weights; HF's ``ViTModel``
    builds one anyway. Rather than run it with random weights, drop it, as the saved model had none."""
    missing = info.get("missing_keys") or []
    pooler = [k for k in missing if _tower_key(k).startswith("pooler.")]
    if pooler and getattr(model, "pooler", None) is not None and len(pooler) == len(list(model.pooler.state_dict())):
        model.pooler = None
        info["missing_keys"] = [k for k in missing if k not in pooler]


def _read_normalisation(path: Path, channels: int) -> Optional[dict]:
    """``image_mean``/``image_std`` of ``preprocessor_config.json`` (mean 0, std 1 when the processor
    does not normalise), or None without the file. A file we cannot read is an error: a wrong guess
    would silently shift every input."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return None
    cfg = _read_json_object(file, "a preprocessor config")
    if cfg.get("do_normalize") is False:
        return {"mean": [0.0] * channels, "std": [1.0] * channels}
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    if mean is None or std is None:
        return None
    mean, std = [v if isinstance(v, list) else [v] * channels for v in (mean, std)]
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (*mean, *std))
    if not ok or len(mean) != channels or len(std) != channels or not all(v > 0 for v in std):
        raise EdgepruneError(f"'{file}' has image_mean {cfg.get('image_mean')} / image_std {cfg.get('image_std')}; "
                             f"expected {channels} numbers each (std > 0)")
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


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


def _read_json_object(file: Path, what: str) -> dict:
    """A JSON object from ``file``; unreadable or non-object content is one error line."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgepruneError(f"cannot read '{file}': {_one_line(exc)}") from None
    if not isinstance(data, dict):
        raise EdgepruneError(f"'{file}' is not {what} (expected a JSON object)")
    return data

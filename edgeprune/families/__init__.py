"""Model-family adapters (a registry, one family per module) and the ONNX exporter."""

from __future__ import annotations

from torch import nn

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.spec import ViTSpec
from edgeprune.families.base import FamilyAdapter, ReducedViT
from edgeprune.families.generic import GenericViTAdapter
from edgeprune.families.timm_seg import SegmenterAdapter
from edgeprune.families.timm_vit import TimmViTAdapter
from edgeprune.families.torchvision_vit import TorchvisionViTAdapter

ADAPTERS: list[type[FamilyAdapter]] = [TimmViTAdapter, SegmenterAdapter, TorchvisionViTAdapter]

try:  # transformers is optional at import time; the HF adapters register when it is present
    from edgeprune.families.hf_vision import HF_ADAPTERS
    from edgeprune.families.hf_vit import HF_VIT_ADAPTERS

    ADAPTERS.extend(HF_ADAPTERS + HF_VIT_ADAPTERS)
except ImportError:  # pragma: no cover - depends on the environment
    pass

ADAPTERS.insert(0, GenericViTAdapter)  # a spec attached on purpose wins over family detection


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter of ``model``'s family, or a clear error naming the supported ones."""
    for cls in ADAPTERS:
        if cls.matches(model):
            return cls(model)
    names = ", ".join(c.family for c in ADAPTERS)
    hint = "; pass its .vision_model (the vision tower)" if hasattr(model, "vision_model") else ""
    raise EdgepruneError(f"{type(model).__name__} is not a supported ViT family (supported: {names}){hint}")


def spec_of(model: nn.Module) -> ViTSpec:
    """The :class:`ViTSpec` of ``model`` (any supported family)."""
    return adapter_for(model).spec


__all__ = ["ADAPTERS", "FamilyAdapter", "ReducedViT", "adapter_for", "spec_of"]

"""edgeprune: token reduction for Vision Transformers, exported as static-shape graphs.

Data flows one way: model -> :func:`build_plan` -> :func:`reduce_model` -> :func:`export`
-> artifact (ONNX + manifest) -> engine -> runtime.

Everything but the error types loads on first use, so ``import edgeprune`` (and ``edgeprune
--help``) does not pay for torch, onnx or onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeprune.errors import EdgepruneError, ParityError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from torch import nn

    from edgeprune.exporters.onnx_export import export
    from edgeprune.plan import TokenPlan, build_plan
    from edgeprune.spec import ViTSpec


def reduce_model(model: "nn.Module", plan: "TokenPlan") -> "nn.Module":
    """``model`` with ``plan`` applied, in eval mode; shares the model's weights. Classifiers and
    encoders come back as a ReducedViT, segmenters as a ReducedDense (logits at input resolution)."""
    from edgeprune.exporters import adapter_for

    return adapter_for(model).reduced(plan).eval()


_LAZY = {
    "build_plan": "edgeprune.plan",
    "TokenPlan": "edgeprune.plan",
    "ViTSpec": "edgeprune.spec",
    "export": "edgeprune.exporters.onnx_export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")


__all__ = ["EdgepruneError", "ParityError", "TokenPlan", "ViTSpec", "build_plan", "reduce_model", "export", "__version__"]

"""edgeprune: token reduction for Vision Transformers, exported as static-shape graphs.

Data flows one way: model -> :func:`build_plan` -> :func:`reduce_model` -> :func:`export`
-> artifact (ONNX + manifest) -> engine -> runtime.

Everything but the error types loads on first use, so ``import edgeprune`` (and ``edgeprune
--help``) does not pay for torch, onnx or onnxruntime, and works where only the runtime is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeprune.core.errors import EdgepruneError, ParityError
from edgeprune.core.version import __version__

if TYPE_CHECKING:
    from torch import nn

    from edgeprune.core.spec import ViTSpec
    from edgeprune.exporting.onnx_export import export
    from edgeprune.plan.token_plan import TokenPlan


def build_plan(model_or_spec: "nn.Module | ViTSpec", method: str, **budget: Any) -> "TokenPlan":
    """A token plan for a model (any supported family) or a :class:`ViTSpec`; see
    :func:`edgeprune.plan.build_plan` for the budgets and schedules."""
    from edgeprune.core.spec import ViTSpec
    from edgeprune.plan.token_plan import build_plan as plan_for_spec

    if not isinstance(model_or_spec, ViTSpec):
        from edgeprune.families import spec_of

        model_or_spec = spec_of(model_or_spec)
    return plan_for_spec(model_or_spec, method, **budget)


def reduce_model(model: "nn.Module", plan: "TokenPlan") -> "nn.Module":
    """``model`` with ``plan`` applied, in eval mode; shares the model's weights. Classifiers and
    encoders come back as a ReducedViT, segmenters as a ReducedDense (logits at input resolution)."""
    from edgeprune.families import adapter_for

    return adapter_for(model).reduced(plan).eval()


_LAZY = {
    "TokenPlan": "edgeprune.plan.token_plan",
    "ViTSpec": "edgeprune.core.spec",
    "export": "edgeprune.exporting.onnx_export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")


__all__ = ["EdgepruneError", "ParityError", "TokenPlan", "ViTSpec", "build_plan", "reduce_model", "export", "__version__"]

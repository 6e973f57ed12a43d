"""edgeprune: token reduction for Vision Transformers, exported as static-shape graphs.

Data flows one way: model -> :func:`build_plan` -> :func:`reduce_model` -> :func:`export`
-> artifact (ONNX + manifest) -> engine -> runtime.
"""

from __future__ import annotations

from torch import nn

from edgeprune.errors import EdgepruneError, ParityError
from edgeprune.plan import TokenPlan, build_plan
from edgeprune.spec import ViTSpec

__version__ = "0.1.0"


def reduce_model(model: nn.Module, plan: TokenPlan) -> "nn.Module":
    """``model`` with ``plan`` applied, in eval mode; shares the model's weights. Classifiers and
    encoders come back as a ReducedViT, segmenters as a ReducedDense (logits at input resolution)."""
    from edgeprune.exporters import adapter_for

    return adapter_for(model).reduced(plan).eval()


def __getattr__(name: str):
    # Export pulls in onnx/onnxscript; keep `import edgeprune` light.
    if name == "export":
        from edgeprune.exporters.onnx_export import export

        return export
    raise AttributeError(name)


__all__ = ["EdgepruneError", "ParityError", "TokenPlan", "ViTSpec", "build_plan", "reduce_model", "export", "__version__"]

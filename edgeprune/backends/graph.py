"""Static facts about an exported ONNX graph: op counts and the export-safety rules edgeprune promises."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Union

import numpy as np
import onnx
from onnx import numpy_helper

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.limits import TOPK_LIMIT

MIN_OPSET = 17
FORBIDDEN_OPS = {
    "ScatterElements": "scatter writes with duplicate indices are undefined or silently wrong on TensorRT",
    "ScatterND": "scatter writes with duplicate indices are undefined or silently wrong on TensorRT",
    "Scatter": "deprecated scatter op",
}


def load_graph(path: Union[str, Path]) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends on corrupt files
        raise EdgepruneError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None


def topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its nodes in an order where every input is produced before it is read (the ONNX
    rule; graph rewriters such as the fp16 converter append nodes at the end, and TensorRT's parser
    reads nodes in order). Sorts in place and returns the model."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({n for node in rest for n in node.input if n not in ready})[:3]
            raise EdgepruneError(f"graph has a cycle or reads undefined tensors: {', '.join(missing)}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def constant_arrays(model: onnx.ModelProto, max_size: int = 16, integers: bool = False) -> dict[str, np.ndarray]:
    """Initializers and Constant outputs as arrays: the small ones (<= ``max_size`` values), plus
    every integer one when ``integers``. Weights are never copied out."""
    from onnx import TensorProto

    int_types = (TensorProto.INT64, TensorProto.INT32)
    values = {}
    tensors = [(t.name, t) for t in model.graph.initializer]
    tensors += [(n.output[0], a.t) for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
                if a.name == "value"]
    for name, tensor in tensors:
        size = 1
        for d in tensor.dims:
            size *= d
        if size <= max_size or (integers and tensor.data_type in int_types):
            values[name] = numpy_helper.to_array(tensor)
    return values


def _constant_values(model: onnx.ModelProto) -> dict[str, list]:
    return {name: a.ravel().tolist() for name, a in constant_arrays(model, max_size=1).items()}


def safety_problems(model: onnx.ModelProto) -> list[str]:
    """Violations of the rules every edgeprune graph must follow (empty when clean)."""
    problems = []
    opset = default_opset(model)
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} < {MIN_OPSET}: LayerNorm would not be one LayerNormalization node")
    constants = _constant_values(model)
    for node in model.graph.node:
        if node.op_type in FORBIDDEN_OPS:
            problems.append(f"{node.name or node.op_type}: {node.op_type} ({FORBIDDEN_OPS[node.op_type]})")
        if node.op_type == "TopK":
            k = constants.get(node.input[1]) if len(node.input) > 1 else None
            if k is None:
                problems.append(f"{node.name}: TopK with a data-dependent K")
            elif int(k[0]) >= TOPK_LIMIT:
                problems.append(f"{node.name}: TopK K={int(k[0])} >= {TOPK_LIMIT}")
    for value in list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims[1:]):
            problems.append(f"output {value.name} has a dynamic non-batch dimension")
    return problems

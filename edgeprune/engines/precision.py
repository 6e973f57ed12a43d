"""Reduced precision in the graph: fp16 ONNX from an exported fp32 artifact, with the fragile parts kept in fp32.

TensorRT 11 builds strongly typed networks (precision comes from the graph, not builder flags), and
an fp16 graph also serves ONNX Runtime's CUDA provider. The conversion is ONNX Runtime's maintained
fp16 converter (``onnxruntime.transformers.float16``) with a block list:

* LayerNormalization, Softmax and the reductions and powers around normalisation stay fp32: their
  sums over hundreds of channels or tokens overflow or lose the small terms in fp16;
* the **decisions** of the token reducers stay fp32: every TopK, ArgMax/ArgMin and float comparison,
  and every node whose outputs feed only such decisions (similarity matrices, their maxima,
  attention scores, redundancy signals, thresholds). In fp16 near-ties flip, and a flipped choice
  changes which tokens survive or where they merge, not just a digit.

Graph inputs and outputs stay fp32, so a runner feeds and reads the same arrays as before.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np
import onnx

from edgeprune.errors import EdgepruneError

PRECISIONS = ("fp32", "fp16")
FP32_OPS = ("LayerNormalization", "Softmax", "TopK", "CumSum", "ReduceMean", "ReduceSum", "Pow", "Sqrt")


DECISION_OPS = ("TopK", "ArgMax", "ArgMin", "Greater", "Less", "GreaterOrEqual", "LessOrEqual")


def score_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that only serve token decisions: the decision ops and every node whose
    outputs are consumed by such nodes alone (their exclusive backward cone)."""
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    score: set[str] = set()
    # ONNX lists nodes in topological order, so walking it backwards sees every consumer first.
    for node in reversed(graph.node):
        outs = [o for o in node.output if o]
        users = [c for o in outs for c in consumers.get(o, [])]
        if node.op_type in DECISION_OPS or (users and not any(o in graph_outputs for o in outs)
                                             and all(u.name in score for u in users)):
            score.add(node.name)
    return score


def convert_precision(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """A copy of ``model`` in ``precision`` (fp32 returns it unchanged); see the module doc."""
    if precision not in PRECISIONS:
        raise EdgepruneError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
                             + (" (bf16 graphs need TensorRT >= 10 to run; not produced yet)" if precision == "bf16" else ""))
    if precision == "fp32":
        return model
    from onnxruntime.transformers import float16

    unnamed = [n for n in model.graph.node if not n.name]
    if unnamed:
        raise EdgepruneError(f"{len(unnamed)} nodes have no name; re-export with edgeprune (it names every node)")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    work.graph.ClearField("value_info")  # stale fp32 annotations would contradict the converted types
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "truncated to 1e-07": tiny constants in fp16, expected
        converted = float16.convert_float_to_float16(work, keep_io_types=True, op_block_list=list(FP32_OPS),
                                                     node_block_list=sorted(score_nodes(work)))
    converted.producer_name = "edgeprune"
    return converted


def with_choice_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy whose graph also outputs every token choice: each TopK's indices, or where a Slice
    cuts the ranked list into groups (the first r merged, the rest kept), each group."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in work.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names = []
    for node in work.graph.node:
        if node.op_type != "TopK" or len(node.output) < 2 or not node.output[1]:
            continue
        slices = [c.output[0] for c in consumers.get(node.output[1], []) if c.op_type == "Slice"]
        names.extend(slices or [node.output[1]])
    existing = {o.name for o in work.graph.output}
    for name in names:
        if name not in existing:
            work.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None))
    return work, names


def choice_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of chosen indices two runs agree on, as sets per row: a group of tokens (kept, or
    merged) is the same choice whatever order the ranking listed it in."""
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    same = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a2, b2))
    return same / a2.size if a2.size else 1.0


def compare_precision(fp32: onnx.ModelProto, low: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                      threads: Optional[int] = None) -> dict[str, Any]:
    """Run both graphs in ONNX Runtime on ``feeds``: worst relative error per output and the share of
    identical token choices over all TopK nodes (both graphs name their TopK outputs alike)."""
    import onnxruntime as ort

    from edgeprune.exporters.onnx_export import relative_error

    ref_model, names = with_choice_outputs(fp32)
    low_model, _ = with_choice_outputs(low)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    sessions = [ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for m in (ref_model, low_model)]
    outputs = [o.name for o in fp32.graph.output]
    errors: dict[str, float] = {}
    agree, total = 0.0, 0
    for feed in feeds:
        ref, got = (dict(zip([o.name for o in s.get_outputs()], s.run(None, feed))) for s in sessions)
        for name in outputs:
            errors[name] = max(errors.get(name, 0.0), relative_error(got[name].astype(np.float32), ref[name]))
        for name in names:
            size = ref[name].size
            agree += choice_agreement(ref[name], got[name]) * size
            total += size
    return {"relative_error": errors, "max_relative_error": max(errors.values()) if errors else 0.0,
            "choice_agreement": agree / total if total else 1.0, "choice_tensors": len(names), "inputs": len(feeds)}


__all__ = ["DECISION_OPS", "FP32_OPS", "PRECISIONS", "choice_agreement", "compare_precision", "convert_precision",
           "score_nodes", "with_choice_outputs"]

"""Reduced precision in the graph: fp16 ONNX from an exported fp32 artifact, with the fragile parts kept in fp32.

TensorRT 11 builds strongly typed networks (precision comes from the graph, not builder flags), and
an fp16 graph also serves ONNX Runtime's CUDA provider. The conversion is ONNX Runtime's maintained
fp16 converter (``onnxruntime.transformers.float16``) with a block list (:func:`fp32_nodes`), which is
standard mixed precision: the matmuls (qkv, attention, proj, fc1, fc2) run in fp16, the sums and the
state they feed stay fp32.

* **fp32 ops**: LayerNormalization, Softmax and the reductions and powers around normalisation: their
  sums over hundreds of channels or tokens overflow or lose the small terms in fp16.
* **decisions**: every TopK, ArgMax/ArgMin and float comparison, and every node whose outputs feed
  only such decisions (similarity matrices, their maxima, attention scores, redundancy signals,
  thresholds). In fp16 near-ties flip, and a flipped choice changes which tokens survive or where
  they merge, not just a digit: one flipped merge moves a ViT's logits by ~1e-2 relative, ten
  times the rounding error of the rest of the fp16 graph.
* **decision inputs**: what a decision reads, computed from the nearest LayerNormalization output or
  residual tensor (:func:`decision_input_nodes`): ToMe's keys and EViT's CLS attention come out of
  the reduction block's qkv projection, which therefore runs in fp32 at the (few) reduction blocks
  (about 7% of the MatMul FLOPs of a ViT-S/B with three reduction points), instead of ranking keys
  that were rounded to fp16 just before.
* **residual stream** (:func:`residual_nodes`): the Adds that add a branch to the residual and the
  token-merge ops between two LayerNormalization inputs (weighted averages of merged tokens, the
  gathers of kept tokens, EViT's fused token). Branch outputs are cast up once, the residual is
  never rounded, and GSP, which ranks the residual itself, reads it unrounded.

The converter casts a blocked node's output to fp16 and back to fp32 before the next blocked node
reads it, so a chain of "fp32" nodes still rounded every intermediate (the decision cone included):
that was the main source of flipped choices. :func:`convert_precision` removes those round trips.

Left in fp16 by design: token sizes (integers, exact in fp16 up to 2048 patches per token) and the
proportional-attention bias log(size) added to fp16 logits (measured: no systematic effect). What
remains is fp16 weight rounding upstream of a decision: a ranking whose margin is below it can
still flip. On random-weight ViT-S/B that happens on one random input in ten to twenty for ToMe and
GSP, the same rate as an fp32 graph whose weights alone are rounded to fp16, and one flip moves the
logits by ~1e-2 relative (see tests/backends/test_fp16_check.py).

Graph inputs and outputs stay fp32, so a runner feeds and reads the same arrays as before.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np
import onnx

from edgeprune.core.errors import EdgepruneError
from edgeprune.backends.graph import topologically_sorted

PRECISIONS = ("fp32", "fp16")
FP32_OPS = ("LayerNormalization", "Softmax", "TopK", "CumSum", "ReduceMean", "ReduceSum", "Pow", "Sqrt")
DECISION_OPS = ("TopK", "ArgMax", "ArgMin", "Greater", "Less", "GreaterOrEqual", "LessOrEqual")
NORM_OP = "LayerNormalization"


def _links(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """Producer of every tensor, and the consumers of every tensor."""
    producer: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.output:
            producer[name] = node
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producer, consumers


def score_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that only serve token decisions: the decision ops and every node whose
    outputs are consumed by such nodes alone (their exclusive backward cone)."""
    graph = model.graph
    _, consumers = _links(graph)
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


def residual_nodes(model: onnx.ModelProto) -> set[str]:
    """The residual stream: nodes on a path from one LayerNormalization input to another that does
    not pass through a LayerNormalization (the residual Adds, and the token-merge ops a reduction
    point puts between two blocks' norms), plus the nodes producing the norms' inputs."""
    graph = model.graph
    producer, consumers = _links(graph)
    stream = {n.input[0] for n in graph.node if n.op_type == NORM_OP}
    ahead: set[str] = set()  # reachable from the stream without crossing a norm
    todo = [c for t in stream for c in consumers.get(t, [])]
    while todo:
        node = todo.pop()
        if node.name in ahead or node.op_type == NORM_OP:
            continue
        ahead.add(node.name)
        todo.extend(c for o in node.output for c in consumers.get(o, []))
    behind: set[str] = set()  # reaches the stream without crossing a norm
    todo = [producer[t] for t in stream if t in producer]
    while todo:
        node = todo.pop()
        if node.name in behind or node.op_type == NORM_OP:
            continue
        behind.add(node.name)
        todo.extend(producer[i] for i in node.input if i in producer)
    makers = {producer[t].name for t in stream if t in producer and producer[t].op_type != NORM_OP}
    return (ahead & behind) | makers


def decision_input_nodes(model: onnx.ModelProto, residual: Optional[set[str]] = None) -> set[str]:
    """Every node a decision depends on, back to the nearest LayerNormalization or residual-stream
    node (both excluded; ``residual``: :func:`residual_nodes`, when already known): the metric a
    reducer ranks, computed from fp32 state."""
    graph = model.graph
    producer, _ = _links(graph)
    stop = residual if residual is not None else residual_nodes(model)
    found: set[str] = set()
    todo = [n for n in graph.node if n.op_type in DECISION_OPS]
    while todo:
        node = todo.pop()
        if node.name in found or node.name in stop or node.op_type == NORM_OP:
            continue
        found.add(node.name)
        todo.extend(producer[i] for i in node.input if i in producer)
    return found


def decision_nodes(model: onnx.ModelProto) -> set[str]:
    """The token-decision subgraph: the decisions and what only serves them (:func:`score_nodes`) plus
    what they read back to the nearest LayerNorm or residual (:func:`decision_input_nodes`). The
    nodes every reduced-precision path (fp16 graphs, int8 quantization) keeps in fp32."""
    return score_nodes(model) | decision_input_nodes(model)


def fp32_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Every node :func:`convert_precision` keeps in fp32, with the reason (the first that applies):
    ``"fp32 op"``, ``"decision"``, ``"decision input"`` or ``"residual"``; see the module doc."""
    residual = residual_nodes(model)
    groups = [("decision", score_nodes(model)), ("decision input", decision_input_nodes(model, residual)),
              ("residual", residual)]
    kept: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in FP32_OPS:
            kept[node.name] = "fp32 op"
            continue
        for reason, names in groups:
            if node.name in names:
                kept[node.name] = reason
                break
    return kept


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
                                                     node_block_list=sorted(fp32_nodes(work)))
    _drop_round_trips(converted)
    converted.producer_name = "edgeprune"
    return topologically_sorted(converted)  # the converter appends its casts at the end


def _drop_round_trips(model: onnx.ModelProto) -> None:
    """Let every Cast-to-fp32 of a Cast-to-fp16 of an fp32 tensor read that tensor itself, then drop
    the casts nothing reads any more (in place)."""
    graph = model.graph
    producer, _ = _links(graph)
    types = _value_types(onnx.shape_inference.infer_shapes(model))

    def cast_to(node: onnx.NodeProto) -> Optional[int]:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    source: dict[str, str] = {}
    for node in graph.node:
        first = producer.get(node.input[0]) if cast_to(node) == onnx.TensorProto.FLOAT else None
        if (first is not None and cast_to(first) == onnx.TensorProto.FLOAT16
                and types.get(first.input[0]) == onnx.TensorProto.FLOAT):
            source[node.output[0]] = first.input[0]
    if not source:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in source:
                node.input[i] = source[name]
    for node in graph.node:  # a graph output keeps its name: its cast reads the fp32 tensor (an identity)
        if node.output[0] in source:
            node.input[0] = source[node.output[0]]
    live: set[str] = set()
    todo = [producer[o.name] for o in graph.output if o.name in producer]
    while todo:
        node = todo.pop()
        if node.name not in live:
            live.add(node.name)
            todo.extend(producer[i] for i in node.input if i in producer)
    kept = [n for n in graph.node if n.name in live]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)


def with_choice_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy whose graph also outputs every token choice: each TopK's indices, or where a Slice
    cuts the ranked list into groups (the first r merged, the rest kept), each group; and each
    ArgMax/ArgMin (the token a merged token joins)."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    _, consumers = _links(work.graph)
    names = []
    for node in work.graph.node:
        if node.op_type in ("ArgMax", "ArgMin"):  # where each merged token goes (ToMe's destination)
            names.append(node.output[0])
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


def pointwise_choices(model: onnx.ModelProto) -> set[str]:
    """The choice tensors with one destination per token (ArgMax/ArgMin), compared token by token."""
    return {n.output[0] for n in model.graph.node if n.op_type in ("ArgMax", "ArgMin")}


def agreeing_choices(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], names: list[str],
                     pointwise: set[str]) -> tuple[float, int]:
    """(choices two runs agree on, choices made) over the choice tensors ``names`` of one input:
    destinations token by token, ranked groups as sets (see :func:`choice_agreement`)."""
    agree, total = 0.0, 0
    for name in names:
        size = ref[name].size
        if name in pointwise:
            agree += float(np.sum(ref[name] == got[name]))
        else:
            agree += choice_agreement(ref[name], got[name]) * size
        total += size
    return agree, total


def compare_precision(fp32: onnx.ModelProto, low: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                      threads: Optional[int] = None) -> dict[str, Any]:
    """Run both graphs in ONNX Runtime on ``feeds``: worst relative error per output and the share of
    identical token choices over all TopK, ArgMax and ArgMin nodes (both graphs name them alike)."""
    import onnxruntime as ort

    from edgeprune.backends.feeds import relative_error

    ref_model, names = with_choice_outputs(fp32)
    pointwise = pointwise_choices(fp32)
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
        same, made = agreeing_choices(ref, got, names, pointwise)
        agree, total = agree + same, total + made
    return {"relative_error": errors, "max_relative_error": max(errors.values()) if errors else 0.0,
            "choice_agreement": agree / total if total else 1.0, "choice_tensors": len(names), "inputs": len(feeds)}


def fp16_matmul_share(fp32: onnx.ModelProto, low: onnx.ModelProto) -> dict[str, float]:
    """Share of the MatMul/Gemm work (FLOPs from the fp32 graph's static shapes, and node count)
    that reads fp16 operands in ``low``."""
    shapes = _value_shapes(onnx.shape_inference.infer_shapes(fp32))
    types = _value_types(onnx.shape_inference.infer_shapes(low))
    low_nodes = {n.name: n for n in low.graph.node}
    total = half = 0.0
    count = half_count = 0
    for node in fp32.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        out, a = shapes.get(node.output[0]), shapes.get(node.input[0])
        flops = 2.0 * float(np.prod(out)) * a[-1] if out and a else 0.0
        twin = low_nodes.get(node.name)
        is_half = twin is not None and types.get(twin.input[0]) == onnx.TensorProto.FLOAT16
        total, half = total + flops, half + (flops if is_half else 0.0)
        count, half_count = count + 1, half_count + is_half
    return {"flops": half / total if total else 0.0, "nodes": half_count / count if count else 0.0}


def _value_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    g = model.graph
    out = {t.name: list(t.dims) for t in g.initializer}
    for v in list(g.value_info) + list(g.input) + list(g.output):
        dims = v.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[v.name] = [d.dim_value for d in dims]
    return out


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    out = {t.name: t.data_type for t in g.initializer}
    out.update({v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)})
    return out


__all__ = ["DECISION_OPS", "FP32_OPS", "PRECISIONS", "choice_agreement", "compare_precision", "convert_precision",
           "decision_input_nodes", "decision_nodes", "fp16_matmul_share", "fp32_nodes", "residual_nodes", "score_nodes", "with_choice_outputs"]

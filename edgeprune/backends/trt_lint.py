"""TensorRT-compatibility lint: static checks of an ONNX graph that need neither TensorRT nor a GPU.

Each rule has an id, the TensorRT versions it applies to, a severity and a fix. ``lint_model``
returns :class:`Finding` s, one per offending node or tensor; ``errors`` stop a TensorRT build
(or make it silently wrong), ``warnings`` cost speed or precision. The facts come from TensorRT's
ONNX parser support matrix and layer documentation (TopK: k <= 3840 on one of the last four axes;
ScatterND reductions ignored by the parser; ScatterElements reductions only through a plugin from
10.0; LayerNormalization from 8.6 / opset 17; INT64 cast down to INT32 before 10.0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import onnx
from onnx import TensorProto

from edgeprune.backends.graph import constant_arrays

TOPK_MAX_K = 3840
DEFAULT_TRT = "10.0"
INT32_MAX = 2**31 - 1

# Ops TensorRT's ONNX parser does not import (its support matrix, 8.6-10.x); a custom domain is
# checked separately.
UNSUPPORTED_OPS = {
    "Bernoulli", "BitShift", "BlackmanWindow", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "HammingWindow", "HannWindow", "Hardmax", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
    "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement",
    "OptionalHasElement", "QLinearConv", "QLinearMatMul", "STFT", "SequenceAt", "SequenceConstruct",
    "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss",
    "SplitToSequence", "StringNormalizer", "TfIdfVectorizer", "Unique",
}
# Outputs whose shape depends on the values, not only on the input shapes.
DATA_DEPENDENT_OPS = {"NonZero", "Unique", "Compress", "NonMaxSuppression"}
RESIZE_MODES = {"nearest", "linear", "cubic"}
RESIZE_TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str  # "error" or "warning"
    summary: str
    fix: str
    min_trt: str = "8.6"  # first TensorRT version the rule applies to
    max_trt: Optional[str] = None  # last one, None: still applies

    def applies(self, trt: str) -> bool:
        v = _version(trt)
        return _version(self.min_trt) <= v and (self.max_trt is None or v <= _version(self.max_trt))


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("unsupported-op", "error", "op not imported by TensorRT's ONNX parser",
         "re-export without it (edgeprune's reducers never emit one) or provide a TensorRT plugin"),
    Rule("custom-domain", "error", "op from a non-standard domain (e.g. com.microsoft, an ONNX Runtime fusion)",
         "export the plain ONNX graph, not one saved by ONNX Runtime after optimisation"),
    Rule("scatter-reduction", "error", "ScatterND with a reduction: the parser ignores the reduction",
         "gather instead of scatter (edgeprune's merges are a row Gather plus a matmul)"),
    Rule("scatter-elements-reduction", "error", "ScatterElements with a reduction is not supported before 10.0",
         "gather instead of scatter, or build with TensorRT >= 10", max_trt="9.99"),
    Rule("scatter-elements-plugin", "warning", "ScatterElements with a reduction runs as a plugin, outside fusions",
         "gather instead of scatter", min_trt="10.0"),
    Rule("scatter", "warning", "scatter with possibly duplicate indices is undefined on TensorRT",
         "make the indices provably distinct, or gather instead"),
    Rule("topk-k", "error", f"TopK needs a constant K <= {TOPK_MAX_K}",
         f"reduce in stages (several points) so that no ranking exceeds {TOPK_MAX_K} tokens; K must be an initializer"),
    Rule("topk-axis", "error", "TopK must reduce one of the last four axes", "transpose so the ranked axis is last"),
    Rule("topk-unsorted", "warning", "TopK with sorted=0: TensorRT returns sorted values, ONNX Runtime may not",
         "export with sorted=1 so every backend agrees on the order"),
    Rule("dynamic-shape", "error", "a graph input or output has a symbolic non-batch dimension",
         "export with static token counts (edgeprune plans are static); only the batch axis may be symbolic"),
    Rule("dynamic-batch", "warning", "symbolic batch axis: the build needs an optimization profile",
         "export with a fixed --batch (edgeprune build makes static-shape engines), or give the builder a batch profile"),
    Rule("data-dependent-shape", "error", "an output's shape depends on the input values",
         "replace the op with a static-shape equivalent (TopK with a fixed K instead of NonZero)"),
    Rule("int64-io", "warning", "INT64 graph input or output: TensorRT before 10 casts it to INT32",
         "feed INT32 (indices below 2^31 are exact)", max_trt="9.99"),
    Rule("int64-range", "error", "INT64 constant outside the INT32 range: TensorRT clamps it",
         "keep constants within INT32", max_trt="9.99"),
    Rule("layernorm-opset", "warning", "LayerNorm as primitive ops (opset < 17): slower, and fp16 builds lose accuracy",
         "export with --opset 17 or later so LayerNorm is one LayerNormalization node"),
    Rule("opset-range", "error", "opset outside what the parser imports (9..20 for TensorRT 10)",
         "export with an opset from 17 to 20"),
    Rule("resize-mode", "error", "Resize mode or coordinate transformation TensorRT does not implement",
         "use linear or nearest with half_pixel / pytorch_half_pixel / align_corners / asymmetric"),
    Rule("einsum-ellipsis", "error", "Einsum with an ellipsis or a diagonal", "write it as MatMul/Transpose"),
)}


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    where: str  # node name (op type) or tensor name
    message: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for p in str(text).split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts + [0] * (3 - len(parts)))


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _shapes(model: onnx.ModelProto, needed: set[str]) -> dict[str, list[Any]]:
    """Tensor name -> dims (int, str for a symbol, None when unknown): the graph's own annotations
    (edgeprune's exporter writes them), ONNX shape inference only when a ``needed`` one is missing
    (it copies the whole model, weights included: seconds for a ViT-B)."""
    out = _annotated(model)
    if needed <= set(out):
        return out
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort: a graph it cannot follow is still linted
        return out
    return _annotated(inferred)


def _annotated(model: onnx.ModelProto) -> dict[str, list[Any]]:
    out = {}
    g = model.graph
    for v in list(g.input) + list(g.value_info) + list(g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                           for d in v.type.tensor_type.shape.dim]
    return out


def _layernorm_patterns(model: onnx.ModelProto) -> list[str]:
    """ReduceMean -> Sub -> (Pow|Mul) -> ReduceMean -> Add -> Sqrt: LayerNorm spelt in primitives."""
    producers = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "Sqrt":
            continue
        chain, cur = [], node
        for want in ("Add", "ReduceMean", ("Pow", "Mul"), "Sub"):
            cur = next((producers[i] for i in cur.input if i in producers and producers[i].op_type in
                        ((want,) if isinstance(want, str) else want)), None)
            if cur is None:
                break
            chain.append(cur)
        if len(chain) == 4:
            found.append(node.name or "Sqrt")
    return found


def lint_model(model: onnx.ModelProto, trt: str = DEFAULT_TRT) -> list[Finding]:
    """Every finding of the rules that apply to TensorRT ``trt`` (e.g. "8.6", "10.0", "11.0")."""
    findings: list[Finding] = []

    def flag(rule_id: str, where: str, detail: str) -> None:
        rule = RULES[rule_id]
        if rule.applies(trt):
            findings.append(Finding(rule.id, rule.severity, where, f"{rule.summary}: {detail}" if detail else rule.summary, rule.fix))

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not 9 <= opset <= 20:
        flag("opset-range", "model", f"opset {opset}")
    constants = constant_arrays(model, integers=True)  # TopK's K and the INT64 range rule need no weights
    shapes = _shapes(model, {n.input[0] for n in model.graph.node if n.op_type == "TopK"})
    for node in model.graph.node:
        where = f"{node.name or '?'} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            flag("custom-domain", where, f"domain {node.domain}")
            continue
        op = node.op_type
        if op in UNSUPPORTED_OPS:
            flag("unsupported-op", where, op)
        if op in DATA_DEPENDENT_OPS:
            flag("data-dependent-shape", where, f"{op} output")
        if op in ("ScatterND", "ScatterElements", "Scatter"):
            reduction = _attr(node, "reduction", b"none")
            reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
            if reduction != "none":
                if op == "ScatterND":
                    flag("scatter-reduction", where, f"reduction={reduction}")
                else:
                    flag("scatter-elements-reduction", where, f"reduction={reduction}")
                    flag("scatter-elements-plugin", where, f"reduction={reduction}")
            else:
                flag("scatter", where, op)
        if op == "TopK":
            k = constants.get(node.input[1]) if len(node.input) > 1 else None
            if k is None:
                flag("topk-k", where, "K is computed at run time")
            elif int(k.ravel()[0]) > TOPK_MAX_K:
                flag("topk-k", where, f"K={int(k.ravel()[0])}")
            if not _attr(node, "sorted", 1):
                flag("topk-unsorted", where, "")
            rank = len(shapes.get(node.input[0]) or [])
            axis = _attr(node, "axis", -1)
            if rank and (axis if axis >= 0 else axis + rank) < rank - 4:
                flag("topk-axis", where, f"axis {axis} of rank {rank}")
        if op == "Resize":
            mode = _attr(node, "mode", b"nearest")
            transform = _attr(node, "coordinate_transformation_mode", b"half_pixel")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            transform = transform.decode() if isinstance(transform, bytes) else transform
            if mode not in RESIZE_MODES or transform not in RESIZE_TRANSFORMS:
                flag("resize-mode", where, f"mode={mode}, coordinate_transformation_mode={transform}")
        if op == "Einsum":
            equation = _attr(node, "equation", b"")
            equation = equation.decode() if isinstance(equation, bytes) else equation
            terms = equation.replace("->", ",").split(",")
            if "..." in equation or any(len(set(t.strip())) != len(t.strip()) for t in terms):
                flag("einsum-ellipsis", where, equation)
    symbolic_batch = []
    inputs = {v.name for v in model.graph.input}
    for value in list(model.graph.input) + list(model.graph.output):
        t = value.type.tensor_type
        dims = list(t.shape.dim)
        shown = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        kind = "input" if value.name in inputs else "output"
        if any(not d.HasField("dim_value") and not d.dim_param for d in dims) and kind == "output":
            flag("data-dependent-shape", value.name, f"output dims {shown}")
        elif any(not d.HasField("dim_value") for d in dims[1:]):
            flag("dynamic-shape", value.name, f"{kind} dims {shown}")
        elif dims and not dims[0].HasField("dim_value"):
            symbolic_batch.append(value.name)
        if t.elem_type == TensorProto.INT64:
            flag("int64-io", value.name, "")
    if symbolic_batch:
        flag("dynamic-batch", symbolic_batch[0], f"{len(symbolic_batch)} inputs/outputs")
    for name, array in constants.items():
        if array.dtype.kind == "i" and array.size and array.itemsize == 8:
            low, high = int(array.min()), int(array.max())
            if high > INT32_MAX or low < -INT32_MAX - 1:
                # INT64 max/min as "to the end" in Slice is understood by the parser, not a real value.
                if not (high == 2**63 - 1 or low == -(2**63)):
                    flag("int64-range", name, f"values {low}..{high}")
    if opset < 17:
        for where in _layernorm_patterns(model):
            flag("layernorm-opset", where, f"opset {opset}")
    return findings


def summarize(findings: list[Finding]) -> dict[str, Any]:
    return {"errors": sum(f.severity == "error" for f in findings),
            "warnings": sum(f.severity == "warning" for f in findings),
            "rules": sorted({f.rule for f in findings})}


__all__ = ["DEFAULT_TRT", "Finding", "RULES", "Rule", "TOPK_MAX_K", "lint_model", "summarize"]

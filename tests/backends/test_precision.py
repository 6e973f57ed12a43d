"""fp16 graphs: fp32 I/O; the fragile ops, every token decision, what it reads and the residual stream
kept fp32 (no fp16 round trips between them); close to the fp32 graph, same token choices."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgeprune.backends.precision import (DECISION_OPS, FP32_OPS, choice_agreement, compare_precision,
                                         convert_precision, decision_input_nodes, fp16_matmul_share, fp32_nodes,
                                         residual_nodes, score_nodes, with_choice_outputs)
from edgeprune.core.errors import EdgepruneError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import timm
    import torch

    from edgeprune.exporting.onnx_export import export
    from edgeprune import build_plan

    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=4, embed_dim=64,
                            num_heads=2, reg_tokens=1).eval()
    root = tmp_path_factory.mktemp("fp16")
    plans = {"none": build_plan(net, "none"), "tome": build_plan(net, "tome", flops=0.6),
             "evit": build_plan(net, "evit", keep=0.5), "gsp": build_plan(net, "gsp", flops=0.6)}
    return {m: onnx.load(str(export(net, p, root / m).onnx_path)) for m, p in plans.items()}


def feeds(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [{"pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(n)]


def tensor_types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}


@pytest.mark.parametrize("method", ["none", "tome", "evit", "gsp"])
def test_fp16_graph_structure(exported, method):
    fp32 = exported[method]
    low = convert_precision(fp32, "fp16")
    assert [i.type.tensor_type.elem_type for i in low.graph.input] == [onnx.TensorProto.FLOAT]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in low.graph.output)
    types = tensor_types(low)
    assert sum(t == onnx.TensorProto.FLOAT16 for t in types.values()) > 10  # most of the graph is fp16
    kept = set(fp32_nodes(fp32))
    assert score_nodes(fp32) <= kept and residual_nodes(fp32) <= kept and decision_input_nodes(fp32) <= kept
    for node in low.graph.node:
        if node.op_type in FP32_OPS + DECISION_OPS or node.name in kept:
            for name in node.input:
                assert types.get(name) != onnx.TensorProto.FLOAT16, f"{node.op_type} {node.name} reads fp16 {name}"
    if method != "none":
        assert any(n.op_type == "TopK" for n in fp32.graph.node) and score_nodes(fp32)


@pytest.mark.parametrize("method", ["none", "tome", "evit", "gsp"])
def test_fp32_kept_nodes(exported, method):
    """The residual stream and the decision inputs are fp32, the matmuls elsewhere fp16, and no
    fp32 tensor is rounded to fp16 on its way from one fp32 node to another."""
    fp32 = exported[method]
    reasons = fp32_nodes(fp32)
    assert set(reasons.values()) <= {"fp32 op", "decision", "decision input", "residual"}
    nodes = fp32.graph.node
    norms = [n for n in nodes if n.op_type == "LayerNormalization"]
    produced = {o: n for n in nodes for o in n.output}
    # The residual Adds (x + branch(norm(x)), and the embedding's Add) produce the norms' inputs.
    adds = [produced[n.input[0]] for n in norms if produced[n.input[0]].op_type == "Add"]
    assert len(adds) >= len(norms) // 2 and all(reasons.get(a.name) == "residual" for a in adds)
    # Matmuls with a weight: fp16, except the qkv projections whose keys or queries a decision ranks.
    weights = {t.name for t in fp32.graph.initializer}
    projections = [n for n in nodes if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
    kept_proj = [n for n in projections if n.name in reasons]
    assert all(reasons[n.name] == "decision input" for n in kept_proj)
    shapes = {t.name: list(t.dims) for t in fp32.graph.initializer}
    assert all(shapes[n.input[1]] == [64, 3 * 64] for n in kept_proj)  # only qkv; proj, fc1, fc2 stay fp16
    if method in ("none", "gsp"):  # GSP ranks the residual itself
        assert not kept_proj
    else:  # one qkv per reduction block
        assert 1 <= len(kept_proj) <= 3
    low = convert_precision(fp32, "fp16")
    share = fp16_matmul_share(fp32, low)
    assert share["flops"] >= (0.99 if not kept_proj else 0.6), share
    # No round trip: a Cast to fp32 never reads a Cast to fp16 of an fp32 tensor.
    types = tensor_types(low)
    low_produced = {o: n for n in low.graph.node for o in n.output}
    for node in low.graph.node:
        if node.op_type == "Cast" and node.attribute[0].i == onnx.TensorProto.FLOAT:
            first = low_produced.get(node.input[0])
            assert not (first is not None and first.op_type == "Cast" and first.attribute[0].i == onnx.TensorProto.FLOAT16
                        and types.get(first.input[0]) == onnx.TensorProto.FLOAT), node.name
    # Every norm reads the unrounded residual: its input is not a cast up from fp16.
    for norm in (n for n in low.graph.node if n.op_type == "LayerNormalization"):
        src = low_produced.get(norm.input[0])
        assert src is None or src.op_type != "Cast", norm.name


def test_fp16_close_to_fp32_without_decisions(exported):
    report = compare_precision(exported["none"], convert_precision(exported["none"], "fp16"), feeds())
    assert report["max_relative_error"] <= 1e-2 and report["choice_tensors"] == 0


@pytest.mark.parametrize("method", ["tome", "evit", "gsp"])
def test_fp16_reduced_graphs_match_fp32(exported, method):
    """The acceptance bar (rel error <= 1e-2, >= 99% identical choices). On this model it holds with a
    10x error margin and no flipped choice over 80 inputs (10 seeds), and on a second random init too;
    a decision whose margin is below fp16 weight rounding can still flip on other weights."""
    report = compare_precision(exported[method], convert_precision(exported[method], "fp16"), feeds(8))
    assert report["choice_tensors"] > 0
    assert report["max_relative_error"] <= 1e-2 and report["choice_agreement"] >= 0.99, report


def test_choice_outputs_and_agreement(exported):
    model, names = with_choice_outputs(exported["tome"])
    assert names and all(n in {o.name for o in model.graph.output} for n in names)
    assert choice_agreement(np.array([[3, 1, 2]]), np.array([[1, 2, 3]])) == 1.0  # same group, other order
    assert choice_agreement(np.array([[3, 1]]), np.array([[3, 0]])) == 0.5


def test_bad_precision(exported):
    with pytest.raises(EdgepruneError, match="--precision"):
        convert_precision(exported["none"], "int3")
    with pytest.raises(EdgepruneError, match="bf16"):
        convert_precision(exported["none"], "bf16")
    assert convert_precision(exported["none"], "fp32") is exported["none"]

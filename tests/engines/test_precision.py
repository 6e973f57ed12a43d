"""fp16 graphs: fp32 I/O, the fragile ops and every token decision kept fp32, close to the fp32 graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgeprune.engines.precision import (DECISION_OPS, FP32_OPS, choice_agreement, compare_precision,
                                         convert_precision, score_nodes, with_choice_outputs)
from edgeprune.errors import EdgepruneError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import timm
    import torch

    from edgeprune.exporters.onnx_export import export
    from edgeprune.plan import build_plan

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
    kept = score_nodes(fp32)
    for node in low.graph.node:
        if node.op_type in FP32_OPS + DECISION_OPS or node.name in kept:
            for name in node.input:
                assert types.get(name) != onnx.TensorProto.FLOAT16, f"{node.op_type} {node.name} reads fp16 {name}"
    if method != "none":
        assert any(n.op_type == "TopK" for n in fp32.graph.node) and kept


def test_fp16_close_to_fp32_without_decisions(exported):
    report = compare_precision(exported["none"], convert_precision(exported["none"], "fp16"), feeds())
    assert report["max_relative_error"] <= 1e-2 and report["choice_tensors"] == 0


@pytest.mark.parametrize("method", ["tome", "evit", "gsp"])
def test_fp16_token_choices_mostly_identical(exported, method):
    report = compare_precision(exported[method], convert_precision(exported[method], "fp16"), feeds(8))
    assert report["choice_tensors"] > 0
    assert report["choice_agreement"] >= 0.95, report


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

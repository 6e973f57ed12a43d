"""TensorRT-compatibility lint: clean on what edgeprune exports, each deliberately bad graph flagged
with the right rule, version ranges respected; and the ``edgeprune lint`` command."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeprune.backends.trt_lint import RULES, lint_model, summarize


def model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def vinfo(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def rules(findings, severity=None):
    return {f.rule for f in findings if severity is None or f.severity == severity}


def scatter(op, reduction):
    idx = numpy_helper.from_array(np.array([[0], [2]], np.int64) if op == "ScatterND" else np.array([[0, 1]], np.int64), "idx")
    upd_shape = [2, 4] if op == "ScatterND" else [1, 2]
    node = helper.make_node(op, ["x", "idx", "u"], ["y"], name="s", reduction=reduction)
    return model([node], [vinfo("x", [4, 4]), vinfo("u", upd_shape)], [vinfo("y", [4, 4])], [idx])


def test_scatter_reductions():
    assert "scatter-reduction" in rules(lint_model(scatter("ScatterND", "add")), "error")
    assert "scatter-elements-reduction" in rules(lint_model(scatter("ScatterElements", "add"), "8.6"), "error")
    on10 = lint_model(scatter("ScatterElements", "add"), "10.0")
    assert "scatter-elements-plugin" in rules(on10, "warning") and not rules(on10, "error")
    assert rules(lint_model(scatter("ScatterND", "none"))) == {"scatter"}


def test_topk_limits():
    k = numpy_helper.from_array(np.array([4096], np.int64), "k")
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="t", axis=-1)
    bad = model([node], [vinfo("x", [1, 5000])], [vinfo("v", [1, 4096]), vinfo("i", [1, 4096], TensorProto.INT64)], [k])
    findings = lint_model(bad)
    assert "topk-k" in rules(findings, "error")
    assert any("K=4096" in f.message for f in findings)
    runtime_k = model([helper.make_node("TopK", ["x", "kk"], ["v", "i"], name="t")],
                      [vinfo("x", [1, 50]), vinfo("kk", [1], TensorProto.INT64)],
                      [vinfo("v", [1, 5]), vinfo("i", [1, 5], TensorProto.INT64)])
    assert any(f.rule == "topk-k" and "run time" in f.message for f in lint_model(runtime_k))
    k5 = numpy_helper.from_array(np.array([5], np.int64), "k")
    unsorted = model([helper.make_node("TopK", ["x", "k"], ["v", "i"], name="t", sorted=0)], [vinfo("x", [1, 50])],
                     [vinfo("v", [1, 5]), vinfo("i", [1, 5], TensorProto.INT64)], [k5])
    assert rules(lint_model(unsorted)) == {"topk-unsorted"}
    deep = model([helper.make_node("TopK", ["x", "k"], ["v", "i"], name="t", axis=0)], [vinfo("x", [50, 1, 1, 1, 1])],
                 [vinfo("v", [5, 1, 1, 1, 1]), vinfo("i", [5, 1, 1, 1, 1], TensorProto.INT64)], [k5])
    assert "topk-axis" in rules(lint_model(deep), "error")


def test_dynamic_and_data_dependent_shapes():
    nonzero = model([helper.make_node("NonZero", ["x"], ["y"], name="nz")], [vinfo("x", [4, 4])],
                    [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    assert "data-dependent-shape" in rules(lint_model(nonzero), "error")
    dyn = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vinfo("x", ["batch", "tokens", 8])],
                [vinfo("y", ["batch", "tokens", 8])])
    assert "dynamic-shape" in rules(lint_model(dyn), "error")
    batch_only = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vinfo("x", ["batch", 16, 8])],
                       [vinfo("y", ["batch", 16, 8])])
    assert rules(lint_model(batch_only)) == {"dynamic-batch"}


def layernorm_by_hand(opset: int):
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    two, eps = numpy_helper.from_array(np.array(2.0, np.float32), "two"), numpy_helper.from_array(np.array(1e-5, np.float32), "eps")
    mean_kw = {"axes": [-1]} if opset < 18 else {}
    mean_in = (lambda x: [x]) if opset < 18 else (lambda x: [x, "axes"])
    nodes = [
        helper.make_node("ReduceMean", mean_in("x"), ["mu"], name="m1", keepdims=1, **mean_kw),
        helper.make_node("Sub", ["x", "mu"], ["d"], name="sub"),
        helper.make_node("Pow", ["d", "two"], ["d2"], name="pow"),
        helper.make_node("ReduceMean", mean_in("d2"), ["var"], name="m2", keepdims=1, **mean_kw),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="add"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
        helper.make_node("Div", ["d", "sd"], ["y"], name="div"),
    ]
    inits = [two, eps] + ([axes] if opset >= 18 else [])
    return model(nodes, [vinfo("x", [1, 16, 8])], [vinfo("y", [1, 16, 8])], inits, opset=opset)


def test_opset13_layernorm_pattern():
    assert "layernorm-opset" in rules(lint_model(layernorm_by_hand(13)), "warning")
    assert not lint_model(layernorm_by_hand(18))  # from opset 17 it would be one node; not flagged here


def test_unsupported_custom_int64_resize_einsum():
    unique = model([helper.make_node("Unique", ["x"], ["y"], name="u")], [vinfo("x", [4])], [vinfo("y", [4])])
    assert {"unsupported-op", "data-dependent-shape"} <= rules(lint_model(unique), "error")
    custom = model([helper.make_node("FusedGemm", ["x"], ["y"], name="f", domain="com.microsoft")], [vinfo("x", [4])], [vinfo("y", [4])])
    custom.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert rules(lint_model(custom)) == {"custom-domain"}
    ids = model([helper.make_node("Identity", ["x"], ["y"], name="i")], [vinfo("x", [4], TensorProto.INT64)],
                [vinfo("y", [4], TensorProto.INT64)])
    assert rules(lint_model(ids, "8.6")) == {"int64-io"} and not lint_model(ids, "10.0")
    big = numpy_helper.from_array(np.array([2**40], np.int64), "big")
    add = model([helper.make_node("Add", ["x", "big"], ["y"], name="a")], [vinfo("x", [1], TensorProto.INT64)],
                [vinfo("y", [1], TensorProto.INT64)], [big])
    assert "int64-range" in rules(lint_model(add, "8.6"), "error")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    resize = model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", mode="cubic",
                                     coordinate_transformation_mode="tf_crop_and_resize")],
                   [vinfo("x", [1, 1, 4, 4])], [vinfo("y", [1, 1, 8, 8])], [scales])
    assert "resize-mode" in rules(lint_model(resize), "error")
    einsum = model([helper.make_node("Einsum", ["x"], ["y"], name="e", equation="ii->i")], [vinfo("x", [4, 4])], [vinfo("y", [4])])
    assert "einsum-ellipsis" in rules(lint_model(einsum), "error")
    old = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vinfo("x", [4])], [vinfo("y", [4])], opset=8)
    assert "opset-range" in rules(lint_model(old), "error")


def test_every_rule_is_exercised_by_this_file():
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    assert all(f'"{rule}"' in source for rule in RULES)


@pytest.mark.parametrize("method, extra", [("none", {}), ("tome", {"flops": 0.6}), ("evit", {"keep": 0.5}),
                                            ("gsp", {"flops": 0.6})])
def test_classifier_exports_are_clean(tmp_path, method, extra):
    import timm

    from edgeprune.exporting.onnx_export import export
    from edgeprune.backends.graph import load_graph
    from edgeprune import build_plan

    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=4, embed_dim=32,
                            num_heads=2, reg_tokens=2).eval()
    artifact = export(net, build_plan(net, method, **extra), tmp_path / method)
    for trt in ("8.6", "10.0", "11.0"):
        assert summarize(lint_model(load_graph(artifact.onnx_path), trt)) == {"errors": 0, "warnings": 0, "rules": []}
    assert artifact.manifest["trt_lint"]["errors"] == 0


@pytest.mark.parametrize("method", ["tome", "cluster", "pass"])
def test_segmenter_exports_are_clean(tmp_path, method):
    from edgeprune.exporting.onnx_export import export
    from edgeprune.families.timm_seg import create_segmenter
    from edgeprune.backends.graph import load_graph
    from edgeprune import build_plan

    net = create_segmenter("vit_tiny_patch16_224", 4, head="multilevel", feature_blocks=(1, 3), img_size=32, patch_size=8,
                           depth=4, embed_dim=32, num_heads=2).eval()
    artifact = export(net, build_plan(net, method, flops=0.7), tmp_path / method, dynamic_batch=True)
    assert rules(lint_model(load_graph(artifact.onnx_path))) == {"dynamic-batch"}  # a warning, not an error


def test_lint_command(tmp_path, capsys):
    from tests.cli.test_cli import error_line, run

    onnx.save(scatter("ScatterND", "add"), str(tmp_path / "bad.onnx"))
    code, out, _ = run(["lint", tmp_path / "bad.onnx"], capsys)
    assert code == 1 and "scatter-reduction" in out
    code, out, _ = run(["lint", tmp_path / "bad.onnx", "--json"], capsys)
    assert code == 1 and '"rule": "scatter-reduction"' in out
    onnx.save(model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vinfo("x", [4])], [vinfo("y", [4])]),
              str(tmp_path / "good.onnx"))
    code, out, _ = run(["lint", tmp_path / "good.onnx"], capsys)
    assert code == 0 and "clean" in out
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    code, _, err = run(["lint", tmp_path / "junk.onnx"], capsys)
    assert code == 2 and "not a readable ONNX model" in error_line(err)
    code, _, err = run(["lint", tmp_path / "missing"], capsys)
    assert code == 2 and "not an artifact folder" in error_line(err)

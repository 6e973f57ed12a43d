import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgeprune.backends.graph import safety_problems


def model(nodes, inits=(), opset=18, out_shape=(1, 4)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_clean_graph():
    assert safety_problems(model([helper.make_node("Relu", ["x"], ["y"])])) == []


def test_scatter_reduction_is_flagged():
    idx = numpy_helper.from_array(np.zeros((1, 4), np.int64), "idx")
    node = helper.make_node("ScatterElements", ["x", "idx", "x"], ["y"], reduction="add", axis=1)
    assert any("ScatterElements" in p for p in safety_problems(model([node], [idx])))


def test_large_and_dynamic_topk_are_flagged():
    k = numpy_helper.from_array(np.array([4096], np.int64), "k")
    nodes = [helper.make_node("TopK", ["x", "k"], ["y", "i"], axis=1)]
    assert any("4096" in p for p in safety_problems(model(nodes, [k])))
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("TopK", ["x", "s"], ["y", "i"], axis=1)]
    assert any("data-dependent" in p for p in safety_problems(model(nodes)))


def test_old_opset_and_dynamic_output():
    problems = safety_problems(model([helper.make_node("Relu", ["x"], ["y"])], opset=13, out_shape=(1, "n")))
    assert any("opset 13" in p for p in problems)
    assert any("dynamic" in p for p in problems)

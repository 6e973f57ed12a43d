import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeprune import EdgepruneError
from edgeprune.backends.ort import OrtRunner, resolve_providers


def tiny_graph(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_runner_runs_and_reports_inputs(tmp_path):
    tiny_graph(tmp_path / "m.onnx")
    runner = OrtRunner(tmp_path / "m.onnx")
    with pytest.raises(RuntimeError, match="activated"):
        runner.infer({})
    with runner:
        assert runner.input_metadata() == {"x": ([2, 3], "tensor(float)")}
        x = np.random.default_rng().standard_normal((2, 3)).astype(np.float32)
        np.testing.assert_array_equal(runner.infer({"x": x})["y"], np.maximum(x, 0))
    assert not runner.active


def test_missing_provider_is_explained():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(EdgepruneError, match="onnxruntime-gpu"):
        resolve_providers(["cuda"])
    assert resolve_providers(["cpu"]) == ["CPUExecutionProvider"]


def test_corrupt_model_is_one_line(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(EdgepruneError, match="cannot load"):
        OrtRunner(tmp_path / "bad.onnx").activate()

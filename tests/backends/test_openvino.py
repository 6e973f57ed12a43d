"""The OpenVINO loader and runner on a real exported artifact: fp32 matches ONNX Runtime, bf16 runs
close, and a bad device or a missing package is one line."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgeprune.backends.feeds import random_feed, relative_error
from edgeprune.backends.ort import OrtRunner
from edgeprune.core.errors import EdgepruneError
from tests.conftest import make_tiny

openvino = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install \"edgeprune[openvino]\")")

from edgeprune.backends import openvino as ov_backend  # noqa: E402
from edgeprune.backends.openvino import CompiledFromPath, OpenVinoRunner  # noqa: E402


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A tome artifact at batch 2: token decisions differ per image, so batching must not mix them."""
    from edgeprune import build_plan
    from edgeprune.exporting.onnx_export import export

    net = make_tiny("registers")
    return export(net, build_plan(net, "tome", flops=0.6), tmp_path_factory.mktemp("ov") / "tome", batch=2)


def worst_error(artifact, runner, rounds=3):
    worst = 0.0
    with OrtRunner(artifact.onnx_path) as ref, runner:
        for _ in range(rounds):
            feed = random_feed(artifact.manifest["inputs"])  # fresh random pixels each round
            a, b = ref.infer(feed), runner.infer(feed)
            assert set(b) == set(a)
            worst = max(worst, max(relative_error(b[k], a[k]) for k in a))
    return worst


def test_fp32_matches_onnx_runtime(artifact):
    assert artifact.manifest["inputs"][0]["shape"][0] == 2
    runner = OpenVinoRunner(artifact.onnx_path, precision="fp32")
    with pytest.raises(RuntimeError, match="activated"):
        runner.infer({})
    with runner:
        name = artifact.manifest["inputs"][0]["name"]
        assert runner.input_metadata() == {name: ([2, 3, 32, 32], "tensor(float)")}
        feed = random_feed(artifact.manifest["inputs"])
        first = runner.infer(feed)
        runner.run_raw(random_feed(artifact.manifest["inputs"]))
        again = runner.infer(feed)  # one reused request: earlier results are copies, not its buffers
        for k in first:
            np.testing.assert_array_equal(first[k], again[k])
        # each image of the batch alone gives its own row (batch 2 does not mix token decisions)
        single = {name: np.repeat(feed[name][:1], 2, axis=0)}
        out = runner.infer(single)
        for k in first:
            assert relative_error(out[k][0], first[k][0]) <= 1e-5
    assert not runner.active
    assert worst_error(artifact, OpenVinoRunner(artifact.onnx_path, precision="fp32")) <= 1e-5


def test_exported_blob_loads_without_compiling(artifact, tmp_path):
    with OpenVinoRunner(artifact.onnx_path) as runner:
        blob = ov_backend.export_blob(runner.compiled)
    (tmp_path / "model.blob").write_bytes(blob)
    assert worst_error(artifact, OpenVinoRunner(tmp_path / "model.blob"), rounds=1) <= 1e-5
    (tmp_path / "bad.blob").write_bytes(b"not a compiled model" * 8)
    with pytest.raises(EdgepruneError) as info, OpenVinoRunner(tmp_path / "bad.blob"):
        pass
    assert "OpenVINO cannot load it" in str(info.value) and "\n" not in str(info.value)


def test_bf16_runs_and_is_close(artifact):
    # bf16 keeps ~3 significant digits; where the CPU has no bf16 unit OpenVINO runs f32 instead
    assert worst_error(artifact, OpenVinoRunner(artifact.onnx_path, precision="bf16"), rounds=2) <= 0.1


def test_bad_device_is_one_line(artifact):
    with pytest.raises(EdgepruneError) as info:
        OpenVinoRunner(artifact.onnx_path, device="NOPE").activate()
    message = str(info.value)
    assert "'NOPE'" in message and "CPU" in message and "\n" not in message
    with pytest.raises(EdgepruneError, match="precision must be one of"):
        CompiledFromPath(artifact.onnx_path, precision="int4")()


def test_missing_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` does when it is not installed
    monkeypatch.setattr(ov_backend, "_CORE", None)
    with pytest.raises(EdgepruneError) as info:
        ov_backend.require_openvino()
    message = str(info.value)
    assert 'pip install "edgeprune[openvino]"' in message and "openvino" in message and "\n" not in message
    with pytest.raises(EdgepruneError, match="edgeprune\\[openvino\\]"):
        ov_backend.available_devices()
    assert ov_backend.openvino_version() is None

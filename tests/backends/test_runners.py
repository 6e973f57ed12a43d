"""The runner factory on a real exported artifact: ONNX Runtime and OpenVINO give the same outputs, OpenVINO
runners take concurrent threads, and every bad provider, precision or device is one line."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from edgeprune.backends.feeds import random_feed, relative_error
from edgeprune.backends.openvino import OpenVinoRunner
from edgeprune.backends.ort import OrtRunner
from edgeprune.backends.runners import (EngineChoice, check_provider_options, cpu_has_bf16,
                                        default_engine, engine_choice, make_runner, runner_label)
from edgeprune.core.errors import EdgepruneError
from tests.conftest import make_tiny

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install \"edgeprune[openvino]\")")

from edgeprune.backends import openvino as ov_backend  # noqa: E402


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from edgeprune import build_plan
    from edgeprune.exporting.onnx_export import export

    net = make_tiny("cls")
    return export(net, build_plan(net, "tome", flops=0.6), tmp_path_factory.mktemp("runners") / "tome")


def test_each_provider_gets_its_runner_and_they_agree(artifact):
    ort = make_runner(artifact.onnx_path, "cpu", 1, spinning=False)
    ov = make_runner(artifact.onnx_path, "openvino", 1, precision="fp32")
    assert isinstance(ort, OrtRunner) and isinstance(ov, OpenVinoRunner)
    assert ort.loader.spinning is False and ov.loader.device == "CPU" and ov.loader.precision == "fp32"
    with ort, ov:
        assert runner_label(ort) == "CPUExecutionProvider"
        assert runner_label(ov).startswith("OpenVINO CPU ") and runner_label(ov).split()[-1] == "f32"
        assert ov.input_metadata() == ort.input_metadata()
        for _ in range(3):
            feed = random_feed(artifact.manifest["inputs"])
            a, b = ort.infer(feed), ov.infer(feed)
            assert set(a) == set(b)
            assert max(relative_error(b[k], a[k]) for k in a) <= 1e-5
    # an EngineChoice is taken as it is
    bf16 = make_runner(artifact.onnx_path, EngineChoice("openvino", "bf16", "CPU"), 1)
    assert bf16.loader.precision == "bf16"


def test_openvino_runner_serves_threads_at_once(artifact):
    """Each thread gets its own infer request: concurrent results equal sequential ones."""
    feeds = [random_feed(artifact.manifest["inputs"]) for _ in range(4)]
    with make_runner(artifact.onnx_path, "openvino", 1) as runner:
        expected = [runner.infer(f) for f in feeds]
        got: dict[int, list] = {}

        def work(i: int) -> None:
            got[i] = [runner.infer(feeds[(i + k) % 4]) for k in range(8)]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, results in got.items():
            for k, result in enumerate(results):
                for name, value in result.items():
                    np.testing.assert_array_equal(value, expected[(i + k) % 4][name])
        runner.run_raw(feeds[0])


@pytest.mark.parametrize("args,words", [
    (("onnx",), "--provider must be one of cpu, cuda, tensorrt, openvino, auto, got 'onnx'"),
    (("cpu", "bf16"), "--precision bf16 runs on --provider openvino"),
    (("cpu", None, "GPU"), "--device GPU is OpenVINO's device"),
    (("openvino", "int4"), "--precision must be one of fp32, bf16, fp16"),
    (("auto",), "resolved against an engine set's calibrations"),
])
def test_bad_names_are_one_line(args, words):
    with pytest.raises(EdgepruneError) as info:
        engine_choice(*args)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_an_unreported_device_and_a_missing_package_are_one_line(artifact, monkeypatch):
    with pytest.raises(EdgepruneError) as info:
        check_provider_options("openvino", None, "NPU9")
    assert "'NPU9'" in str(info.value) and "CPU" in str(info.value) and "\n" not in str(info.value)
    check_provider_options("auto", "bf16", "NPU9")  # auto: names only, the device narrows its choice later
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` does when it is not installed
    monkeypatch.setattr(ov_backend, "_CORE", None)
    for call in (lambda: check_provider_options("openvino", None, None),
                 lambda: make_runner(artifact.onnx_path, "openvino").activate(),
                 lambda: default_engine("bf16")):
        with pytest.raises(EdgepruneError) as info:
            call()
        assert 'pip install "edgeprune[openvino]"' in str(info.value) and "\n" not in str(info.value)
    engine, why = default_engine()
    assert engine == EngineChoice("cpu") and "OpenVINO is not installed" in why


def test_default_engine_rule():
    engine, why = default_engine()
    if cpu_has_bf16():
        assert engine == EngineChoice("openvino", "bf16", "CPU") and "bf16 units" in why
    else:
        assert engine == EngineChoice("cpu") and "no bf16 units" in why
    engine, why = default_engine("fp16")  # only OpenVINO runs it
    assert engine == EngineChoice("openvino", "fp16", "CPU") and "--precision fp16 only OpenVINO runs" in why
    assert EngineChoice("openvino", "bf16", "CPU").key == "openvino:CPU:bf16"
    assert EngineChoice("cuda").key == "onnxruntime:cuda" and EngineChoice("cpu").describe() == "ONNX Runtime cpu"

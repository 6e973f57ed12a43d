"""TensorRT builder and runner: settings and trtexec commands everywhere, real builds where TensorRT and a GPU are."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeprune.backends.trt import (BuilderSettings, device_info, require_tensorrt, tensorrt_version, trt_major,
                                   trtexec_command)
from edgeprune.core.errors import EdgepruneError


@pytest.mark.parametrize("kwargs, option", [
    ({"precision": "int8"}, "--precision"),
    ({"workspace_mb": 0}, "--workspace"),
    ({"workspace_mb": 1.5}, "--workspace"),
    ({"optimization_level": 6}, "--opt-level"),
    ({"optimization_level": -1}, "--opt-level"),
    ({"hardware_compatibility": "turing+"}, "--hardware-compat"),
])
def test_bad_settings_name_the_option(kwargs, option):
    with pytest.raises(EdgepruneError, match=option) as info:
        BuilderSettings(**kwargs).validate()
    assert "\n" not in str(info.value)


def test_settings_dict_is_stable_and_json():
    settings = BuilderSettings(precision="fp16", workspace_mb=512, hardware_compatibility="ampere+")
    settings.validate()
    d = settings.to_dict()
    assert list(d) == ["precision", "workspace_mb", "optimization_level", "hardware_compatibility",
                       "version_compatible", "strongly_typed"]
    assert json.loads(json.dumps(d)) == d == BuilderSettings(**d).to_dict()


def test_trtexec_strongly_typed_trt10():
    s = BuilderSettings(precision="fp16", workspace_mb=1024, optimization_level=5, hardware_compatibility="ampere+",
                        version_compatible=True)
    cmd = trtexec_command("m.onnx", "m.plan", s, "10.3.0", timing_cache="t.cache")
    assert cmd[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.plan"]
    assert {"--stronglyTyped", "--noTF32", "--memPoolSize=workspace:1024M", "--builderOptimizationLevel=5",
            "--hardwareCompatibilityLevel=ampere+", "--versionCompatible", "--timingCacheFile=t.cache"} <= set(cmd)
    assert "--fp16" not in cmd


def test_trtexec_weakly_typed_trt10_uses_precision_flags():
    cmd = trtexec_command("m.onnx", "m.plan", BuilderSettings(precision="fp16", strongly_typed=False), "10")
    assert "--fp16" in cmd and "--stronglyTyped" not in cmd
    assert not any(c.startswith("--memPoolSize") for c in cmd)  # TensorRT's default workspace
    cmd = trtexec_command("m.onnx", "m.plan", BuilderSettings(precision="bf16", strongly_typed=False), "10")
    assert "--bf16" in cmd
    cmd = trtexec_command("m.onnx", "m.plan", BuilderSettings(hardware_compatibility="same-cc"), "10.9.0")
    assert "--hardwareCompatibilityLevel=sameComputeCapability" in cmd


def test_trtexec_trt11_is_strongly_typed_only():
    cmd = trtexec_command("m.onnx", "m.plan", BuilderSettings(precision="fp16"), "11.0.0")
    assert not any(c in cmd for c in ("--stronglyTyped", "--fp16", "--bf16", "--noTF32"))
    with pytest.raises(EdgepruneError, match="TensorRT 11.0.0 removed") as info:
        trtexec_command("m.onnx", "m.plan", BuilderSettings(precision="fp16", strongly_typed=False), "11.0.0")
    assert "\n" not in str(info.value)


def test_same_cc_needs_trt_10_9():
    with pytest.raises(EdgepruneError, match="10.9"):
        trtexec_command("m.onnx", "m.plan", BuilderSettings(hardware_compatibility="same-cc"), "10.3.0")


def test_trt_major():
    assert trt_major("10.3.0.26") == 10 and trt_major("11") == 11
    with pytest.raises(EdgepruneError):
        trt_major("ten")


def test_without_tensorrt_the_error_is_one_line_with_the_fix():
    if tensorrt_version() is not None:
        pytest.skip("TensorRT is importable here")
    with pytest.raises(EdgepruneError) as info:
        require_tensorrt()
    message = str(info.value)
    assert "\n" not in message and "TensorRT" in message and "pip install tensorrt" in message


def test_device_info_never_raises():
    info = device_info()
    assert set(info) >= {"gpu", "compute_capability", "cuda", "driver"}


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


needs_trt = pytest.mark.skipif(tensorrt_version() is None,
                               reason="TensorRT is not importable here (pip install tensorrt on a machine with an NVIDIA GPU)")
needs_cuda = pytest.mark.skipif(not _cuda(), reason="torch sees no CUDA GPU here")


@pytest.fixture(scope="module")
def vit_onnx(tmp_path_factory):
    import timm
    import torch

    from edgeprune.exporting.onnx_export import export
    from edgeprune import build_plan

    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=4, embed_dim=64,
                            num_heads=2, reg_tokens=1).eval()
    return export(net, build_plan(net, "tome", flops=0.6), tmp_path_factory.mktemp("trt") / "tome").onnx_path


def _compare(engine_bytes, onnx_path, n=3):
    from edgeprune.backends.ort import OrtRunner
    from edgeprune.backends.trt import EngineFromBytes, TrtRunner
    from edgeprune.backends.feeds import relative_error

    rng = np.random.default_rng(0)
    worst = 0.0
    with OrtRunner(onnx_path) as ort_runner, TrtRunner(EngineFromBytes(engine_bytes)) as trt_runner:
        assert trt_runner.input_metadata() == ort_runner.input_metadata()
        for _ in range(n):
            feed = {"pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
            expected, actual = ort_runner.infer(feed), trt_runner.infer(feed)
            assert set(actual) == set(expected)
            worst = max(worst, *(relative_error(actual[k], expected[k]) for k in expected
                                 if np.issubdtype(expected[k].dtype, np.floating)))
        with pytest.raises(EdgepruneError, match="shape"):
            trt_runner.infer({"pixel_values": np.zeros((1, 3, 16, 16), np.float32)})
        with pytest.raises(EdgepruneError, match="dtype"):
            trt_runner.infer({"pixel_values": np.zeros((1, 3, 32, 32), np.float64)})
    return worst


@needs_cuda
@needs_trt
def test_fp32_engine_matches_onnx_runtime_and_reuses_timing_cache(vit_onnx, tmp_path):
    import onnx

    from edgeprune.backends.trt import build_serialized_engine, engine_io

    cache = tmp_path / "timing.cache"
    engine = build_serialized_engine(vit_onnx, BuilderSettings(), timing_cache=cache)
    assert cache.is_file() and cache.stat().st_size > 0
    first = cache.read_bytes()
    build_serialized_engine(vit_onnx, BuilderSettings(), timing_cache=cache)  # loads and rewrites it
    assert cache.stat().st_size >= len(first)
    model = onnx.load(str(vit_onnx), load_external_data=False)
    io = engine_io(engine)
    assert [t["name"] for t in io if t["mode"] == "input"] == [i.name for i in model.graph.input]
    assert [t["name"] for t in io if t["mode"] == "output"] == [o.name for o in model.graph.output]
    assert _compare(engine, vit_onnx) <= 1e-4


@needs_cuda
@needs_trt
def test_fp16_graph_engine_is_close(vit_onnx, tmp_path):
    import onnx

    from edgeprune.backends.precision import convert_precision
    from edgeprune.backends.trt import build_serialized_engine

    fp16_path = tmp_path / "model_fp16.onnx"
    onnx.save(convert_precision(onnx.load(str(vit_onnx)), "fp16"), str(fp16_path))
    engine = build_serialized_engine(fp16_path, BuilderSettings(precision="fp16"))
    assert _compare(engine, vit_onnx) <= 1e-2


@needs_cuda
@needs_trt
def test_corrupt_engine_is_one_line():
    from edgeprune.backends.trt import EngineFromBytes

    with pytest.raises(EdgepruneError, match="cannot deserialize") as info:
        EngineFromBytes(b"not an engine")()
    assert "\n" not in str(info.value)


def _fake_tensorrt(version="10.3.0", parse_ok=True, build_ok=True, same_cc=False):
    """A stand-in for the tensorrt module: checks the builder's own logic, not TensorRT's API."""
    import types

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    calls: dict = {"flags": set(), "cleared": set()}
    trt.calls = calls

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        def __init__(self):
            pass

    enum = types.SimpleNamespace
    trt.Logger, trt.ILogger = Logger, ILogger
    trt.NetworkDefinitionCreationFlag = enum(STRONGLY_TYPED=1)
    trt.MemoryPoolType = enum(WORKSPACE="workspace")
    names = ["TF32", "VERSION_COMPATIBLE"] + (["FP16", "BF16"] if version.startswith("10") else [])
    trt.BuilderFlag = enum(**{n: n for n in names})
    trt.HardwareCompatibilityLevel = enum(NONE=0, AMPERE_PLUS=1, **({"SAME_COMPUTE_CAPABILITY": 2} if same_cc else {}))

    class Cache:
        def __init__(self, data):
            self.data = data or b"fresh"

        def serialize(self):
            return self.data + b"+timed"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = size

        def set_flag(self, flag):
            calls["flags"].add(flag)

        def clear_flag(self, flag):
            calls["cleared"].add(flag)

        def create_timing_cache(self, data):
            return Cache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return cache.data != b"foreign"

        def get_timing_cache(self):
            return self.cache

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            self.logger = logger

        def parse_from_file(self, path):
            return parse_ok

        def get_error(self, i):
            return enum(node_name=lambda: "/blocks.0/TopK", node_operator=lambda: "TopK", desc=lambda: "k too large")

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            calls["network_flags"] = flags
            return object()

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            calls["config"] = config
            if build_ok:
                return b"PLAN"
            self.logger.log(Logger.ERROR, "out of memory\nsecond line")
            return None

    trt.Builder, trt.OnnxParser = Builder, Parser
    return trt


def test_builder_logic_with_a_fake_tensorrt(tmp_path, monkeypatch):
    import sys

    from edgeprune.backends.trt import build_serialized_engine

    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"x")
    cache = tmp_path / "c" / "timing.cache"
    trt = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    plan = build_serialized_engine(onnx_path, BuilderSettings(workspace_mb=64, optimization_level=4,
                                                              version_compatible=True), timing_cache=cache)
    assert plan == b"PLAN" and cache.read_bytes() == b"fresh+timed"
    assert trt.calls["network_flags"] == 2 and trt.calls["workspace"] == 64 << 20
    assert trt.calls["config"].builder_optimization_level == 4
    assert trt.calls["flags"] == {"VERSION_COMPATIBLE"} and trt.calls["cleared"] == {"TF32"}
    build_serialized_engine(onnx_path, BuilderSettings(), timing_cache=cache)  # reuses the saved cache
    assert cache.read_bytes() == b"fresh+timed+timed"
    cache.write_bytes(b"foreign")
    messages = []
    build_serialized_engine(onnx_path, BuilderSettings(), timing_cache=cache, log=messages.append)
    assert cache.read_bytes() == b"fresh+timed" and any("fresh one" in m for m in messages)

    trt = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    build_serialized_engine(onnx_path, BuilderSettings(precision="fp16", strongly_typed=False,
                                                       hardware_compatibility="ampere+"))
    assert trt.calls["network_flags"] == 0 and trt.calls["flags"] == {"FP16"}
    assert trt.calls["config"].hardware_compatibility_level == 1
    with pytest.raises(EdgepruneError, match="same-cc"):
        build_serialized_engine(onnx_path, BuilderSettings(hardware_compatibility="same-cc"))

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(parse_ok=False))
    with pytest.raises(EdgepruneError, match="node /blocks.0/TopK TopK: k too large"):
        build_serialized_engine(onnx_path, BuilderSettings())
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(build_ok=False))
    with pytest.raises(EdgepruneError, match="could not build an engine: out of memory$"):
        build_serialized_engine(onnx_path, BuilderSettings())
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(version="11.1.0"))
    with pytest.raises(EdgepruneError, match="removed"):
        build_serialized_engine(onnx_path, BuilderSettings(precision="bf16", strongly_typed=False))


def test_runner_without_cuda_says_so():
    from edgeprune.backends.trt import EngineFromBytes, TrtRunner

    if _cuda():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(EdgepruneError, match="CUDA GPU"):
        TrtRunner(EngineFromBytes(b"plan")).activate()

"""Engine builds for OpenVINO: a set built, cached and opened; a blob from another OpenVINO refused
or rebuilt; Runtime and calibrate on the built engines; one-line CLI refusals."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from edgeprune.backends.feeds import random_feed, relative_error
from edgeprune.backends.ort import OrtRunner
from edgeprune.backends.trt import BuilderSettings
from edgeprune.core.errors import EdgepruneError
from tests.conftest import export_tiny_set

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install \"edgeprune[openvino]\")")

from edgeprune.artifacts.engine_set import load_engine_set  # noqa: E402
from edgeprune.engines.build import build_engine, build_set, load_engine, load_engines, set_runners  # noqa: E402
from edgeprune.engines.cache import EngineCache  # noqa: E402


@pytest.fixture(scope="module")
def engine_set(tmp_path_factory):
    return export_tiny_set(tmp_path_factory.mktemp("ovset") / "SET", [1.0, 0.75], 4, [0.5] * 3, [0.25] * 3)


@pytest.fixture(scope="module")
def built(engine_set, tmp_path_factory):
    root = tmp_path_factory.mktemp("ovbuilt")
    build_set(load_engine_set(engine_set), "openvino", BuilderSettings(), root / "BUILT", cache=EngineCache(root / "cache"))
    return root


def test_set_build_opens_and_matches_onnx_runtime(engine_set, built):
    import openvino

    engines = load_engines(built / "BUILT")
    assert [e.name for e in engines] == ["b1.00", "b0.75"]
    for engine in engines:
        m = engine.manifest
        assert m["backend"] == "openvino" and m["precision"] == "fp32" and m["graph"]["precision"] == "fp32"
        assert m["engine"]["file"] == "model.blob" and m["settings"]["device"] == "CPU"
        assert m["versions"]["openvino"] == openvino.get_version() and m["device"]["openvino_device"] == "CPU"
        assert engine.stale_reason() is None
    members = load_engine_set(engine_set).members
    for member, runner in zip(members, set_runners(engines, members)):
        with OrtRunner(member.artifact.onnx_path) as ref, runner:
            feed = random_feed(member.artifact.manifest["inputs"])
            a, b = ref.infer(feed), runner.infer(feed)
            assert max(relative_error(b[k], a[k]) for k in a) <= 1e-5
    # the same build again comes from the cache
    again = build_engine(members[0].artifact, "openvino", BuilderSettings(), built / "again", cache=EngineCache(built / "cache"))
    assert again.manifest["built"]["how"] == "cache" and again.manifest["engine"]["sha256"] == engines[0].manifest["engine"]["sha256"]


def test_blob_from_another_openvino_is_refused_and_rebuilt(engine_set, built, tmp_path, monkeypatch):
    from edgeprune.backends import openvino as ov_backend

    member = load_engine_set(engine_set).members[0]
    folder = tmp_path / "e"
    build_engine(member.artifact, "openvino", BuilderSettings(), folder)
    manifest = json.loads((folder / "engine.json").read_text())
    manifest["versions"]["openvino"] = "2025.0.0-17942-old"
    (folder / "engine.json").write_text(json.dumps(manifest))
    engine = load_engine(folder)
    assert "built with OpenVINO 2025.0.0-17942-old" in engine.stale_reason()
    with pytest.raises(EdgepruneError, match="stale engine .*rebuild it with `edgeprune build`"):
        engine.runner()
    # a cache filled by this OpenVINO is not used by another one: it builds anew
    monkeypatch.setattr(ov_backend, "openvino_version", lambda: "2099.1.0-0-newer")
    rebuilt = build_engine(member.artifact, "openvino", BuilderSettings(), tmp_path / "newer", cache=EngineCache(built / "cache"))
    assert rebuilt.manifest["built"]["how"] == "built" and rebuilt.manifest["versions"]["openvino"] == "2099.1.0-0-newer"
    assert "this machine has 2099.1.0-0-newer" in load_engines(built / "BUILT")[0].stale_reason()


def test_runtime_and_calibrate_on_built_engines(engine_set, built):
    from edgeprune.measure.calibrate import calibrate_engine_set
    from edgeprune.runtime import Runtime

    calibration = calibrate_engine_set(load_engine_set(engine_set), rounds=3, warmup=1, engines=built / "BUILT")
    assert calibration["engines"]["backend"] == "openvino"
    rng = np.random.default_rng()
    frames = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # calibrated on a busy test machine
        with Runtime(engine_set, target_ms=1000.0) as plain, Runtime(engine_set, target_ms=1000.0, engines=built / "BUILT") as ov:
            assert ov.provider_name == "openvino"
            for frame in frames:
                a, b = plain.infer(frame), ov.infer(frame)
                assert a.budget == b.budget and a.labels is not None
                np.testing.assert_array_equal(b.labels, a.labels)


def run_cli(argv, capsys):
    from edgeprune.cli.main import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def test_cli_builds_and_refuses_in_one_line(engine_set, tmp_path, capsys):
    code, captured = run_cli(["build", engine_set, "--backend", "openvino", "--precision", "bf16", "--device", "CPU",
                              "--out", tmp_path / "bf16"], capsys)
    assert code == 0, captured.err
    assert all(e.manifest["precision"] == "bf16" for e in load_engines(tmp_path / "bf16"))
    for extra, expected in ((["--precision", "int8"], "int8 is not built yet"), (["--device", "NOPE"], "'NOPE' is not available")):
        code, captured = run_cli(["build", engine_set, "--backend", "openvino", *extra, "--out", tmp_path / "x"], capsys)
        lines = [line for line in captured.err.strip().splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and expected in lines[0], captured.err
        assert not (tmp_path / "x").exists()
    code, captured = run_cli(["build", engine_set, "--backend", "ort-cpu", "--device", "GPU", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "--device is for --backend openvino" in captured.err


def test_the_native_library_refuses_openvino_engines_in_one_line(engine_set, built):
    """libedgeprune has no OpenVINO backend yet: a set built for OpenVINO is an UNSUPPORTED status
    naming the Python runtime, never an attempt to open the blob as an ONNX graph."""
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("native library not built: cmake or a C++ compiler is missing")
    from edgeprune.native import NativeRuntime, build_native

    build_native()
    with pytest.raises(EdgepruneError, match="backend openvino run in the Python runtime") as caught:
        NativeRuntime(engine_set, 30.0, engines=built / "BUILT")
    assert caught.value.code == "unsupported"  # EDGEPRUNE_UNSUPPORTED

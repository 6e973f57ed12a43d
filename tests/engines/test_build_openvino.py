"""Engine builds for OpenVINO: a set built, cached and opened; a blob from another OpenVINO refused
when opened (one line naming the rebuild command), rebuilt in place by that command and never
copied from the cache; Runtime and calibrate on the built engines; one-line CLI refusals."""

from __future__ import annotations

import json
import re
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
    import openvino

    from edgeprune.backends import openvino as ov_backend

    member = load_engine_set(engine_set).members[0]
    folder = tmp_path / "e"
    build_engine(member.artifact, "openvino", BuilderSettings(), folder)
    manifest = json.loads((folder / "engine.json").read_text())
    manifest["versions"]["openvino"] = "2025.0.0-17942-old"
    (folder / "engine.json").write_text(json.dumps(manifest))
    engine = load_engine(folder)
    assert "built with OpenVINO 2025.0.0-17942-old" in engine.stale_reason()
    with pytest.raises(EdgepruneError, match=re.escape(
            f"{folder}: stale engine (built with OpenVINO 2025.0.0-17942-old, this machine has {openvino.get_version()}); "
            f"rebuild it: edgeprune build {member.artifact.path.resolve()} --backend openvino --precision fp32 --device CPU "
            f"--out {folder}")):
        engine.runner()
    # building into it again needs no --force: a stale build of the same artifact is replaced
    rebuilt = build_engine(member.artifact, "openvino", BuilderSettings(), folder)
    assert rebuilt.stale_reason() is None and rebuilt.manifest["versions"]["openvino"] == openvino.get_version()
    with pytest.raises(EdgepruneError, match="already exists; choose another --out or pass --force"):
        build_engine(member.artifact, "openvino", BuilderSettings(), folder)  # a fresh one is kept
    (folder / "engine.json").write_text(json.dumps(manifest))  # stale again, but for another artifact:
    other = load_engine_set(engine_set).members[1].artifact
    with pytest.raises(EdgepruneError, match="already exists; choose another --out or pass --force"):
        build_engine(other, "openvino", BuilderSettings(), folder)
    # a cache filled by this OpenVINO is not used by another one: it builds anew
    monkeypatch.setattr(ov_backend, "openvino_version", lambda: "2099.1.0-0-newer")
    rebuilt = build_engine(member.artifact, "openvino", BuilderSettings(), tmp_path / "newer", cache=EngineCache(built / "cache"))
    assert rebuilt.manifest["built"]["how"] == "built" and rebuilt.manifest["versions"]["openvino"] == "2099.1.0-0-newer"
    assert "this machine has 2099.1.0-0-newer" in load_engines(built / "BUILT")[0].stale_reason()


def test_a_stale_cache_entry_is_rebuilt_never_copied(engine_set, tmp_path):
    """An entry found under the right key whose manifest names another OpenVINO (a copied cache, a key
    that missed a version) is deleted and rebuilt."""
    import openvino

    member = load_engine_set(engine_set).members[0]
    cache = EngineCache(tmp_path / "cache")
    first = build_engine(member.artifact, "openvino", BuilderSettings(), tmp_path / "a", cache=cache)
    entry = cache.entry(first.manifest["cache_key"]) / "engine.json"
    stale = json.loads(entry.read_text())
    stale["versions"]["openvino"] = "2025.0.0-17942-old"
    entry.write_text(json.dumps(stale))
    second = build_engine(member.artifact, "openvino", BuilderSettings(), tmp_path / "b", cache=cache)
    assert second.manifest["built"]["how"] == "built" and second.manifest["versions"]["openvino"] == openvino.get_version()
    assert json.loads(entry.read_text())["versions"]["openvino"] == openvino.get_version()  # the entry was replaced
    third = build_engine(member.artifact, "openvino", BuilderSettings(), tmp_path / "c", cache=cache)
    assert third.manifest["built"]["how"] == "cache"


def test_a_stale_set_build_is_refused_by_the_runtime_and_rebuilt_by_the_command_it_names(engine_set, tmp_path, capsys):
    import shlex

    from edgeprune.runtime import Runtime

    target = tmp_path / "BUILT"
    code, captured = run_cli(["build", engine_set, "--backend", "openvino", "--no-cache", "--out", target], capsys)
    assert code == 0, captured.err
    member = target / "b0.75" / "engine.json"
    manifest = json.loads(member.read_text())
    manifest["versions"]["openvino"] = "2025.0.0-17942-old"
    member.write_text(json.dumps(manifest))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(EdgepruneError, match="stale engine") as caught:
            Runtime(engine_set, target_ms=1000.0, engines=target)
    message = str(caught.value)
    assert "\n" not in message and f"--out {target}" in message
    command = shlex.split(message.split("rebuild it: ", 1)[1])
    assert command[:2] == ["edgeprune", "build"]
    code, captured = run_cli(command[1:], capsys)  # as printed, without --force
    assert code == 0 and "rebuilding them in place" in captured.err, captured.err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with Runtime(engine_set, target_ms=1000.0, engines=target) as runtime:
            assert runtime.infer(np.zeros((32, 32, 3), np.uint8)).labels.shape == (32, 32)


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
            assert ov.provider_name.startswith("OpenVINO CPU")  # the device and the precision it really runs
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
    for extra, expected in ((["--precision", "int8"], "is not quantized: --precision int8 builds int8 artifacts; make one "
                                                       f"with `edgeprune quantize {engine_set} --calib DIR`"),
                            (["--device", "NOPE"], "'NOPE' is not available")):
        code, captured = run_cli(["build", engine_set, "--backend", "openvino", *extra, "--out", tmp_path / "x"], capsys)
        lines = [line for line in captured.err.strip().splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and expected in lines[0], captured.err
        assert not (tmp_path / "x").exists()
    code, captured = run_cli(["build", engine_set, "--backend", "ort-cpu", "--device", "GPU", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "--device is for --backend openvino" in captured.err

"""On-device builds: the emitted script runs end to end and its engines import back, checked.

trtexec cannot be installed here, so the script runs against a stand-in ``trtexec`` that prints what
the real one prints about the device and writes a blob as the engine: what is tested is the script
(checksums, one command per engine, the completed manifests) and the import's checks.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from edgeprune.engines.ondevice import SCRIPT, emit_script, import_engines
from edgeprune.backends.trt import BuilderSettings, tensorrt_version
from edgeprune.core.errors import EdgepruneError
from tests.conftest import make_tiny

STAND_IN = """#!/usr/bin/env bash
for a in "$@"; do case "$a" in --saveEngine=*) out="${a#--saveEngine=}";; esac; done
echo "[I] TensorRT version: 10.3.0"
echo "[I] Selected Device: Orin"
echo "[I] Compute Capability: 8.7"
head -c 4096 /dev/urandom > "$out"
echo "$@" >> "$(dirname "$0")/calls.txt"
"""
needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha256sum") is None,
                                reason="the build script needs bash and sha256sum")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from edgeprune.exporting.engine_set import export_engine_set
    from edgeprune.exporting.onnx_export import export
    from edgeprune import build_plan

    root = tmp_path_factory.mktemp("ondevice")
    net = make_tiny("cls")
    single = export(net, build_plan(net, "tome", flops=0.6), root / "tome")
    other = export(net, build_plan(net, "evit", keep=0.5), root / "evit")
    engine_set = export_engine_set(net, "tome", [1.0, 0.6], root / "set")
    return {"single": [("engine", single)], "other": [("engine", other)],
            "set": [(m.path, m.artifact) for m in engine_set.members]}


def run_script(folder, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "trtexec").write_text(STAND_IN)
    (bin_dir / "trtexec").chmod(0o755)
    result = subprocess.run(["bash", str(folder / SCRIPT)], env={"PATH": "/usr/bin:/bin", "TRTEXEC": str(bin_dir / "trtexec")},
                            capture_output=True, text=True, timeout=120)
    calls = (bin_dir / "calls.txt").read_text().splitlines() if (bin_dir / "calls.txt").exists() else []
    return result, calls


@needs_bash
def test_script_builds_every_member_and_import_checks_them(sources, tmp_path):
    settings = BuilderSettings(precision="fp16", workspace_mb=512)
    script = emit_script(sources["set"], settings, tmp_path / "ondevice")
    assert script.stat().st_mode & 0o100
    result, calls = run_script(tmp_path / "ondevice", tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(calls) == 2 and all("--stronglyTyped" in c and "--memPoolSize=workspace:512M" in c for c in calls)
    engines = import_engines(sources["set"], tmp_path / "ondevice" / "engines", tmp_path / "imported")
    assert [e.name for e in engines] == [name for name, _ in sources["set"]]
    for engine in engines:
        m = engine.manifest
        assert m["versions"]["tensorrt"] == "10.3.0" and m["device"] == {"gpu": "Orin", "compute_capability": "8.7"}
        assert m["precision"] == "fp16" and m["graph"]["precision"] == "fp16" and m["engine"]["bytes"] == 4096
        assert "engine sha256" in m["built"]["checked"] and "source onnx sha256" in m["built"]["checked"]
    assert json.loads((tmp_path / "imported" / "engines.json").read_text())["members"][0]["engine_sha256"]


@needs_bash
def test_import_refuses_engines_of_another_onnx_or_damaged_in_transit(sources, tmp_path):
    emit_script(sources["single"], BuilderSettings(), tmp_path / "ondevice")
    result, _ = run_script(tmp_path / "ondevice", tmp_path)
    assert result.returncode == 0, result.stderr
    built = tmp_path / "ondevice" / "engines"
    with pytest.raises(EdgepruneError, match="built from another ONNX"):
        import_engines(sources["other"], built, tmp_path / "x")
    with (built / "engine" / "model.engine").open("ab") as f:
        f.write(b"!")
    with pytest.raises(EdgepruneError, match="in transit"):
        import_engines(sources["single"], built, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@needs_bash
def test_script_refuses_a_changed_graph(sources, tmp_path):
    emit_script(sources["single"], BuilderSettings(), tmp_path / "ondevice")
    with (tmp_path / "ondevice" / "graphs" / "engine.onnx").open("ab") as f:
        f.write(b"\0")
    result, calls = run_script(tmp_path / "ondevice", tmp_path)
    assert result.returncode == 2 and "differs" in result.stderr and not calls


@pytest.mark.skipif(tensorrt_version() is not None, reason="with TensorRT a bare engine is checked by deserializing it")
def test_bare_engine_needs_tensorrt_to_be_checked(sources, tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x" * 4096)
    with pytest.raises(EdgepruneError, match="only be checked by TensorRT"):
        import_engines(sources["single"], engine, tmp_path / "x")


def test_trt11_scripts_have_no_precision_flags_and_weak_typing_is_refused(sources, tmp_path):
    emit_script(sources["single"], BuilderSettings(precision="fp16"), tmp_path / "a", trt_version="11")
    text = (tmp_path / "a" / SCRIPT).read_text()
    assert "--fp16" not in text and "--stronglyTyped" not in text and "trtexec" in text
    with pytest.raises(EdgepruneError, match="removed"):
        emit_script(sources["single"], BuilderSettings(precision="fp16", strongly_typed=False), tmp_path / "b", trt_version="11")
    assert not (tmp_path / "b").exists()

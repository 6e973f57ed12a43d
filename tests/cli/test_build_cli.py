"""``edgeprune build`` and ``edgeprune compare`` as users run them: tables, cache reuse, exit codes, one-line errors."""

from __future__ import annotations

import json

import pytest

from edgeprune.cli.main import main
from edgeprune.backends.trt import tensorrt_version
from tests.cli.test_cli import TINY_ARGS, error_line, run


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("build_cli")
    assert main(["export", "vit_tiny_patch16_224", *TINY_ARGS, "--method", "tome", "--flops", "0.6",
                 "--out", str(root / "tome")]) == 0
    return root / "tome"


def test_build_then_the_cache_serves_the_second_build(artifact, tmp_path, capsys):
    cache = tmp_path / "cache"
    code, out, err = run(["build", artifact, "--precision", "fp16", "--out", tmp_path / "a", "--cache", cache], capsys)
    assert code == 0, err
    assert "ort-cpu" in out and "fp16" in out and "built" in out
    manifest = json.loads((tmp_path / "a" / "engine.json").read_text())
    code, out, err = run(["build", artifact, "--precision", "fp16", "--out", tmp_path / "b", "--cache", cache], capsys)
    assert code == 0 and "cache" in out
    assert json.loads((tmp_path / "b" / "engine.json").read_text())["engine"]["sha256"] == manifest["engine"]["sha256"]
    code, _, err = run(["build", artifact, "--precision", "fp16", "--out", tmp_path / "b", "--cache", cache], capsys)
    assert code == 2 and "--force" in error_line(err)


def test_default_out_is_beside_the_source(artifact, capsys):
    code, _, err = run(["build", artifact, "--no-cache", "--force"], capsys)
    assert code == 0, err
    assert (artifact.parent / "tome.ort-cpu-fp32" / "engine.json").is_file()


@pytest.mark.skipif(tensorrt_version() is not None, reason="TensorRT is installed here")
def test_trt_without_tensorrt_is_one_line_naming_the_fix_and_emit_script_works(artifact, tmp_path, capsys):
    code, _, err = run(["build", artifact, "--backend", "trt", "--out", tmp_path / "e"], capsys)
    line = error_line(err)
    assert code == 2 and "TensorRT is not available" in line and "pip install tensorrt" in line and "--emit-script" in line
    assert not (tmp_path / "e").exists()
    code, out, err = run(["build", artifact, "--emit-script", "--precision", "fp16", "--out", tmp_path / "s"], capsys)
    assert code == 0, err
    assert (tmp_path / "s" / "build_engines.sh").is_file() and "--import" in out


@pytest.mark.parametrize("argv, message", [
    (["--backend", "tpu"], "--backend must be one of"),
    (["--precision", "fp8"], "--precision must be one of"),
    (["--opt-level", "7"], "--opt-level"),
    (["--hardware-compat", "volta"], "--hardware-compat"),
    (["--precision", "bf16"], "bf16"),
    (["--emit-script", "--import", "x"], "one at a time"),
    (["--backend", "ort-cpu", "--emit-script"], "TensorRT engines"),
    (["--import", "does-not-exist"], "not a TensorRT engine file"),
])
def test_bad_build_options_are_one_line(artifact, tmp_path, capsys, argv, message):
    code, _, err = run(["build", artifact, "--out", tmp_path / "o", *argv], capsys)
    assert code == 2 and message in error_line(err)
    assert not (tmp_path / "o").exists()


def test_build_of_a_corrupt_artifact_is_one_line(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{")
    code, _, err = run(["build", tmp_path / "bad"], capsys)
    assert code == 2 and "corrupt manifest" in error_line(err)


def test_compare_exit_codes(artifact, tmp_path, capsys):
    code, out, err = run(["compare", artifact, "--backends", "ort-cpu,ort-cpu:fp16", "--inputs", 2, "--tolerance", 1.0,
                          "--cache", tmp_path / "c"], capsys)
    assert code == 0 and "pass" in out, err
    code, out, _ = run(["compare", artifact, "--backends", "ort-cpu,ort-cpu:fp16", "--inputs", 2, "--tolerance", 1e-9,
                        "--json", "--cache", tmp_path / "c"], capsys)
    assert code == 1 and json.loads(out)["passed"] is False
    code, _, err = run(["compare", artifact, "--backends", "ort-cpu"], capsys)
    assert code == 2 and "at least two" in error_line(err)


def test_inspect_shows_engine_folders(artifact, tmp_path, capsys):
    assert main(["build", str(artifact), "--out", str(tmp_path / "e"), "--no-cache"]) == 0
    capsys.readouterr()
    code, out, _ = run(["inspect", tmp_path / "e"], capsys)
    assert code == 0 and "ort-cpu" in out and "onnxruntime" in out
    code, out, _ = run(["inspect", tmp_path / "e", "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["kind"] == "edgeprune-engine"

"""``edgeprune quantize`` as users run it: an int8 artifact built by OpenVINO and ONNX Runtime, and every
bad input as one line with exit code 2 and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeprune.cli.main import main
from tests.cli.test_cli import TINY_ARGS, error_line, run

pytest.importorskip("nncf", reason='NNCF is not installed (pip install "edgeprune[quantize]")')
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A tiny timm ViT exported by the CLI: random weights, and no input normalisation recorded."""
    root = tmp_path_factory.mktemp("quantize_cli")
    assert main(["export", "vit_tiny_patch16_224", *TINY_ARGS, "--method", "tome", "--flops", "0.6",
                 "--out", str(root / "tome")]) == 0
    return root / "tome"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_quantize_then_build_for_openvino_and_onnx_runtime(artifact, images, tmp_path, capsys):
    code, out, err = run(["quantize", artifact, "--calib", images, "--samples", "8", "--mean", "0.5", "--std", "0.25",
                          "--out", tmp_path / "q"], capsys)
    assert code == 0, err
    assert "int8" in out and "8 images" in out and f"edgeprune build {tmp_path / 'q'} --backend openvino --precision int8" in out
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["quantization"]["calibration"]["mean"] == [0.5]
    assert manifest["quantization"]["overflow_fix"] == "all"
    for backend in ("openvino", "ort-cpu"):
        code, out, err = run(["build", tmp_path / "q", "--backend", backend, "--precision", "int8", "--no-cache",
                              "--out", tmp_path / backend], capsys)
        assert code == 0 and "int8" in out, err
    code, _, err = run(["build", tmp_path / "q", "--backend", "openvino", "--out", tmp_path / "fp32"], capsys)
    assert code == 2 and "is an int8 artifact: build it with --precision int8" in error_line(err)
    code, _, err = run(["build", tmp_path / "q", "--backend", "ort-cuda", "--precision", "int8", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "int8 is built with --backend openvino or ort-cpu" in error_line(err)
    code, _, err = run(["build", artifact, "--backend", "openvino", "--precision", "int8", "--out", tmp_path / "x"], capsys)
    assert code == 2 and f"make one with `edgeprune quantize {artifact} --calib DIR`" in error_line(err)
    code, _, err = run(["quantize", tmp_path / "q", "--calib", images, "--out", tmp_path / "again"], capsys)
    assert code == 2 and "is already quantized (int8); quantize its fp32 parent" in error_line(err)
    assert not any((tmp_path / name).exists() for name in ("fp32", "x", "again"))


def test_bad_input_is_one_line_and_writes_nothing(artifact, images, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    cases = [
        ([], "--precision int8 / quantize needs calibration data: --calib DIR"),
        (["--calib", tmp_path / "empty", "--mean", "0.5", "--std", "0.25"], "holds no images"),
        (["--calib", tmp_path / "broken", "--mean", "0.5", "--std", "0.25"], "cannot read image"),
        (["--calib", tmp_path / "missing"], "does not exist"),
        (["--calib", images], "records no input normalisation (model.input mean and std)"),
        (["--calib", images, "--mean", "0.5"], "--mean and --std go together"),
        (["--calib", images, "--mean", "a,b", "--std", "1"], "--mean expects comma-separated numbers"),
        (["--calib", images, "--overflow-fix", "some"], "--overflow-fix must be one of all, first-layer, none"),
        (["--calib", images, "--budgets", "1.0"], "--budgets picks members of an engine set"),
        (["--calib", images, "--mean", "0.5", "--std", "0.25", "--samples", "0"], "--samples must be at least 1"),
    ]
    for extra, message in cases:
        code, _, err = run(["quantize", artifact, *extra, "--out", tmp_path / "out"], capsys)
        assert code == 2 and message in error_line(err), (extra, err)
        assert not (tmp_path / "out").exists(), extra
    code, _, err = run(["quantize", tmp_path / "empty", "--calib", images], capsys)
    assert code == 2 and "no manifest.json (not an edgeprune artifact)" in error_line(err)
    code, _, err = run(["quantize", artifact, "--calib", images, "--out", tmp_path / "taken"], capsys)
    assert code == 2 and "already exists; choose another --out or pass --force" in error_line(err)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_without_nncf_the_command_names_the_extra(artifact, images, tmp_path):
    """NNCF really absent (the import system finds no nncf): one line naming the extra, exit 2."""
    script = textwrap.dedent(f"""
        import importlib.machinery, sys
        class WithoutNncf(importlib.machinery.PathFinder):
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                return None if name.split(".")[0] == "nncf" else super().find_spec(name, path, target)
        sys.meta_path = [WithoutNncf if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
        from edgeprune.cli.main import main
        sys.exit(main(["quantize", {str(artifact)!r}, "--calib", {str(images)!r}, "--out", {str(tmp_path / "q")!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "needs the 'quantize' extra (nncf not installed): pip install \"edgeprune[quantize]\"" in line
    assert not (tmp_path / "q").exists()

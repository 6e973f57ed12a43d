"""``edgeprune export --temporal``, ``inspect`` and ``demo`` on a temporal artifact, and their bad input."""

import json
import os
from pathlib import Path

import pytest

from tests.cli.test_cli import error_line, run

REFERENCE = Path(__file__).resolve().parents[2] / "models" / "scene_seg"


@pytest.fixture(scope="module")
def temporal(tmp_path_factory):
    from edgeprune.cli.main import main

    out = tmp_path_factory.mktemp("temporal_cli") / "T"
    assert main(["export", str(REFERENCE), "--temporal", "0.4", "--out", str(out)]) == 0
    return out


def test_export_and_inspect(temporal, capsys):
    m = json.loads((temporal / "manifest.json").read_text())
    assert m["kind"] == "edgeprune-temporal" and m["recompute"] == 102 and m["patches"] == 256
    assert sorted(p for p in os.listdir(temporal)) == ["manifest.json", "refresh.onnx", "update.onnx"]
    code, out, _ = run(["inspect", temporal], capsys)
    assert code == 0 and "recomputes 102 patches" in out and "update" in out and "refresh" in out
    code, out, _ = run(["inspect", temporal, "--json"], capsys)
    assert code == 0 and json.loads(out)["recompute"] == 102


def test_demo_runs_the_temporal_runtime(temporal, tmp_path, capsys):
    code, out, err = run(["demo", "--model", temporal, "--out", tmp_path / "d.mp4", "--max-frames", 8, "--threads", 1], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "d.metrics.json").read_text())
    assert data["kind"] == "temporal reuse" and data["summary"]["frames"] == 8
    engines = [r["engine"] for r in data["frames"]]
    assert engines[0] == "refresh (first frame)" and engines[1] == "update 40% of patches"
    assert data["frames"][1]["budget"] == pytest.approx(102 / 256, abs=1e-3)


@pytest.mark.parametrize("extra, message", [
    (["--temporal", "0.4", "--flops", "0.5"], "drop --flops"),
    (["--temporal", "0.4", "--method", "evit"], "drop --method"),
    (["--temporal", "1.5"], "a share is in (0, 1]"),
    (["--temporal", "0"], "must be > 0"),
])
def test_export_bad_temporal_flags(extra, message, tmp_path, capsys):
    code, _, err = run(["export", REFERENCE, *extra, "--out", tmp_path / "x"], capsys)
    assert code == 2 and message in error_line(err)
    assert not (tmp_path / "x").exists()


def test_temporal_on_a_classifier_is_one_line(tmp_path, capsys):
    code, _, err = run(["export", "vit_tiny_patch16_224", "--img-size", "32", "--model-arg", "patch_size=8",
                        "--model-arg", "depth=2", "--temporal", "0.5", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "segmenter" in error_line(err)
    assert not (tmp_path / "x").exists()


def test_corrupt_temporal_artifact(temporal, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(temporal, broken)
    (broken / "refresh.onnx").write_bytes(b"not onnx")
    code, _, err = run(["inspect", broken], capsys)
    assert code == 2 and "sha256" in error_line(err)
    code, _, err = run(["demo", "--model", broken, "--out", tmp_path / "d.mp4", "--max-frames", 2], capsys)
    assert code == 2 and "sha256" in error_line(err)
    assert not list(tmp_path.glob("d*"))


def test_commands_for_plain_artifacts_point_to_the_demo(temporal, tmp_path, capsys):
    code, _, err = run(["bench", temporal, "--rounds", 1], capsys)
    assert code == 2 and "is a temporal artifact" in error_line(err)

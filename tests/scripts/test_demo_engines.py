"""scripts/demo_engines.py on a tiny calibrated set and short real mp4s (heavy: an export and four demo runs): both
engines run the demo's own pipeline, the table and the JSON say so; and bad input is one line, exit 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from edgeprune.artifacts.engine_set import load_engine_set
from edgeprune.measure.calibrate import calibrate_engine_set
from tests.conftest import export_tiny_set

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install \"edgeprune[openvino]\")")
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo_engines.py"


def load_script():
    spec = importlib.util.spec_from_file_location("demo_engines", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.heavy
def test_both_engines_side_by_side(tmp_path, capsys):
    from edgeprune.data import SceneConfig, make_clip
    from edgeprune.video import VideoWriter

    engine_set = export_tiny_set(tmp_path / "SET", [1.0, 0.75], 4, [0.5] * 3, [0.25] * 3)
    calibrate_engine_set(load_engine_set(engine_set), rounds=3, warmup=1, threads=1, provider="openvino")
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "notes.txt").write_text("not a clip")
    for name, seed in (("a.mp4", 0), ("b.mp4", 1)):
        clip, _ = make_clip(seed, 4, SceneConfig(height=48, width=64))
        with VideoWriter(videos / name, 10, (64, 48)) as writer:
            for frame in clip:
                writer.write(frame)
    out = tmp_path / "demo_engines.json"
    script = load_script()
    assert script.main(["--videos", str(videos), "--model", str(engine_set), "--max-frames", "3", "--threads", "1",
                        "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ORT fps" in printed and "OV fps" in printed and f"wrote {out}" in printed
    data = json.loads(out.read_text())
    assert [c["clip"] for c in data["clips"]] == ["a.mp4", "b.mp4"] and [c["first"] for c in data["clips"]] == [
        "onnxruntime", "openvino"]  # which engine goes first alternates
    for clip in data["clips"]:
        ort, ov = clip["engines"]["onnxruntime"], clip["engines"]["openvino"]
        assert ort["runs_as"] == ["CPUExecutionProvider"] and ov["runs_as"] == ["OpenVINO CPU f32"]
        assert ort["frames"] == ov["frames"] == 3 and ort["fps_end_to_end"] > 0 and ov["engine_p50_ms"] > 0
        assert clip["openvino_vs_onnxruntime_fps"] == pytest.approx(ov["fps_end_to_end"] / ort["fps_end_to_end"], rel=1e-2)
    assert data["versions"]["openvino"] and data["machine"]["cpu"]
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*"))  # the demo videos went to a temp dir


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    script = load_script()
    (tmp_path / "notes.txt").write_text("not a clip")
    for argv, words in ((["--videos", str(tmp_path / "none")], "no video files"),
                        (["--videos", str(tmp_path)], "no video files"),
                        (["--videos", str(tmp_path), "--precision", "int8"], "--precision must be one of fp32, bf16, fp16"),
                        (["--videos", str(tmp_path), "--max-frames", "0"], "--max-frames must be >= 1")):
        assert script.main([*argv, "--json", str(tmp_path / "out" / "x.json")]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and words in err and len(err.splitlines()) == 1, argv
    assert not (tmp_path / "out").exists()

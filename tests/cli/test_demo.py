"""``edgeprune demo`` as users run it: generated clip, a real mp4, engine sets, and bad input -> exit 2, nothing left."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeprune.video import VideoWriter, open_video
from tests.cli.test_cli import error_line, run

REFERENCE = Path(__file__).resolve().parents[2] / "models" / "scene_seg"
FAST = ["--threads", "1"]  # a shared 2-core CI box: one thread avoids spin-wait contention


@pytest.fixture(scope="module")
def engine_sets(tmp_path_factory):
    """A tiny tome set of the reference segmenter (budgets 1.0, 0.5): calibrated, and an uncalibrated copy."""
    from edgeprune.measure.calibrate import calibrate_engine_set
    from edgeprune.exporting.engine_set import export_engine_set
    from edgeprune.families.loading import load_model

    root = tmp_path_factory.mktemp("demo_sets")
    net, info = load_model(str(REFERENCE))
    engine_set = export_engine_set(net, "tome", [1.0, 0.5], root / "SET", model_info=info)
    shutil.copytree(root / "SET", root / "RAW")
    calibrate_engine_set(engine_set, rounds=5, warmup=1, threads=1)
    return {"calibrated": root / "SET", "raw": root / "RAW"}


def outputs(folder: Path, stem: str = "out") -> list[str]:
    return sorted(p for p in os.listdir(folder) if p.startswith(stem))


def scene_video(path: Path, seed: int, frames: int, size: tuple[int, int], fps: float) -> Path:
    """A generated scene clip of ``size`` (width, height) written as an mp4."""
    from edgeprune.data import SceneConfig, make_clip

    clip, _ = make_clip(seed, frames, SceneConfig(height=size[1], width=size[0]))
    with VideoWriter(path, fps, size) as writer:
        for f in clip:
            writer.write(f)
    return path


def frames_of(path: Path) -> list[np.ndarray]:
    return list(open_video(path))


def test_default_demo_switches_budgets_and_runs_temporal_reuse(tmp_path, capsys):
    """Issue 11: no arguments -> the cached engine set under a deadline step, then temporal reuse."""
    out = tmp_path / "out.mp4"
    code, stdout, err = run(["demo", "--max-frames", "60", "--out", out], capsys)
    assert code == 0, err
    assert outputs(tmp_path) == ["out.metrics.json", "out.mp4", "out.plot.png", "out.temporal.metrics.json",
                                 "out.temporal.mp4", "out.temporal.plot.png"]
    data = json.loads((tmp_path / "out.metrics.json").read_text())
    s = data["summary"]
    assert data["kind"].startswith("engine set") and len(s["budgets_used"]) >= 2, s["budgets_used"]
    targets = [r["target_ms"] for r in data["frames"]]
    assert targets[0] > targets[-1]  # the deadline tightens half way
    # The budget follows: the full model before the step, smaller budgets after it.
    assert data["frames"][25]["budget"] > np.mean([r["budget"] for r in data["frames"][40:]])
    assert s["fps_end_to_end"] > 0 and set(s["stages"]) >= {"decode", "pre", "engine", "post", "encode"}
    temporal = json.loads((tmp_path / "out.temporal.metrics.json").read_text())
    assert temporal["kind"] == "temporal reuse" and temporal["summary"]["frames"] == 60
    assert stdout.count("fps end to end") == 2
    # The second run reuses the cached exports.
    code, _, err = run(["demo", "--max-frames", "4", "--out", out, "--force"], capsys)
    assert code == 0 and "exporting" not in err, err


def test_generated_clip_eager_model(tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code, stdout, err = run(["demo", "--max-frames", "20", "--model", REFERENCE, "--out", out, *FAST], capsys)
    assert code == 0, err
    assert outputs(tmp_path) == ["out.metrics.json", "out.mp4", "out.plot.png"]
    reader = open_video(out)
    assert reader.size == (256, 256) and len(list(reader)) == 20
    data = json.loads((tmp_path / "out.metrics.json").read_text())
    s = data["summary"]
    assert s["frames"] == 20 and len(data["frames"]) == 20 and s["mean_budget"] == 1.0 and s["dropped"] == 0
    assert 0 <= s["hit_rate"] <= 1 and s["p95_ms"] >= s["p50_ms"] > 0 and s["rss_end_mb"] > 0
    assert {"index", "engine", "budget", "engine_ms", "total_ms", "deadline_met", "ms"} <= set(data["frames"][0])
    assert "20 frames" in stdout and "hits" in stdout and "fps end to end" in stdout
    # Existing outputs are refused without --force, and left alone.
    before = out.stat().st_mtime_ns
    code, _, err = run(["demo", "--max-frames", "2", "--model", REFERENCE, "--out", out, *FAST], capsys)
    assert code == 2 and "--force" in error_line(err) and out.stat().st_mtime_ns == before


def test_real_video_file(tmp_path, capsys):
    src = scene_video(tmp_path / "in.mp4", 3, 12, (160, 96), 24)
    out = tmp_path / "out.mp4"
    code, stdout, err = run(["demo", src, src, "--model", REFERENCE, "--max-frames", "20", "--out", out, "--alpha", "0.3",
                             *FAST], capsys)
    assert code == 0, err
    reader = open_video(out)
    assert reader.size == (160, 96) and reader.fps == pytest.approx(24)
    assert len(list(reader)) == 20  # two passes over the 12-frame video, cut at 20
    assert json.loads((tmp_path / "out.metrics.json").read_text())["sources"] == [str(src), str(src)]


def test_bad_inputs_exit_2_and_leave_nothing(tmp_path, capsys):
    import cv2

    (tmp_path / "text.mp4").write_text("not a video\n")
    empty = cv2.VideoWriter(str(tmp_path / "empty.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30, (64, 48))
    empty.release()
    (tmp_path / "notamodel").mkdir()
    cases = [
        (["demo", tmp_path / "missing.mp4"], "no such file"),
        (["demo", tmp_path / "text.mp4"], "cannot read video"),
        (["demo", tmp_path / "empty.mp4"], "cannot read video"),
        (["demo", "--model", tmp_path / "notamodel"], "neither config.json"),
        (["demo", "--model", tmp_path / "nope"], "no such directory"),
        (["demo", "--out", tmp_path / "text.mp4" / "out.mp4"], "not a directory"),
        (["demo", "--out", tmp_path / "out.avi"], ".mp4"),
        (["demo", "--policy", "fastest"], "unknown policy"),
        (["demo", "--target-fps", "30,10"], "--target-fps"),
        (["demo", "--camera", "7"], "cannot open camera 7"),
        (["demo", "--camera", str(tmp_path / "missing.mp4")], "cannot open camera"),
        (["demo", "--camera", str(tmp_path / "text.mp4")], "cannot open camera"),
    ]
    for argv, message in cases:
        args = [*argv, "--max-frames", "2", *FAST]
        if "--out" not in args:
            args += ["--out", tmp_path / "out.mp4"]
        code, _, err = run(args, capsys)
        assert code == 2, (argv, err)
        line = error_line(err)
        assert line.startswith("error:") and message in line, (argv, line)
        assert outputs(tmp_path) == [], argv
        assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp.mp4")]


def test_engine_set(engine_sets, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code, stdout, err = run(["demo", "--model", engine_sets["calibrated"], "--target-fps", "100", "--max-frames", "15",
                             "--out", out, *FAST], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "out.metrics.json").read_text())
    assert data["budgets"] == [1.0, 0.5] and data["policy"] == "deadline"
    assert {r["budget"] for r in data["frames"]} <= {1.0, 0.5}
    assert {r["engine"] for r in data["frames"]} <= {"b1.00", "b0.50"}
    assert data["frames"][0]["target_ms"] == 10.0 and len(frames_of(out)) == 15
    code, _, err = run(["demo", "--model", engine_sets["calibrated"], "--policy", "fixed", "--max-frames", "3",
                        "--out", tmp_path / "fixed.mp4", *FAST], capsys)
    assert code == 0, err


def test_uncalibrated_set(engine_sets, tmp_path, capsys):
    code, _, err = run(["demo", "--model", engine_sets["raw"], "--max-frames", "2", "--out", tmp_path / "out.mp4"], capsys)
    assert code == 2 and "edgeprune calibrate" in error_line(err)
    assert outputs(tmp_path) == []


def test_unreachable_target_warns_and_degrades(engine_sets, tmp_path, capsys):
    code, _, err = run(["demo", "--model", engine_sets["calibrated"], "--target-fps", "100000", "--max-frames", "3",
                        "--out", tmp_path / "out.mp4", *FAST], capsys)
    assert code == 0 and "warning: target 0.01 ms is below the fastest engine" in " ".join(err.split())
    data = json.loads((tmp_path / "out.metrics.json").read_text())
    assert {r["budget"] for r in data["frames"]} == {0.5}  # the smallest budget, every frame


def test_camera_drops_stale_frames_and_counts_them(engine_sets, tmp_path, capsys):
    """A live source never queues: a file played as a camera at 200 fps outruns the engine, frames are dropped
    and counted, and the output holds only the frames that were processed."""
    src = scene_video(tmp_path / "cam.mp4", 5, 90, (128, 96), 200)
    out = tmp_path / "out.mp4"
    code, stdout, err = run(["demo", "--camera", str(src), "--model", engine_sets["calibrated"], "--out", out, *FAST], capsys)
    assert code == 0, err
    s = json.loads((tmp_path / "out.metrics.json").read_text())["summary"]
    assert s["dropped"] > 0 and s["frames"] + s["dropped"] <= 90 and len(frames_of(out)) == s["frames"]
    assert f"{s['dropped']} dropped" in stdout


HIGHWAY = Path(__file__).resolve().parents[3] / "shared" / "data" / "video" / "highway_lane_960x540.mp4"


@pytest.mark.heavy
@pytest.mark.skipif(not HIGHWAY.is_file(), reason="needs ../shared/data/video")
def test_real_video_defaults_to_the_camvid_engine_set(tmp_path, capsys):
    """Issue 16: ``demo VIDEO`` with no --model runs the CamVid model as a calibrated engine set (made on first
    use), so a tight deadline moves budgets, and road and sky come out where they are on the highway clip."""
    out = tmp_path / "out.mp4"
    code, _, err = run(["demo", HIGHWAY, "--max-frames", "40", "--target-fps", "1000,5@20", "--out", out], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "out.metrics.json").read_text())
    assert data["kind"].startswith("engine set") and "camvid_seg" in json.dumps(data)
    assert len(data["summary"]["budgets_used"]) >= 2, data["summary"]["budgets_used"]
    frames = frames_of(out)
    assert len(frames) == 40


def test_engine_set_on_openvino_and_auto(engine_sets, tmp_path, capsys):
    """The same set on OpenVINO (warned that its calibration is ONNX Runtime's) and with --provider auto, which
    says what it picked and why."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install \"edgeprune[openvino]\")")
    code, _, err = run(["demo", "--model", engine_sets["calibrated"], "--provider", "openvino", "--max-frames", "6",
                        "--out", tmp_path / "ov.mp4", *FAST], capsys)
    assert code == 0, err
    assert "calibrated for ONNX Runtime cpu, not OpenVINO CPU fp32" in " ".join(err.split())
    data = json.loads((tmp_path / "ov.metrics.json").read_text())
    assert data["summary"]["providers"] == {"OpenVINO CPU f32": 6} and len(frames_of(tmp_path / "ov.mp4")) == 6
    assert {r["budget"] for r in data["frames"]} <= {1.0, 0.5}
    code, _, err = run(["demo", "--model", engine_sets["calibrated"], "--provider", "auto", "--max-frames", "3",
                        "--out", tmp_path / "auto.mp4", *FAST], capsys)
    assert code == 0, err
    assert "--provider auto: ONNX Runtime cpu (the only engine calibrated here" in " ".join(err.split())
    assert json.loads((tmp_path / "auto.metrics.json").read_text())["summary"]["providers"] == {"CPUExecutionProvider": 3}


def test_bad_engine_options_exit_2_and_leave_nothing(engine_sets, tmp_path, capsys):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install \"edgeprune[openvino]\")")
    model = ["--model", engine_sets["calibrated"]]
    for argv, message in ((["--provider", "onnx"], "--provider must be one of cpu, cuda, tensorrt, openvino, auto"),
                          (["--provider", "openvino", "--device", "NPU7"], "OpenVINO device 'NPU7' is not available"),
                          (["--precision", "bf16"], "--precision bf16 runs on --provider openvino"),
                          (["--provider", "openvino", "--native", *model], "--native takes ONNX Runtime's providers"),
                          (["--provider", "openvino", "--precision", "fp16", "--model", REFERENCE],
                           "--precision and --device apply to exported artifacts")):
        code, _, err = run(["demo", *argv, "--max-frames", "2", "--out", tmp_path / "out.mp4", *FAST], capsys)
        assert code == 2, (argv, err)
        assert message in error_line(err), argv
        assert outputs(tmp_path) == [], argv

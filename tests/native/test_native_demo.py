"""``edgeprune demo --native``: the video demo through the C library, beside the Python runtime on the same clip."""

import json

from edgeprune.video import VideoWriter, open_video
from tests.cli.test_cli import error_line, run
from tests.native.conftest import moving_clip


def test_demo_native_matches_python_run(native_lib, tiny_set, tiny_temporal, tmp_path, capsys):
    src = tmp_path / "clip.mp4"
    with VideoWriter(src, 30, (96, 64)) as writer:
        for frame in moving_clip(24, 64, 96):
            writer.write(frame)
    runs = {}
    for name, extra in (("py", []), ("native", ["--native"])):
        out = tmp_path / f"{name}.mp4"
        code, stdout, err = run(["demo", src, "--model", tiny_set, "--policy", "fixed", "--out", out,
                                 "--threads", "1", *extra], capsys)
        assert code == 0, err
        assert "fps end to end" in stdout
        runs[name] = json.loads((tmp_path / f"{name}.metrics.json").read_text())
        assert len(list(open_video(out))) == 24
    assert runs["native"]["kind"].endswith("native")
    assert [r["engine"] for r in runs["native"]["frames"]] == [r["engine"] for r in runs["py"]["frames"]]
    assert {r["provider"] for r in runs["native"]["frames"]} == {"cpu"}
    code, _, err = run(["demo", src, "--model", tiny_temporal, "--native", "--out", tmp_path / "t.mp4"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "t.metrics.json").read_text())["kind"] == "temporal reuse"


def test_demo_native_refuses_a_single_artifact(native_lib, tmp_path, capsys):
    from pathlib import Path

    model = Path(__file__).resolve().parents[2] / "models" / "scene_seg"
    code, _, err = run(["demo", "--model", model, "--native", "--max-frames", "2", "--out", tmp_path / "o.mp4"], capsys)
    assert code == 2 and "--native runs engine sets and temporal artifacts" in error_line(err)

"""``edgeprune demo A B --cameras``: simultaneous cameras, one token pool per tick, tiled output."""

import json
from pathlib import Path

import numpy as np
import pytest

from edgeprune.video import VideoWriter, open_video
from tests.cli.test_cli import error_line, run


@pytest.fixture(scope="module")
def engine_set(tmp_path_factory):
    from edgeprune.measure.calibrate import calibrate_engine_set
    from edgeprune.exporting.engine_set import export_engine_set
    from edgeprune.families.timm_seg import create_segmenter

    model = create_segmenter("vit_tiny_patch16_224", 4, head="linear", img_size=32, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, mlp_ratio=2.0)
    model.info = {"input": {"size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
                  "num_classes": 4, "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]}
    root = tmp_path_factory.mktemp("cams") / "SET"
    engines = export_engine_set(model, "tome", [1.0, 0.8, 0.6], root)
    calibrate_engine_set(engines, rounds=3, warmup=1, threads=1)
    return root


def clip(path: Path, frames: int, size=(64, 48), busy: bool = False) -> Path:
    rng = np.random.default_rng(len(str(path)))
    ramp = np.linspace(40, 200, size[0], dtype=np.float32)  # a smooth, flat-looking frame
    base = np.repeat(np.repeat(ramp[None, :, None], size[1], axis=0), 3, axis=2).astype(np.uint8)
    with VideoWriter(path, 10.0, size) as writer:
        for i in range(frames):
            writer.write(rng.integers(0, 256, base.shape, dtype=np.uint8) if busy else base)
    return path


def test_cameras_share_the_pool(engine_set, tmp_path, capsys):
    a, b = clip(tmp_path / "flat.mp4", 6), clip(tmp_path / "busy.mp4", 8, busy=True)
    code, out, err = run(["demo", a, b, "--cameras", "--model", engine_set, "--pool", "1.6", "--minimum", "0.6",
                          "--out", tmp_path / "o.mp4", "--threads", "1", "--target-fps", "1"], capsys)
    assert code == 0, err
    assert "6 ticks x 2 cameras" in out
    data = json.loads((tmp_path / "o.metrics.json").read_text())
    assert data["kind"] == "cameras" and data["summary"]["ticks"] == 6  # the shorter video ends the run
    for tick in data["ticks"]:
        assert sum(tick["budgets"].values()) <= 1.6 + 1e-9 and min(tick["budgets"].values()) >= 0.6
    # Random noise frames are far busier than a flat frame: the busy camera takes the larger share.
    assert data["summary"]["mean_budget"]["busy.mp4"] > data["summary"]["mean_budget"]["flat.mp4"]
    frames = list(open_video(tmp_path / "o.mp4"))
    assert len(frames) == 6 and frames[0].shape == (48, 128, 3)  # two 64 x 48 tiles side by side
    assert (tmp_path / "o.plot.png").stat().st_size > 0


@pytest.mark.parametrize("extra, message", [
    (["--pool", "0.5", "--minimum", "0.6"], "cannot give 2 cameras"),
    (["--signal", "loud"], "--signal must be one of"),
])
def test_bad_pool_settings(engine_set, tmp_path, capsys, extra, message):
    a, b = clip(tmp_path / "a.mp4", 3), clip(tmp_path / "b.mp4", 3)
    code, _, err = run(["demo", a, b, "--cameras", "--model", engine_set, *extra, "--out", tmp_path / "o.mp4"], capsys)
    assert code == 2 and message in error_line(err)
    assert not list(tmp_path.glob("o*"))


def test_cameras_need_two_videos_and_an_engine_set(engine_set, tmp_path, capsys):
    a = clip(tmp_path / "a.mp4", 3)
    code, _, err = run(["demo", a, "--cameras", "--model", engine_set, "--out", tmp_path / "o.mp4"], capsys)
    assert code == 2 and "at least two videos" in error_line(err)
    member = engine_set / "b1.00"
    code, _, err = run(["demo", a, a, "--cameras", "--model", member, "--out", tmp_path / "o.mp4"], capsys)
    assert code == 2 and "needs an engine set" in error_line(err)
    assert not list(tmp_path.glob("o*"))

"""edgeprune.video: round trip, one-line errors for bad files, no partial output on failure."""

import os

import numpy as np
import pytest

from edgeprune.core.errors import EdgepruneError
from edgeprune.video import VideoWriter, open_video


def gradient_frames(n: int, w: int = 64, h: int = 48) -> list[np.ndarray]:
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    return [np.broadcast_to((ramp * 0.5 + 10 * i) % 256, (h, w, 3)).astype(np.uint8) for i in range(n)]


def test_round_trip(tmp_path):
    frames = gradient_frames(9)
    with VideoWriter(tmp_path / "v.mp4", 12, (64, 48)) as writer:
        for f in frames:
            writer.write(f)
    assert sorted(os.listdir(tmp_path)) == ["v.mp4"]
    reader = open_video(tmp_path / "v.mp4")
    assert reader.size == (64, 48) and reader.fps == pytest.approx(12) and reader.frame_count == 9
    back = list(reader)
    assert len(back) == 9 and back[0].dtype == np.uint8 and back[0].shape == (48, 64, 3)
    assert np.abs(back[4].astype(int) - frames[4]).mean() < 8  # lossy codec, same picture


def test_bad_files_are_one_line_errors(tmp_path):
    import cv2

    (tmp_path / "text.mp4").write_text("not a video\n")
    (tmp_path / "zero.mp4").write_bytes(b"")
    empty = cv2.VideoWriter(str(tmp_path / "empty.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30, (64, 48))
    empty.release()
    for name in ("missing.mp4", "text.mp4", "zero.mp4", "empty.mp4"):
        with pytest.raises(EdgepruneError, match=f"cannot read video .*{name}") as info:
            open_video(tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(EdgepruneError, match="not a file"):
        open_video(tmp_path)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_leaves_nothing(tmp_path, error):
    (tmp_path / "old.mp4").write_bytes(b"keep")
    with pytest.raises(error):
        with VideoWriter(tmp_path / "old.mp4", 30, (64, 48)) as writer:
            writer.write(gradient_frames(1)[0])
            raise error("stop")
    assert os.listdir(tmp_path) == ["old.mp4"] and (tmp_path / "old.mp4").read_bytes() == b"keep"


def test_writer_errors(tmp_path):
    with pytest.raises(EdgepruneError, match="cannot write video"):
        with VideoWriter(tmp_path / "no" / "such" / "v.mp4", 30, (64, 48)):
            pass
    with pytest.raises(EdgepruneError, match="no frames"):
        with VideoWriter(tmp_path / "v.mp4", 30, (64, 48)):
            pass
    with pytest.raises(ValueError):
        with VideoWriter(tmp_path / "v.mp4", 30, (64, 48)) as writer:
            writer.write(np.zeros((10, 10, 3), np.uint8))
    assert os.listdir(tmp_path) == []

"""Frame sources for the demo: video files (every frame kept), live cameras and streams (stale frames dropped),
and the generated clip.

A live source is anything ``cv2.VideoCapture`` opens that is not a plain file: a camera index
(``--camera 0``), a device path, an RTSP/HTTP URL. A plain video file given as a camera is played
as one, paced at its own frame rate, so the live path (and its frame dropping) can be exercised
without a camera.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

from edgeprune.core.errors import EdgepruneError
from edgeprune.imaging.frames import load_cv2
from edgeprune.video.io import DEFAULT_FPS


@dataclass
class Source:
    """Frames to segment. ``live`` sources drop frames the pipeline is too slow for; ``count`` is None when unknown."""

    name: str
    fps: float
    size: tuple[int, int]  # (width, height)
    frames: Iterable[np.ndarray]
    count: Optional[int]
    live: bool = False
    close: Callable[[], None] = lambda: None


def video_source(path: Path) -> Source:
    from edgeprune.video.io import open_video

    reader = open_video(path)
    return Source(str(path), reader.fps, reader.size, reader, reader.frame_count or None, close=reader.close)


def generated_source(seed: int = 0, frames: int = 300, size: int = 256) -> Source:
    """A synthetic scene clip (rendered at 128x128, upscaled to ``size``), so the demo needs no video file."""
    from edgeprune.data.scenes import SceneConfig, make_clip
    from edgeprune.imaging.frames import resize_frame

    def gen() -> Iterator[np.ndarray]:
        clip, _ = make_clip(seed, frames, SceneConfig(height=128, width=128))
        for f in clip:
            yield resize_frame(f, size, size)

    return Source(f"generated clip (seed {seed})", 30.0, (size, size), gen(), frames)


def camera_source(spec: str) -> Source:
    """Open a live source: a camera index (``"0"``), a device, a URL, or a video file played in real time.

    The first frame is read here, so a source that cannot be opened is one error line before any
    output is created.
    """
    cv2 = load_cv2()
    spec = str(spec).strip()
    if not spec:
        raise EdgepruneError("--camera needs a camera index, device path or URL")
    target: Any = int(spec) if spec.isdigit() else spec
    paced = isinstance(target, str) and Path(spec).is_file()
    capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        capture.release()
        raise EdgepruneError(f"cannot open camera {spec}: OpenCV could not open it (no such device, URL unreachable, or unsupported)")
    ok, bgr = capture.read()
    if not ok or bgr is None:
        capture.release()
        raise EdgepruneError(f"cannot open camera {spec}: it opened but delivered no frame")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    if not np.isfinite(fps) or not 0 < fps < 1000:
        fps = DEFAULT_FPS
    first = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def frames() -> Iterator[np.ndarray]:
        start = time.perf_counter()
        yield first
        index = 1
        while capture.isOpened():
            if paced:  # a file stands in for a camera: deliver frames no faster than they were filmed
                delay = start + index / fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            ok, bgr = capture.read()
            if not ok or bgr is None:
                return
            index += 1
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    return Source(f"camera {spec}", fps, (int(first.shape[1]), int(first.shape[0])), frames(), None, live=True,
                  close=capture.release)


__all__ = ["Source", "camera_source", "generated_source", "video_source"]

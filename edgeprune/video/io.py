"""Video files in and out (OpenCV): RGB frames from any file FFmpeg decodes, and mp4 files that are never half-written.

OpenCV is imported lazily so the rest of edgeprune works without it. A missing, unreadable or empty
video, or a codec this OpenCV build lacks, is one :class:`EdgepruneError` line, raised when the file is
opened (the first frame is decoded up front), not halfway through a run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgeprune.imaging.frames import load_cv2
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import commit_temp, temp_path

DEFAULT_FPS = 30.0


class VideoReader:
    """An open video: ``fps``, ``frame_count`` (the container's count, 0 if unknown), ``size`` (width, height);
    iterating yields RGB uint8 [H, W, 3] frames once, from the start."""

    def __init__(self, path: Path, capture: Any, first: np.ndarray, fps: float, frame_count: int) -> None:
        self.path = path
        self.fps = fps
        self.frame_count = frame_count
        self.size = (int(first.shape[1]), int(first.shape[0]))
        self._capture: Optional[Any] = capture
        self._first: Optional[np.ndarray] = first

    def __iter__(self) -> Iterator[np.ndarray]:
        cv2 = load_cv2()
        if self._first is None:
            raise EdgepruneError(f"video {self.path} was already read")
        first, self._first = self._first, None
        yield first
        while self._capture is not None:
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                break
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        self.close()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_video(path: str | os.PathLike) -> VideoReader:
    """Open ``path`` and decode its first frame, so every defect shows up here as one error line."""
    cv2 = load_cv2()
    path = Path(path)
    if not path.exists():
        raise EdgepruneError(f"cannot read video {path}: no such file")
    if not path.is_file():
        raise EdgepruneError(f"cannot read video {path}: not a file")
    if path.stat().st_size == 0:
        raise EdgepruneError(f"cannot read video {path}: the file is empty")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise EdgepruneError(f"cannot read video {path}: OpenCV cannot open it (not a video, a codec this build lacks, or no frames)")
    count = int(max(0.0, capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0))
    ok, bgr = capture.read()
    if not ok or bgr is None:
        capture.release()
        why = "no frame could be decoded (missing codec?)" if count > 0 else "the video has no frames"
        raise EdgepruneError(f"cannot read video {path}: {why}")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    if not np.isfinite(fps) or not 0 < fps < 1000:
        fps = DEFAULT_FPS
    return VideoReader(path, capture, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), fps, count)


class VideoWriter:
    """Write RGB frames to an mp4 (``mp4v``) via a temp file beside ``path``, renamed into place on success.

    On an error or KeyboardInterrupt inside the ``with`` block the temp file is finalised and deleted,
    so ``path`` is either the complete video or untouched.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.size = (int(size[0]), int(size[1]))  # (width, height)
        self.frames = 0
        self._tmp: Optional[str] = None
        self._writer: Optional[Any] = None

    def __enter__(self) -> "VideoWriter":
        cv2 = load_cv2()
        w, h = self.size
        if w < 2 or h < 2:
            raise EdgepruneError(f"cannot write video {self.path}: frame size {w}x{h} is too small")
        try:
            self._tmp = str(temp_path(self.path, suffix=".tmp.mp4"))  # streamed into, renamed on success
        except EdgepruneError as exc:
            raise EdgepruneError(f"cannot write video {self.path}: {str(exc).rsplit(': ', 1)[-1]}") from None
        self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
        if not self._writer.isOpened():
            self._discard()
            raise EdgepruneError(f"cannot write video {self.path}: this OpenCV build has no mp4v encoder")
        return self

    def write(self, frame_rgb: np.ndarray) -> None:
        """Append one RGB uint8 [H, W, 3] frame of exactly the writer's size."""
        cv2 = load_cv2()
        w, h = self.size
        if frame_rgb.shape != (h, w, 3) or frame_rgb.dtype != np.uint8:
            raise ValueError(f"expected uint8 [{h}, {w}, 3], got {frame_rgb.dtype} {list(frame_rgb.shape)}")
        if self._writer is None:
            raise RuntimeError("VideoWriter is not open; use it as a context manager")
        self._writer.write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def _discard(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        self._tmp = None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self._discard()
            return
        assert self._writer is not None and self._tmp is not None
        self._writer.release()
        self._writer = None
        if self.frames == 0 or os.path.getsize(self._tmp) == 0:
            self._discard()
            raise EdgepruneError(f"cannot write video {self.path}: no frames were written")
        tmp, self._tmp = self._tmp, None
        try:
            commit_temp(tmp, self.path)  # fsync, rename, fsync the folder; removes tmp on failure
        except EdgepruneError as exc:
            raise EdgepruneError(f"cannot write video {self.path}: {str(exc).rsplit(': ', 1)[-1]}") from None


def draw_hud(image: np.ndarray, lines: list[tuple[str, tuple[int, int, int]]]) -> None:
    """A dark box with text lines at the top left, drawn in place (RGB colours)."""
    cv2 = load_cv2()
    h = image.shape[0]
    scale = max(0.35, h / 600)
    thick = 1 if scale < 0.8 else 2
    sizes = [cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick) for text, _ in lines]
    line_h = max(s[0][1] + s[1] for s in sizes) + int(6 * scale)
    pad = int(6 * scale) + 2
    bw = min(image.shape[1], max(s[0][0] for s in sizes) + 2 * pad)
    bh = min(h, line_h * len(lines) + pad)
    roi = image[:bh, :bw]
    roi[:] = (roi.astype(np.uint16) * 2 // 5).astype(np.uint8)
    for k, (text, colour) in enumerate(lines):
        cv2.putText(image, text, (pad, pad + line_h * k + sizes[k][0][1]), cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                    thick, cv2.LINE_AA)


__all__ = ["DEFAULT_FPS", "VideoReader", "VideoWriter", "draw_hud", "open_video"]

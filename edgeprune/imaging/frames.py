"""Per-frame pre- and post-processing at library speed: resize in, labels out, colour overlay.

Every video frame passes through here, so nothing loops over pixels in Python:

* :func:`resize_frame` — RGB uint8 to the model's input size with OpenCV. Shrinking is a two-stage
  area average: an integer-factor box average first (OpenCV's fast path, ~0.3 ms for 1080p), then
  an area resize of the small remainder; together ~1 ms where one fractional area resize of a 1080p
  frame costs ~7 ms. The native library (``native/``) reproduces it bit for bit.
* :func:`labels_exact` — the reference: bilinear upsampling of every class plane (torch's
  ``align_corners=False`` sampling), then argmax. Slow at video sizes (~125 ms at 1080p, 7 classes).
* :func:`labels_fast` — the same labels, computed only where they can differ from the cell's own
  label: inside a cell whose four source pixels agree on the argmax, every bilinear blend of them
  has that argmax too (a convex combination keeps each pairwise order), so those pixels are filled
  from the low-resolution argmax; the mixed cells are interpolated exactly, in the reference's
  float32 operation order. Identical to the reference except at exact float ties.
* :func:`overlay_fast` — class colours blended into the frame with one OpenCV weighted sum.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from edgeprune.core.errors import EdgepruneError


def load_cv2() -> Any:
    """OpenCV, imported on first use (a one-line error naming the package when it is missing)."""
    # FFmpeg and OpenCV otherwise print their own multi-line complaints next to our one-line error.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        import cv2  # deferred on purpose: importing OpenCV costs ~0.2 s that plans and artifacts never need
    except ImportError:
        raise EdgepruneError("video needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> [height, width, 3]: two-stage area average when shrinking, bilinear otherwise.

    Stage 1 averages integer ``kx`` x ``ky`` boxes (the largest factors that keep at least twice
    the target size; the last ``W % kx`` columns and ``H % ky`` rows are dropped, under one box);
    stage 2 is OpenCV's area resize of that to the target size.
    """
    h_in, w_in = frame.shape[:2]
    if (h_in, w_in) == (height, width):
        return frame
    cv2 = load_cv2()
    if h_in >= height and w_in >= width:
        kx, ky = max(1, w_in // (2 * width)), max(1, h_in // (2 * height))
        if kx > 1 or ky > 1:
            w1, h1 = w_in // kx, h_in // ky
            frame = cv2.resize(frame[:ky * h1, :kx * w1], (w1, h1), interpolation=cv2.INTER_AREA)
        return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Same sampling as torch's interpolate(mode="bilinear", align_corners=False).
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _check_logits(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float32)
    if logits.ndim != 3:
        raise EdgepruneError(f"logits must be [K, h, w], got shape {list(logits.shape)}")
    if logits.shape[0] > 256:
        raise EdgepruneError(f"{logits.shape[0]} classes do not fit an 8-bit label image")
    return logits


def labels_exact(logits: np.ndarray, height: int, width: int, band: int = 256) -> np.ndarray:
    """Logits [K, h, w] -> uint8 labels [height, width]: bilinear upsampling, then argmax (the reference).

    Done in row bands so a large frame never holds K full-resolution float planes at once.
    """
    logits = _check_logits(logits)
    x0, x1, wx = _bilinear_taps(logits.shape[2], width)
    rows = logits[:, :, x0] * (1 - wx) + logits[:, :, x1] * wx  # [K, h, width]
    y0, y1, wy = _bilinear_taps(logits.shape[1], height)
    labels = np.empty((height, width), np.uint8)
    for start in range(0, height, band):
        sl = slice(start, min(height, start + band))
        a = wy[sl, None]
        labels[sl] = np.argmax(rows[:, y0[sl]] * (1 - a) + rows[:, y1[sl]] * a, axis=0)
    return labels


@dataclass(frozen=True)
class _Axis:
    """One axis of an upsampling: taps per output pixel, and the run of output pixels of each source cell."""

    i0: np.ndarray
    i1: np.ndarray
    weight: np.ndarray
    start: np.ndarray  # [n_in] first output index whose i0 is this source index
    count: np.ndarray  # [n_in] how many output indices have it (0 for none)


@lru_cache(maxsize=16)
def _axis(n_in: int, n_out: int) -> _Axis:
    i0, i1, w = _bilinear_taps(n_in, n_out)
    count = np.bincount(i0, minlength=n_in)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    for a in (i0, i1, w):
        a.setflags(write=False)
    return _Axis(i0, i1, w, start, count)


def labels_fast(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Logits [K, h, w] -> uint8 labels [height, width], equal to :func:`labels_exact` up to float ties."""
    logits = _check_logits(logits)
    k, h, w = logits.shape
    ay, ax = _axis(h, height), _axis(w, width)
    low = np.argmax(logits, axis=0).astype(np.uint8)
    labels = np.repeat(np.repeat(low, ay.count, axis=0), ax.count, axis=1)  # each pixel: its cell's label
    # Cell (i, j) blends source rows i, i+1 and columns j, j+1 (clamped at the far edges).
    down = np.concatenate([low[1:], low[-1:]], axis=0)
    right = np.concatenate([low[:, 1:], low[:, -1:]], axis=1)
    diag = np.concatenate([down[:, 1:], down[:, -1:]], axis=1)
    ci, cj = np.nonzero((low != down) | (low != right) | (low != diag))
    keep = (ay.count[ci] > 0) & (ax.count[cj] > 0)
    ci, cj = ci[keep], cj[keep]
    if ci.size == 0:
        return labels
    bi, bj = np.minimum(ci + 1, h - 1), np.minimum(cj + 1, w - 1)
    corners = logits[:, np.stack([ci, ci, bi, bi]), np.stack([cj, bj, cj, bj])]  # [K, 4, N]
    # Class c can win somewhere in a cell only if its best corner reaches the best worst-corner
    # value of any class: every blend stays within its corners' range. Mostly two remain.
    candidate = corners.max(axis=1) >= corners.min(axis=1).max(axis=0)  # [K, N]
    pair = candidate.sum(axis=0) == 2
    # Every mixed cell as a padded block of output pixels; padding repeats a cell's last row/column,
    # so padded entries write the same value twice instead of needing a mask.
    rows = ay.start[ci, None] + np.minimum(np.arange(ay.count.max()), ay.count[ci, None] - 1)  # [N, R]
    cols = ax.start[cj, None] + np.minimum(np.arange(ax.count.max()), ax.count[cj, None] - 1)  # [N, C]
    if pair.any():
        first = np.argmax(candidate[:, pair], axis=0)
        second = k - 1 - np.argmax(candidate[::-1, pair], axis=0)
        values = _blend(logits, np.stack([first, second]), ci[pair], bi[pair], rows[pair], cols[pair], ax, ay)
        # argmax keeps the first of equal values: the higher class wins only when strictly larger.
        chosen = np.where(values[1] > values[0], second[:, None, None], first[:, None, None])
        np.put(labels, (rows[pair] * width)[:, :, None] + cols[pair][:, None, :], chosen)
    rest = ~pair
    if rest.any():
        every_class = np.broadcast_to(np.arange(k)[:, None], (k, int(rest.sum())))
        values = _blend(logits, every_class, ci[rest], bi[rest], rows[rest], cols[rest], ax, ay)
        np.put(labels, (rows[rest] * width)[:, :, None] + cols[rest][:, None, :], np.argmax(values, axis=0))
    return labels


def _blend(logits: np.ndarray, classes: np.ndarray, top_row: np.ndarray, bottom_row: np.ndarray, rows: np.ndarray,
           cols: np.ndarray, ax: _Axis, ay: _Axis) -> np.ndarray:
    """Bilinear values [M, N, R, C] of ``classes`` [M, N] for N cells with source rows ``top_row`` and
    ``bottom_row``, at output ``rows`` [N, R] x ``cols`` [N, C], in :func:`labels_exact`'s float32 operation order."""
    c, wx = classes[:, :, None], ax.weight[cols]
    x0, x1 = ax.i0[cols], ax.i1[cols]
    top = logits[c, top_row[:, None], x0] * (1 - wx) + logits[c, top_row[:, None], x1] * wx  # [M, N, C]
    bottom = logits[c, bottom_row[:, None], x0] * (1 - wx) + logits[c, bottom_row[:, None], x1] * wx
    a = ay.weight[rows][None, :, :, None]
    return top[:, :, None, :] * (1 - a) + bottom[:, :, None, :] * a


def overlay_fast(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` blended with each pixel's class colour, (1 - alpha) * image + alpha * colour, rounded."""
    cv2 = load_cv2()
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    table = np.zeros((256, 3), np.uint8)
    table[:len(palette)] = palette
    colours = cv2.merge([cv2.LUT(labels, table[:, c]) for c in range(3)])
    return cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0.0)


__all__ = ["labels_exact", "labels_fast", "overlay_fast", "resize_frame"]

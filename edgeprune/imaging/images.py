"""Image files in and out for dense predictions: strict RGB reading, resizing, overlays, atomic PNGs.

Channel rule of :func:`read_rgb` (a model sees exactly three colour channels, and guessing how to
turn anything else into them silently changes what it sees):

* ``RGB`` is used as is; ``RGBX`` (padding byte) and ``YCbCr`` are converted to RGB losslessly;
  palette (``P``) images are expanded through their palette.
* ``RGBA``/``RGBa``/``PA`` and palette images with a transparent entry are accepted only when
  every pixel is fully opaque (then the alpha carries no information and is dropped).
* Anything else (``L``, ``1``, ``LA``, ``I``, ``I;16``, ``F``, ``CMYK``, ``LAB``, ``HSV``, and
  images with real transparency) is an error naming the mode and its channel count.

EXIF orientation is applied, so outputs line up with the image as viewers show it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
import numpy as np
from PIL import Image, ImageOps

from edgeprune.core.errors import EdgepruneError, first_line
from edgeprune.core.files import write_atomic

_CONVERT_TO_RGB = ("RGBX", "YCbCr")
_ALPHA_MODES = ("RGBA", "RGBa", "PA")


def _bands(mode: str) -> str:
    try:
        n = Image.getmodebands(mode)
    except (KeyError, ValueError):
        return "unknown channel count"
    return f"{n} channel{'s' if n != 1 else ''}"


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` fully to uint8 RGB [H, W, 3] under the module's channel rule.

    Decoding happens here (not lazily) so a truncated file fails now, before anything is written.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            mode = img.mode
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif mode in _CONVERT_TO_RGB:
                img = img.convert("RGB")
            if img.mode in _ALPHA_MODES:
                rgba = img.convert("RGBA")
                if rgba.getchannel("A").getextrema()[0] < 255:
                    raise EdgepruneError(
                        f"image {path} has transparent pixels (mode {mode}); the model expects 3-channel RGB: "
                        "flatten it onto a background first")
                img = rgba.convert("RGB")
            if img.mode != "RGB":
                raise EdgepruneError(f"image {path} has mode {mode} ({_bands(mode)}); the model expects 3-channel RGB")
            return np.asarray(img, dtype=np.uint8).copy()
    except EdgepruneError:
        raise
    except FileNotFoundError:
        raise EdgepruneError(f"cannot read image {path}: no such file") from None
    except IsADirectoryError:
        raise EdgepruneError(f"cannot read image {path}: is a directory") from None
    except Exception as exc:  # Pillow reports corrupt data as OSError, SyntaxError, ValueError, zlib.error...
        reason = "not a recognised image format" if isinstance(exc, Image.UnidentifiedImageError) else first_line(exc)
        raise EdgepruneError(f"cannot read image {path}: {reason}") from None


def read_image_as(path: str | os.PathLike, mode: str = "L", what: str = "image") -> np.ndarray:
    """Decode ``path`` to uint8 converted to Pillow ``mode`` (``L``: one grey channel, ITU-R 601 luma),
    EXIF orientation applied; calibration readers use it where :func:`read_rgb`'s channel rule does
    not apply (grey models). ``what`` names the image in the one-line error."""
    try:
        with Image.open(path) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert(mode), dtype=np.uint8).copy()
    except Exception as exc:  # Pillow reports corrupt data as OSError, SyntaxError, ValueError...
        raise EdgepruneError(f"cannot read {what} {path}: {first_line(exc)}") from None


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 RGB to a model's input size: area average when shrinking (no aliasing), bilinear
    otherwise; see :func:`edgeprune.imaging.frames.resize_frame`, which the native library reproduces exactly."""
    from edgeprune.imaging.frames import resize_frame

    return resize_frame(image, height, width)


def upsample_argmax(logits: np.ndarray, height: int, width: int, band: int = 256) -> np.ndarray:
    """Logits [K, h, w] -> uint8 labels [height, width]: bilinear upsampling then argmax (the exact reference,
    :func:`edgeprune.imaging.frames.labels_exact`; :func:`edgeprune.imaging.frames.labels_fast` gives the same labels faster)."""
    from edgeprune.imaging.frames import labels_exact

    return labels_exact(logits, height, width, band)


def default_palette(num_classes: int) -> np.ndarray:
    """The scene palette for its 7 classes, then well-separated hues; for models without one."""
    from edgeprune.data import PALETTE

    colours = [tuple(c) for c in PALETTE[:num_classes]]
    golden = 0.618033988749895
    for i in range(len(colours), num_classes):
        h = (i * golden) % 1.0
        colours.append(tuple(int(255 * c) for c in _hsv(h, 0.75, 0.95)))
    return np.asarray(colours, np.uint8).reshape(num_classes, 3)


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(h, s, v)


def palette_array(palette: Sequence[Sequence[int]] | None, num_classes: int) -> np.ndarray:
    """A [K, 3] uint8 palette from a model's metadata, or :func:`default_palette` when unusable."""
    try:
        arr = np.asarray(palette, dtype=np.int64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (num_classes, 3) or arr.min() < 0 or arr.max() > 255:
        return default_palette(num_classes)
    return arr.astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` blended with each pixel's class colour: (1 - alpha) * image + alpha * colour."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    result = np.empty(image.shape[:2] + (3,), np.uint8)
    for start in range(0, image.shape[0], 256):  # bands keep float copies of a large photo small
        sl = slice(start, start + 256)
        mixed = image[sl].astype(np.float32) * (1 - alpha) + palette[labels[sl]].astype(np.float32) * alpha
        result[sl] = np.clip(mixed + 0.5, 0, 255)
    return result


def class_fractions(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of pixels per class id, [num_classes] float64."""
    counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    return counts / max(1, labels.size)


def save_png_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save uint8 [H, W] (mode L) or [H, W, 3] (mode RGB) as PNG, atomically."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected uint8 [H, W] or [H, W, 3], got {array.dtype} {array.shape}")
    img = Image.fromarray(np.ascontiguousarray(array))  # uint8 2-D -> L, [H, W, 3] -> RGB
    write_atomic(path, lambda tmp: img.save(tmp, format="PNG"))


__all__ = ["class_fractions", "default_palette", "overlay", "palette_array", "read_rgb", "resize_rgb",
           "save_png_atomic", "upsample_argmax", "write_atomic"]

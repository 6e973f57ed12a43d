"""Calibration images for int8 quantization (``edgeprune quantize --calib``), turned into model inputs.

``--calib`` names one of:

* a folder of images (png, jpg, ...; subfolders included), read with the runtime's strict RGB rule
  (:func:`edgeprune.imaging.images.read_rgb`) for colour models;
* a video file: frames spread evenly over the whole clip;
* an IDX image file (MNIST, Fashion-MNIST: ``*-images-idx3-ubyte[.gz]``) or a folder of them (its
  train split when it has one, else its test split).

Folders and IDX files give a seeded random choice of ``count`` images (:func:`choose`), so a rerun
sees the same pixels. Each image becomes the model input the way :meth:`edgeprune.runtime.Runtime.preprocess`
makes one from a frame: resized to the artifact's input size (:func:`edgeprune.imaging.images.resize_rgb`),
scaled to 0..1 and standardised with the manifest's ``model.input`` mean and std
(:func:`edgeprune.imaging.evaluation.normalize`). A grey image fed to a colour model is replicated to
three channels and a colour image fed to a grey model becomes ITU-R 601 luma (PIL's "L").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress, advance

CALIB_NEEDED = "--precision int8 / quantize needs calibration data: --calib DIR"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
IDX_MARK = "-images-idx3-ubyte"
SELECTION_SEED = 0


@dataclass
class CalibrationImages:
    """uint8 images ([H, W] grey or [H, W, 3] RGB) and where they came from, for the manifest."""

    source: Path
    kind: str  # "images" | "video" | "idx"
    images: list[np.ndarray]
    available: int  # images (or frames) the source holds
    selection: str
    extra: list[np.ndarray] = field(default_factory=list)  # up to a few more, disjoint: the int8 check

    def describe(self) -> dict[str, Any]:
        return {"source": str(self.source.resolve()), "kind": self.kind, "samples": len(self.images),
                "available": self.available, "selection": self.selection}


def choose(available: int, count: int) -> np.ndarray:
    """Indices of the images a calibration uses: the first ``count`` of a seeded permutation."""
    return np.random.default_rng(SELECTION_SEED).permutation(available)[:count]


def read_calibration(source: Optional[str | Path], count: int, channels: int, extra: int = 0,
                     size: Optional[tuple[int, int]] = None, progress: Optional[Progress] = None) -> CalibrationImages:
    """``count`` calibration images from ``source`` (and up to ``extra`` more, disjoint from them),
    each brought to ``size`` (height, width) as it is read when given, so that hundreds of camera
    frames take the memory of model inputs (:func:`model_input` then leaves them as they are)."""
    if source is None or str(source) == "":
        raise EdgepruneError(CALIB_NEEDED)
    if count < 1:
        raise EdgepruneError(f"--samples must be at least 1, got {count}")
    path = Path(source)
    if not path.exists():
        raise EdgepruneError(f"calibration data {path} does not exist ({CALIB_NEEDED})")
    fit = _fitter(size)
    if path.is_file() and IDX_MARK in path.name:
        return _from_idx(path, count, extra)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return _from_video(path, count, extra, channels, fit, progress)
    if path.is_file():
        raise EdgepruneError(f"calibration data {path}: --calib takes a folder of images, a video file "
                             f"({', '.join(VIDEO_SUFFIXES)}) or an IDX image file (*{IDX_MARK}[.gz])")
    from edgeprune.data.idx import is_idx_folder

    if is_idx_folder(path):
        return _from_idx_folder(path, count, extra)
    return _from_folder(path, count, extra, channels, fit, progress)


def _fitter(size: Optional[tuple[int, int]]) -> Callable[[np.ndarray], np.ndarray]:
    """The runtime's resize to ``size`` (identity when None or already that size)."""
    from edgeprune.imaging.images import resize_rgb

    if size is None:
        return lambda image: image
    return lambda image: image if image.shape[:2] == tuple(size) else resize_rgb(image, *size)


def _from_folder(folder: Path, count: int, extra: int, channels: int, fit: Callable[[np.ndarray], np.ndarray],
                 progress: Optional[Progress]) -> CalibrationImages:
    try:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as exc:
        raise EdgepruneError(f"cannot read calibration folder {folder}: {exc.strerror or exc}") from None
    if not files:
        raise EdgepruneError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}), "
                             f"video or IDX files")
    picked = choose(len(files), count + extra)
    images = []
    for i, index in enumerate(picked):
        images.append(fit(_read_image(files[index], channels)))
        advance(progress, i + 1, len(picked), "reading calibration images")
    return CalibrationImages(folder, "images", images[:count], len(files),
                             f"{min(count, len(files))} of {len(files)} files, seeded permutation (seed {SELECTION_SEED})",
                             images[count:])


def _read_image(path: Path, channels: int) -> np.ndarray:
    if channels == 3:
        from edgeprune.imaging.images import read_rgb

        return read_rgb(path)  # the runtime's channel rule: RGB, or refused in one line
    from edgeprune.imaging.images import read_image_as

    return read_image_as(path)


def _from_idx(path: Path, count: int, extra: int) -> CalibrationImages:
    from edgeprune.data.idx import read_idx

    return _idx_images(path, read_idx(path, 3), count, extra)


def _from_idx_folder(folder: Path, count: int, extra: int) -> CalibrationImages:
    from edgeprune.data.idx import SPLITS, available_splits, read_idx

    split = "train" if "train" in available_splits(folder) else "test"
    stem = f"{SPLITS[split]}{IDX_MARK}"
    path = next(p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file())
    return _idx_images(path, read_idx(path, 3), count, extra)


def _idx_images(path: Path, data: np.ndarray, count: int, extra: int) -> CalibrationImages:
    if len(data) == 0:
        raise EdgepruneError(f"calibration data {path} holds no images")
    picked = choose(len(data), count + extra)
    return CalibrationImages(path, "idx", [data[i] for i in picked[:count]], len(data),
                             f"{min(count, len(data))} of {len(data)} images of {path.name}, seeded permutation "
                             f"(seed {SELECTION_SEED})", [data[i] for i in picked[count:]])


def _from_video(path: Path, count: int, extra: int, channels: int, fit: Callable[[np.ndarray], np.ndarray],
                progress: Optional[Progress]) -> CalibrationImages:
    """Frames spread evenly over the clip, and the ``extra`` ones evenly among the others. Two passes:
    the first counts the frames (containers' counts are estimates), the second keeps only those picked."""
    from edgeprune.imaging.frames import load_cv2

    cv2 = load_cv2()
    total = sum(1 for _ in _frames(cv2, path, progress, "counting the calibration video's frames", decode=False))
    if total == 0:
        raise EdgepruneError(f"cannot read video {path}: no frame could be decoded")
    picked = np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))
    rest = np.setdiff1d(np.arange(total), picked)
    spare = rest[np.unique(np.linspace(0, len(rest) - 1, min(extra, len(rest))).round().astype(int))] if len(rest) else rest
    wanted = set(picked.tolist()) | set(spare.tolist())
    code = cv2.COLOR_BGR2GRAY if channels == 1 else cv2.COLOR_BGR2RGB
    kept = {i: fit(cv2.cvtColor(bgr, code)) for i, bgr in _frames(cv2, path, progress, "reading the calibration frames", wanted)}
    return CalibrationImages(path, "video", [kept[i] for i in picked if i in kept], total,
                             f"{len(picked)} of {total} frames, evenly spaced", [kept[i] for i in spare if i in kept])


def _frames(cv2: Any, path: Path, progress: Optional[Progress], message: str, wanted: Optional[set[int]] = None,
            decode: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """(index, BGR frame) of the ``wanted`` frames (all when None; only counted when not ``decode``)."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise EdgepruneError(f"cannot read video {path}: OpenCV cannot open it (not a video, or a codec this build lacks)")
        index = 0
        while capture.grab():
            if decode and (wanted is None or index in wanted):
                ok, bgr = capture.retrieve()
                if not ok or bgr is None:
                    raise EdgepruneError(f"cannot read video {path}: frame {index} could not be decoded")
                yield index, bgr
            elif not decode:
                yield index, None
            index += 1
            advance(progress, index, None, message)
    finally:
        capture.release()


def input_spec(manifest: dict[str, Any]) -> tuple[list[int], list[float], list[float]]:
    """(input shape [B, C, H, W] at batch 1, mean, std) of an artifact; one line when normalisation is missing."""
    shape = list(manifest["inputs"][0]["shape"])
    if not isinstance(shape[0], int):
        shape[0] = 1
    info = (manifest.get("model") or {}).get("input") or {}
    if "mean" not in info or "std" not in info:
        raise EdgepruneError("the artifact's manifest records no input normalisation (model.input mean and std), "
                             "so calibration images cannot be fed as the runtime feeds them; pass --mean and --std")
    return shape, _channel_values(info["mean"]), _channel_values(info["std"])


def _channel_values(value: Any) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


def model_input(image: np.ndarray, shape: list[int], mean: list[float], std: list[float]) -> np.ndarray:
    """One uint8 image -> the model input [1, C, H, W] float32, as the runtime prepares a frame."""
    from edgeprune.imaging.evaluation import normalize
    from edgeprune.imaging.images import resize_rgb

    _, channels, height, width = shape
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] != channels:
        image = np.repeat(image, channels, axis=-1) if image.shape[-1] == 1 else _luma(image)
    if image.shape[:2] != (height, width):
        resized = resize_rgb(image[..., 0] if channels == 1 else image, height, width)
        image = resized.reshape(height, width, channels)
    return normalize(image[None], mean, std)


def _luma(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).convert("L"))[..., None]  # ITU-R 601, as _read_image's grey files


def batched_inputs(images: list[np.ndarray], shape: list[int], mean: list[float], std: list[float]) -> list[np.ndarray]:
    """Model inputs for ``images`` at the artifact's batch: consecutive images share a batch; a last,
    short batch is filled up with the first images again."""
    singles = [model_input(im, shape, mean, std) for im in images]
    batch = shape[0]
    if batch == 1 or not singles:
        return singles
    padded = [singles[i % len(singles)] for i in range(-(-len(singles) // batch) * batch)]
    return [np.concatenate(padded[i:i + batch]) for i in range(0, len(padded), batch)]

"""Calibration and hold-out images for ``edgeprune tune``: an image folder or an IDX dataset, split
into two disjoint parts and preprocessed the way the model was trained.

* A folder with one subfolder per class: labels are the sorted subfolder names' indices.
* A flat folder of images: no labels; agreement with the unreduced model is then the score.
* A folder of IDX files (MNIST, Fashion-MNIST): its ``train`` split feeds calibration and its
  ``test`` split the hold-out when both exist; with one split, a seeded permutation divides it.

Images are resized (shorter side to the model's size, then a centre crop) or centre-padded
(``fit="pad"``), converted to the model's channel count (grey is replicated; colour to grey uses
ITU-R 601 luma), scaled to 0..1 and standardised per channel.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from edgeprune.data.idx import available_splits, is_idx_folder, load_idx_split
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress, say

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
FITS = ("resize", "pad")
SPLIT_SEED = 0


@dataclass
class ImageSet:
    """Preprocessed images [N, C, H, W] float32 and labels [N] (None when unlabelled)."""

    images: torch.Tensor
    labels: Optional[torch.Tensor]
    description: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def fingerprint(self) -> str:
        """Content hash: a resumed search must see exactly the same pixels and labels."""
        h = hashlib.sha256(self.images.numpy().tobytes())
        if self.labels is not None:
            h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class Preprocess:
    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fit: str = "resize"

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise EdgepruneError(f"unknown fit '{self.fit}' (one of {', '.join(FITS)})")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise EdgepruneError(f"--{name} needs 1 or {self.channels} values for this model, got {len(values)}")
        if any(s <= 0 for s in self.std):
            raise EdgepruneError(f"--std values must be positive, got {list(self.std)}")

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [N, H, W] or [N, H, W, 3] at the model's size -> normalised float32 [N, C, H, W]."""
        x = images.astype(np.float32) / 255.0
        if x.ndim == 3:
            x = x[..., None]
        if x.shape[-1] != self.channels:
            x = np.repeat(x, self.channels, axis=-1) if x.shape[-1] == 1 else (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        mean = np.broadcast_to(np.asarray(self.mean, np.float32), (self.channels,))
        std = np.broadcast_to(np.asarray(self.std, np.float32), (self.channels,))
        x = (x - mean) / std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def fit_image(self, image: np.ndarray) -> np.ndarray:
        """One uint8 image [H, W] or [H, W, 3] brought to the model's size."""
        h, w = self.size
        if image.shape[:2] == (h, w):
            return image
        if self.fit == "pad":
            ih, iw = image.shape[:2]
            if ih > h or iw > w:
                raise EdgepruneError(f"--fit pad: a {ih}x{iw} image does not fit the model's {h}x{w} input")
            out = np.zeros((h, w, *image.shape[2:]), np.uint8)
            top, left = (h - ih) // 2, (w - iw) // 2
            out[top : top + ih, left : left + iw] = image
            return out
        from PIL import Image

        pil = Image.fromarray(image)
        scale = max(h / image.shape[0], w / image.shape[1])
        rh, rw = max(h, round(image.shape[0] * scale)), max(w, round(image.shape[1] * scale))
        pil = pil.resize((rw, rh), Image.BILINEAR)
        top, left = (rh - h) // 2, (rw - w) // 2
        return np.asarray(pil.crop((left, top, left + w, top + h)))


def _read_image(path: Path, channels: int) -> np.ndarray:
    from edgeprune.imaging.images import read_image_as

    return read_image_as(path, "L" if channels == 1 else "RGB", "calibration image")


def _folder_items(folder: Path) -> tuple[list[Path], Optional[list[int]], str]:
    """Image paths and labels (class subfolders) or None (flat)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise EdgepruneError(f"cannot read calibration folder '{folder}': {exc.strerror or exc}") from None
    classes = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    if classes:
        paths, labels = [], []
        for index, cls in enumerate(classes):
            files = sorted(p for p in cls.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += files
            labels += [index] * len(files)
        kind = f"{len(classes)} classes ({', '.join(c.name for c in classes[:5])}{', ...' if len(classes) > 5 else ''})"
        return paths, labels, kind
    files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return files, None, "unlabelled"


def _permutation(n: int) -> np.ndarray:
    return np.random.default_rng(SPLIT_SEED).permutation(n)


def load_calibration(source: Union[str, Path], preprocess: Preprocess, count: int, holdout: int,
                     progress: Optional[Progress] = None) -> tuple[ImageSet, Optional[ImageSet]]:
    """``count`` calibration images and up to ``holdout`` disjoint hold-out images (0: none; -1: all
    the rest, or the whole test split of an IDX dataset)."""
    folder = Path(source)
    if not folder.is_dir():
        raise EdgepruneError(f"calibration source '{folder}' is not a folder (an image folder or an IDX dataset folder)")
    if count < 1:
        raise EdgepruneError(f"--calib-count must be at least 1, got {count}")
    if is_idx_folder(folder):
        return _load_idx(folder, preprocess, count, holdout, progress)
    paths, labels, kind = _folder_items(folder)
    if not paths:
        raise EdgepruneError(f"calibration folder '{folder}' has no images ({', '.join(IMAGE_SUFFIXES)}) and no IDX files")
    order = _permutation(len(paths))
    calib_idx = order[:count]
    rest = order[count:]
    hold_idx = rest if holdout < 0 else rest[:holdout]
    say(progress, f"reading {len(calib_idx) + len(hold_idx)} images from {folder}")

    def build(indices: Sequence[int], part: str) -> ImageSet:
        images = np.stack([preprocess.fit_image(_read_image(paths[i], preprocess.channels)) for i in indices])
        y = torch.tensor([labels[i] for i in indices], dtype=torch.int64) if labels is not None else None
        return ImageSet(preprocess(images), y, f"{folder} ({kind}): {part} {len(indices)} of {len(paths)}")

    calib = build(calib_idx, "calibration")
    return calib, (build(hold_idx, "hold-out") if len(hold_idx) else None)


def _load_idx(folder: Path, preprocess: Preprocess, count: int, holdout: int,
              progress: Optional[Progress]) -> tuple[ImageSet, Optional[ImageSet]]:
    splits = available_splits(folder)
    say(progress, f"reading IDX splits {', '.join(splits)} from {folder}")

    def build(images: np.ndarray, labels: np.ndarray, what: str) -> ImageSet:
        fitted = np.stack([preprocess.fit_image(im) for im in images]) if images.shape[1:3] != preprocess.size else images
        return ImageSet(preprocess(fitted), torch.from_numpy(labels.copy()), f"{folder}: {what}")

    if "train" in splits and "test" in splits:
        tx, ty = load_idx_split(folder, "train")
        order = _permutation(len(tx))[:count]
        calib = build(tx[order], ty[order], f"calibration {len(order)} of the train split ({len(tx)})")
        if holdout == 0:
            return calib, None
        hx, hy = load_idx_split(folder, "test")
        n = len(hx) if holdout < 0 else min(holdout, len(hx))
        return calib, build(hx[:n], hy[:n], f"hold-out: the first {n} of the test split ({len(hx)})")
    x, y = load_idx_split(folder, splits[0])
    order = _permutation(len(x))
    calib_idx, rest = order[:count], order[count:]
    hold_idx = rest if holdout < 0 else rest[:holdout]
    calib = build(x[calib_idx], y[calib_idx], f"calibration {len(calib_idx)} of the {splits[0]} split ({len(x)}), seeded permutation")
    if not len(hold_idx):
        return calib, None
    return calib, build(x[hold_idx], y[hold_idx], f"hold-out: the other {len(hold_idx)} of the {splits[0]} split")

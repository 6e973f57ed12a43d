"""CamVid (the SegNet split): real driving frames with 11 classes, read from ``../shared/data/camvid``.

Layout: ``{train,val,test}/{images,labels}/<sequence>_<frame>.png``; images RGB 240x180, labels
uint8 class ids with 11 = unlabelled (ignored in training and in every IoU here). File names keep
the sequence and the frame number, so :func:`sequences` gives frames in time order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from edgeprune.core.errors import EdgepruneError

CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist")
IGNORE = 11
SPLITS = ("train", "val", "test")
# The palette CamVid's own label images use (SegNet's colouring), so overlays look familiar.
PALETTE = np.array([
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (0, 0, 192), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)], np.uint8)


def default_root() -> Path:
    """``$EDGEPRUNE_CAMVID`` if set, else ``shared/data/camvid`` beside the repository."""
    env = os.environ.get("EDGEPRUNE_CAMVID")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid"


def split_files(split: str, root: Optional[Path] = None) -> list[str]:
    """Frame names (no extension) of one split, sorted: sequence, then frame number."""
    if split not in SPLITS:
        raise EdgepruneError(f"unknown CamVid split '{split}' (choose from {', '.join(SPLITS)})")
    folder = Path(root or default_root()) / split / "images"
    if not folder.is_dir():
        raise EdgepruneError(f"CamVid split folder {folder} does not exist (set EDGEPRUNE_CAMVID to the dataset root)")
    names = sorted(p.stem for p in folder.glob("*.png"))
    if not names:
        raise EdgepruneError(f"CamVid split folder {folder} holds no .png images")
    return names


def load_split(split: str, root: Optional[Path] = None, limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 [N, H, W, 3], labels uint8 [N, H, W] and frame names of one split."""
    from PIL import Image

    root = Path(root or default_root())
    names = split_files(split, root)[:limit]
    images = np.stack([np.asarray(Image.open(root / split / "images" / f"{n}.png").convert("RGB")) for n in names])
    labels = np.stack([np.asarray(Image.open(root / split / "labels" / f"{n}.png")) for n in names])
    if images.shape[:3] != labels.shape:
        raise EdgepruneError(f"CamVid {split}: image and label sizes differ ({images.shape[:3]} vs {labels.shape})")
    return images, labels, names


def frame_number(name: str) -> int:
    """The frame number at the end of a CamVid name: ``0001TP_006690`` -> 6690, ``Seq05VD_f00030`` -> 30."""
    match = re.search(r"(\d+)$", name)
    if match is None:
        raise EdgepruneError(f"CamVid frame name {name!r} does not end in a frame number")
    return int(match.group(1))


def sequences(names: Sequence[str]) -> dict[str, list[int]]:
    """Indices of ``names`` grouped by sequence prefix (``0001TP``, ``Seq05VD``...), in frame order."""
    groups: dict[str, list[tuple[int, int]]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.rpartition("_")[0], []).append((frame_number(name), i))
    return {seq: [i for _, i in sorted(items)] for seq, items in groups.items()}


__all__ = ["CLASSES", "IGNORE", "PALETTE", "SPLITS", "default_root", "frame_number", "load_split", "sequences", "split_files"]

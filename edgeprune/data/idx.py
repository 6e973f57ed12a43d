"""IDX files (MNIST, Fashion-MNIST): the format's header checked, gzip or raw, train/test splits.

A dataset folder holds ``{split}-images-idx3-ubyte[.gz]`` and ``{split}-labels-idx1-ubyte[.gz]`` with
``split`` in ``train`` / ``t10k`` (the test set). Problems are one-line :class:`EdgepruneError`s.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Union

import numpy as np

from edgeprune.core.errors import EdgepruneError

SPLITS = {"train": "train", "test": "t10k"}
_MAGIC = {3: 0x0803, 1: 0x0801}  # unsigned bytes, with 3 or 1 dimensions


def _file(folder: Path, split: str, kind: str, ndim: int) -> Path:
    stem = f"{SPLITS[split]}-{kind}-idx{ndim}-ubyte"
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise EdgepruneError(f"'{folder}' has no {stem}[.gz] (an IDX dataset folder such as MNIST's)")


def read_idx(path: Union[str, Path], ndim: int) -> np.ndarray:
    """The uint8 array of one IDX file with ``ndim`` dimensions."""
    path = Path(path)
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise EdgepruneError(f"cannot read '{path}': {exc}") from None
    if len(raw) < 4 + 4 * ndim or int.from_bytes(raw[:4], "big") != _MAGIC[ndim]:
        raise EdgepruneError(f"'{path}' is not an IDX file of {ndim}-d unsigned bytes")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise EdgepruneError(f"'{path}' holds {data.size} values, its header says {int(np.prod(dims))}")
    return data.reshape(dims)


def is_idx_folder(folder: Union[str, Path]) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any(
        (folder / f"{prefix}-images-idx3-ubyte{ext}").is_file() for prefix in SPLITS.values() for ext in (".gz", "")
    )


def available_splits(folder: Union[str, Path]) -> list[str]:
    folder = Path(folder)
    return [s for s, prefix in SPLITS.items() if any((folder / f"{prefix}-images-idx3-ubyte{e}").is_file() for e in (".gz", ""))]


def load_idx_split(folder: Union[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W], labels int64 [N]) of ``split`` ('train' or 'test')."""
    folder = Path(folder)
    if split not in SPLITS:
        raise EdgepruneError(f"unknown split '{split}' (train or test)")
    images = read_idx(_file(folder, split, "images", 3), 3)
    labels = read_idx(_file(folder, split, "labels", 1), 1).astype(np.int64)
    if len(images) != len(labels):
        raise EdgepruneError(f"'{folder}' {split} split has {len(images)} images but {len(labels)} labels")
    return images, labels

"""MNIST test-set loading and the narrow ViT shared by the reference-model scripts (train_mnist_vit,
train_fashion_vit, accuracy_vs_flops).

Only the 10k MNIST *test* digits ship with the repository's shared data, so the
reference model is trained on a fixed slice of them and evaluated on the rest.
The split is positional (no shuffling) so that every script, on every machine,
agrees on which digits are held out.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]  # a checkout: models/ and ../shared/ sit next to the package
DEFAULT_DATA_DIR = (REPO_ROOT / ".." / "shared" / "data" / "mnist").resolve()

IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"

MEAN = 0.1307
STD = 0.3081
PAD = 2  # 28 -> 32 so that a 4x4 patch grid gives 8x8 = 64 tokens
IMG_SIZE = 28 + 2 * PAD

N_TRAIN = 8000  # first N_TRAIN digits train; the remainder is held out
N_TOTAL = 10000

# IDX magic numbers: 0x00000803 = ubyte, 3 dims; 0x00000801 = ubyte, 1 dim.
_IDX_IMAGES_MAGIC = 0x0803
_IDX_LABELS_MAGIC = 0x0801


def _read_idx(path: Path, magic: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST file not found: {path}\n"
            "Expected the gzip'd IDX files t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz; pass --data-dir to point at their folder."
        )
    with gzip.open(path, "rb") as f:
        raw = f.read()
    header_magic = int.from_bytes(raw[0:4], "big")
    if header_magic != magic:
        raise ValueError(f"{path}: bad IDX magic 0x{header_magic:08x}, expected 0x{magic:08x}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(dims))
    if data.size != expected:
        raise ValueError(f"{path}: {data.size} bytes of data, header says {expected}")
    return data.reshape(dims)


def load_raw(data_dir: Path | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N,28,28], labels int64 [N]) from the IDX files."""
    d = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    images = _read_idx(d / IMAGES_FILE, _IDX_IMAGES_MAGIC)
    labels = _read_idx(d / LABELS_FILE, _IDX_LABELS_MAGIC).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels in {d}")
    return images, labels


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,28,28] -> normalised float32 [N,1,32,32]."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = (x - MEAN) / STD
    # Pad with the normalised value of a black pixel, so the border looks like background.
    return torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD), value=(0.0 - MEAN) / STD)


def load_split(
    split: str, data_dir: Path | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x [N,1,32,32] float32, y [N] int64) for split 'train' or 'eval'."""
    images, labels = load_raw(data_dir)
    if split == "train":
        sl = slice(0, N_TRAIN)
    elif split == "eval":
        sl = slice(N_TRAIN, None)
    else:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'eval'")
    return preprocess(images[sl]), torch.from_numpy(labels[sl].copy())


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> float:
    """Top-1 accuracy (0..1) of `model` on (x, y), in eval mode."""
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        logits = model(x[i : i + batch_size])
        correct += int((logits.argmax(dim=-1) == y[i : i + batch_size]).sum())
    return correct / x.shape[0]


# The narrow 6-block ViT both training scripts use (timm vit_tiny_patch16_224 re-configured): on this
# step-limited CPU budget a narrow model trained for more steps beats a wider one trained for fewer.
NARROW_VIT_ARGS: dict = {
    "patch_size": 4,
    "in_chans": 1,
    "num_classes": 10,
    "embed_dim": 96,
    "depth": 6,
    "num_heads": 3,
    "mlp_ratio": 2.0,
}

"""Segmentation scoring and input preparation shared by the CLI, benchmarks and training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 RGB images [N, H, W, 3] -> float32 [N, 3, H, W], scaled to [0, 1] then standardised."""
    std_ = np.asarray(std, np.float32)
    scale = (1.0 / (255.0 * std_)).astype(np.float32)
    offset = (-np.asarray(mean, np.float32) / std_).astype(np.float32)
    # One multiply-add on the contiguous HWC array, then one transposing copy: runs every frame.
    x = images.astype(np.float32)
    x *= scale
    x += offset
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def confusion(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] pixel counts, rows = ground truth, columns = prediction; labels >= K are ignored."""
    labels, pred = labels.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    valid = labels < num_classes
    return np.bincount(labels[valid] * num_classes + pred[valid], minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_report(conf: np.ndarray, classes: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """mIoU over the classes present in the ground truth, per-class IoU and pixel accuracy."""
    k = conf.shape[0]
    names = list(classes) if classes is not None else [str(i) for i in range(k)]
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    present = conf.sum(1) > 0
    per_class = {names[j]: (round(float(tp[j] / union[j]), 4) if present[j] else None) for j in range(k)}
    miou = float(np.mean([tp[j] / union[j] for j in range(k) if present[j]])) if present.any() else 0.0
    return {"miou": miou, "per_class_iou": per_class, "pixel_accuracy": float(tp.sum() / max(1, conf.sum()))}


__all__ = ["confusion", "iou_report", "normalize"]

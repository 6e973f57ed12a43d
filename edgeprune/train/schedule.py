"""Learning-rate schedules and checkpoint saving shared by the training scripts."""

from __future__ import annotations

import math
from pathlib import Path


def lr_at(step: int, total: int, warmup: int, base_lr: float, min_lr: float) -> float:
    """Linear warm-up, then cosine decay to ``min_lr`` at ``total`` steps (held there after)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))


def warmup_cosine(base_lr: float, step: int, warmup: int, frac: float) -> float:
    """The segmenters' schedule: linear warm-up over ``warmup`` steps times a cosine from 1 down to 0.01
    over ``frac`` in [0, 1] (the share of the step or time budget spent)."""
    return base_lr * min(1.0, (step + 1) / warmup) * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` written atomically (a killed run never leaves half a checkpoint)."""
    import torch

    from edgeprune.imaging.images import write_atomic

    write_atomic(path, lambda tmp: torch.save(state, tmp))

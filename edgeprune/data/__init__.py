"""Synthetic, deterministic data for experiments that need labelled images without downloads.

See :mod:`edgeprune.data.scenes` for the procedural robot's-view segmentation scenes.
"""

from edgeprune.data.scenes import (
    BACKGROUNDS,
    CLASSES,
    HELDOUT_SEEDS,
    PALETTE,
    TRAIN_SEEDS,
    SceneConfig,
    colorize,
    make_clip,
    make_scene,
    save_preview,
    scene_batch,
)

__all__ = [
    "BACKGROUNDS",
    "CLASSES",
    "HELDOUT_SEEDS",
    "PALETTE",
    "TRAIN_SEEDS",
    "SceneConfig",
    "colorize",
    "make_clip",
    "make_scene",
    "save_preview",
    "scene_batch",
]

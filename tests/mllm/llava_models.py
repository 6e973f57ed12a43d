"""Tiny LLaVA-family models built from configs with random weights (no downloads), shared by the tests."""

from __future__ import annotations

from pathlib import Path

from edgeprune.mllm.configs import SMALL_FAMILIES as FAMILIES
from edgeprune.mllm.configs import small_clip_query, small_llava

IMAGE_TOKEN = 199


def make_llava(family: str, feature_layer: int | list[int] = -2, seed: int = 0):
    return small_llava(family, feature_layer, seed)


def make_clip_query_folder(folder: Path, vision_width: int = 64, projection_dim: int = 16) -> Path:
    return small_clip_query(folder, vision_width, projection_dim)


__all__ = ["FAMILIES", "IMAGE_TOKEN", "make_llava", "make_clip_query_folder"]

"""The native library is built once per test session with native/build.sh (a no-op when up to date),
so `pip install -e ".[dev]"` and `python -m pytest` build and test it. Only a missing cmake or
C/C++ compiler skips these tests (with the reason); any other build failure fails them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

MISSING = [tool for tool in ("cmake", "make", "c++", "cc") if shutil.which(tool) is None]


@pytest.fixture(scope="session")
def native_lib():
    if MISSING:
        pytest.skip(f"native library not built: {', '.join(MISSING)} not found")
    from edgeprune.native import build_native, load_library

    path = build_native()
    load_library()
    return path


@pytest.fixture(scope="session")
def ort_library():
    from edgeprune.native import default_ort_library

    path = default_ort_library()
    assert path, "the onnxruntime wheel ships capi/libonnxruntime.so.*"
    return path


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory):
    """A real calibrated engine set of a tiny segmenter (budgets 1.0, 0.8, 0.6), exported in seconds."""
    from tests.conftest import export_tiny_set

    return export_tiny_set(tmp_path_factory.mktemp("native_set") / "SET", [1.0, 0.8, 0.6], 5,
                           [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@pytest.fixture(scope="session")
def tiny_temporal(tmp_path_factory):
    import torch

    from edgeprune.exporting.temporal import export_temporal
    from edgeprune.families.timm_seg import create_segmenter

    torch.manual_seed(0)
    model = create_segmenter("vit_tiny_patch16_224", 5, head="multilevel", feature_blocks=(1, 3), img_size=32,
                             patch_size=8, depth=4, embed_dim=32, num_heads=2, reg_tokens=2).eval()
    model.info = {"input": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    return export_temporal(model, 0.25, tmp_path_factory.mktemp("native_temporal") / "t")


def moving_clip(frames: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """A textured background with a square that moves, plus sensor noise: frames that change locally."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = []
    for t in range(frames):
        f = base.copy()
        y, x = (3 * t) % max(1, height - 8), (5 * t) % max(1, width - 8)
        f[y:y + 8, x:x + 8] = (255, 40, 40)
        noise = rng.integers(-2, 3, f.shape)
        out.append(np.clip(f.astype(int) + noise, 0, 255).astype(np.uint8))
    return out


def video_frames(path, count: int, step: int = 1) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while len(frames) < count:
            ok, bgr = cap.read()
            if not ok:
                break
            if cap.get(cv2.CAP_PROP_POS_FRAMES) % step == 0 or step == 1:
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    return frames


def video_dir():
    from pathlib import Path

    return Path(__file__).resolve().parents[3] / "shared" / "data" / "video"

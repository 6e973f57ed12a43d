"""edgeprune.imaging.frames: the fast label path equals the exact reference, resizing, overlay."""

import numpy as np
import pytest

from edgeprune.imaging.images import overlay
from edgeprune.imaging.frames import labels_exact, labels_fast, overlay_fast, resize_frame

@pytest.fixture
def rng():
    from edgeprune.backends.feeds import fresh_seed

    return np.random.default_rng(fresh_seed())  # printed if the test fails (tests/conftest.py)


def smooth_logits(rng, k, h, w):
    """Logits with regions and boundaries like a segmenter's: low-frequency noise, upsampled."""
    import cv2

    coarse = rng.standard_normal((max(2, h // 4), max(2, w // 4), k)).astype(np.float32)
    up = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, k)
    return np.ascontiguousarray(up.transpose(2, 0, 1)) + 0.05 * rng.standard_normal((k, h, w)).astype(np.float32)


def test_labels_by_hand():
    """Two classes on a 1x2 grid upsampled to 1x4: columns sample at 0, 0.25, 0.75, 1 of the way across."""
    logits = np.array([[[1.0, 0.0]], [[0.0, 0.6]]], np.float32)  # class 0 left, class 1 right (weaker)
    # class-0 minus class-1 margin along the row: 1 - 1.6 t at t = 0, .25, .75, 1 -> +, +, -, -
    expected = np.array([[0, 0, 1, 1]], np.uint8)
    assert np.array_equal(labels_exact(logits, 1, 4), expected)
    assert np.array_equal(labels_fast(logits, 1, 4), expected)


@pytest.mark.parametrize("k,h,w,height,width", [
    (7, 128, 128, 1080, 1920), (7, 128, 128, 720, 1280), (3, 16, 12, 301, 97), (11, 23, 31, 240, 426),
    (5, 64, 64, 64, 64), (4, 32, 32, 20, 50), (2, 8, 8, 7, 5)])
def test_fast_labels_equal_exact(rng, k, h, w, height, width):
    logits = smooth_logits(rng, k, h, w)
    exact = labels_exact(logits, height, width)
    fast = labels_fast(logits, height, width)
    assert fast.shape == (height, width) and fast.dtype == np.uint8
    assert (fast == exact).mean() >= 0.99999


def test_fast_labels_on_noise_every_cell_mixed(rng):
    logits = rng.standard_normal((6, 20, 30)).astype(np.float32)
    assert (labels_fast(logits, 190, 250) == labels_exact(logits, 190, 250)).mean() >= 0.99999


def test_bad_logits():
    from edgeprune.core.errors import EdgepruneError

    with pytest.raises(EdgepruneError, match="K, h, w"):
        labels_fast(np.zeros((4, 4), np.float32), 8, 8)
    with pytest.raises(EdgepruneError, match="8-bit"):
        labels_exact(np.zeros((300, 2, 2), np.float32), 4, 4)


def test_resize_frame(rng):
    frame = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    assert resize_frame(frame, 1080, 1920) is frame
    small = resize_frame(frame, 128, 128)
    assert small.shape == (128, 128, 3) and small.dtype == np.uint8
    flat = np.full((720, 1280, 3), 77, np.uint8)
    assert (resize_frame(flat, 128, 128) == 77).all()  # an average of equal pixels is that pixel
    # Stage 1 is an exact box average: 4x4 blocks of a known pattern.
    blocks = np.kron(rng.integers(0, 64, (32, 32, 3)), np.ones((4, 4, 1))).astype(np.uint8)
    blocks[::2, ::2] += 4  # one pixel in four brighter by 4 -> the block mean rises by exactly 1
    assert np.array_equal(resize_frame(blocks, 32, 32), blocks[::4, ::4] - 4 + 1)
    assert resize_frame(small, 300, 200).shape == (300, 200, 3)  # upscaling is bilinear


def test_overlay_fast_matches_reference(rng):
    image = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (45, 61), dtype=np.uint8)
    palette = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    for alpha in (0.0, 0.3, 0.5, 1.0):
        fast = overlay_fast(image, labels, palette, alpha).astype(int)
        assert np.abs(fast - overlay(image, labels, palette, alpha).astype(int)).max() <= 1
    with pytest.raises(ValueError):
        overlay_fast(image, labels[:10], palette)

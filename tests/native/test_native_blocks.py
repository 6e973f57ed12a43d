"""Pre/post-processing and content signals of libedgeprune against the Python references, bit for bit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests.native.conftest import video_dir, video_frames

SOURCES = [(1080, 1920), (720, 1280), (540, 960), (240, 426), (256, 340), (130, 129), (255, 257), (127, 128),
           (100, 300), (20, 20), (48, 40), (200, 33), (31, 1000), (513, 777), (64, 64)]
TARGETS = [(128, 128), (32, 32), (64, 48), (37, 53), (224, 224)]


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: f"{s[1]}x{s[0]}")
def test_resize_is_bit_exact_with_the_contract(native_lib, source):
    from edgeprune.native import resize_rgb
    from edgeprune.imaging.frames import resize_frame

    rng = np.random.default_rng(sum(source))
    frame = rng.integers(0, 256, (*source, 3), dtype=np.uint8)
    for h, w in TARGETS:
        np.testing.assert_array_equal(resize_rgb(frame, h, w), resize_frame(frame, h, w), err_msg=f"to {w}x{h}")


def test_resize_real_video_frames_and_strided_rows(native_lib):
    from edgeprune.native import resize_rgb
    from edgeprune.imaging.frames import resize_frame

    clips = sorted(video_dir().glob("*.mp4"))
    if not clips:
        pytest.skip(f"no clips in {video_dir()}")
    checked = 0
    for clip in clips:
        for frame in video_frames(clip, 3):
            for h, w in ((128, 128), (224, 224), (96, 160)):
                np.testing.assert_array_equal(resize_rgb(frame, h, w), resize_frame(frame, h, w), err_msg=f"{clip.name} {w}x{h}")
                checked += 1
            crop = frame[7:-5, 11:-3]  # rows strided in memory: the library reads through the stride
            np.testing.assert_array_equal(resize_rgb(crop, 128, 128), resize_frame(np.ascontiguousarray(crop), 128, 128))
    assert checked >= 3 * len(clips)


@pytest.mark.parametrize("classes,size,out", [(7, (128, 128), (1080, 1920)), (5, (32, 32), (70, 90)),
                                              (3, (16, 24), (16, 24)), (2, (9, 7), (100, 3))])
def test_upsample_argmax_matches_the_reference(native_lib, classes, size, out):
    from edgeprune.native import upsample_argmax
    from edgeprune.imaging.frames import labels_exact

    rng = np.random.default_rng(classes)
    # smooth logits so that uniform cells (the fast path) and boundary cells both occur
    coarse = rng.normal(size=(classes, size[0] // 4 + 2, size[1] // 4 + 2)).astype(np.float32)
    logits = np.kron(coarse, np.ones((4, 4), np.float32))[:, :size[0], :size[1]]
    logits += rng.normal(scale=0.05, size=logits.shape).astype(np.float32)
    ours, ref = upsample_argmax(logits, *out), labels_exact(logits, *out)
    assert (ours != ref).sum() == 0


def test_model_size_labels_are_the_argmax(native_lib):
    from edgeprune.native import upsample_argmax

    logits = np.random.default_rng(3).normal(size=(6, 20, 30)).astype(np.float32)
    np.testing.assert_array_equal(upsample_argmax(logits, 20, 30), logits.argmax(0))


def test_content_signals_match_python(native_lib):
    from edgeprune.native import frame_change, thumbnail
    from edgeprune.runtime.policies import downscale_gray
    from edgeprune.runtime.policies import frame_change as py_change

    rng = np.random.default_rng(5)
    previous = None
    for h, w in itertools.product((20, 64, 65, 720), (33, 64, 1280)):
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        small = thumbnail(frame)
        np.testing.assert_array_equal(small, downscale_gray(frame))
        assert frame_change(previous, small) == py_change(previous, small)
        previous = small

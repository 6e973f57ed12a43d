"""Procedural segmentation scenes: determinism, shapes, label sanity, occlusion, splits, clips."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from edgeprune.data import (
    BACKGROUNDS,
    CLASSES,
    HELDOUT_SEEDS,
    PALETTE,
    TRAIN_SEEDS,
    SceneConfig,
    make_clip,
    make_scene,
    save_preview,
    scene_batch,
)
from edgeprune.data import _draw

OBJECT_CLASSES = set(range(2, len(CLASSES)))


def test_same_seed_same_scene_and_different_seeds_differ():
    img, lab = make_scene(7)
    img2, lab2 = make_scene(7)
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2)
    img3, lab3 = make_scene(8)
    assert not np.array_equal(img, img3)
    assert not np.array_equal(lab, lab3)


@pytest.mark.parametrize("h,w", [(16, 16), (64, 128), (128, 128), (192, 256), (512, 512)])
def test_shapes_dtypes_and_label_range(h, w):
    img, lab = make_scene(3, SceneConfig(height=h, width=w))
    assert img.shape == (h, w, 3) and img.dtype == np.uint8
    assert lab.shape == (h, w) and lab.dtype == np.uint8
    assert lab.max() < len(CLASSES)


def test_palette_matches_classes():
    assert PALETTE.shape == (len(CLASSES), 3) and PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in PALETTE}) == len(CLASSES)  # distinguishable overlays


@pytest.mark.parametrize("bad", [dict(height=100), dict(width=528), dict(max_objects=61),
                                 dict(min_objects=5, max_objects=3), dict(backgrounds=("moon",)),
                                 dict(backgrounds=()), dict(blur=1.5), dict(noise_std=-1)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        SceneConfig(**bad)


@pytest.mark.parametrize("bg", BACKGROUNDS)
def test_every_background_has_surface_and_background(bg):
    _, labels = scene_batch(range(10), SceneConfig(backgrounds=(bg,)))
    for lab in labels:
        assert (lab == 1).mean() > 0.05
        assert (lab == 0).any()
        assert (lab < len(CLASSES)).all()


def test_objects_present_and_every_class_appears():
    _, labels = scene_batch(range(20))
    assert len(OBJECT_CLASSES & set(np.unique(labels).tolist())) >= 2
    assert all(len(OBJECT_CLASSES & set(np.unique(lab).tolist())) >= 1 for lab in labels)
    _, labels = scene_batch(range(200))
    assert set(np.unique(labels).tolist()) == set(range(len(CLASSES)))


def test_look_toggles_keep_layout_and_labels():
    for seed in range(5):
        _, lab = make_scene(seed)
        for cfg in (SceneConfig(texture=False), SceneConfig(lighting=False, shadows=False),
                    SceneConfig(noise_std=0.0, blur=0.0)):
            assert np.array_equal(make_scene(seed, cfg)[1], lab)


def test_paint_order_is_far_to_near():
    objs = [_draw.SceneObject(cls=2 + i % 5, x=10.0, y=y, size=0.2, aspect=1.0, angle=0.0,
                              variant=0, colors=np.ones((3, 3), np.float32))
            for i, y in enumerate([90.0, 40.0, 120.0, 60.0])]
    assert [objs[i].y for i in _draw.paint_order(objs)] == [40.0, 60.0, 90.0, 120.0]


def test_nearer_object_occludes_farther_one_in_labels_and_pixels():
    far = _draw.SceneObject(cls=_draw.BOX, x=64.0, y=100.0, size=0.4, aspect=1.0, angle=0.0,
                            variant=0, colors=np.array([[1, 0, 0]] * 3, np.float32))
    near = _draw.SceneObject(cls=_draw.BALL, x=64.0, y=108.0, size=0.2, aspect=1.0, angle=0.0,
                             variant=0, colors=np.array([[0, 0, 1]] * 3, np.float32))
    light = np.array([0.0, 0.0, 1.0])

    def draw(objs):
        ordered = [objs[i] for i in _draw.paint_order(objs)]
        ids, cls, model, geo, rgb, _ = _draw.rasterize(ordered, 128, 128, 40.0, 64.0, True, light)
        col = np.zeros((128, 128, 3), np.float32)
        col[ids > 0] = _draw.shade(ids, model, geo, rgb, light)
        return cls[ids], col

    lab_near, _ = draw([near])
    ys, xs = np.nonzero(lab_near == _draw.BALL)
    cy, cx = int(ys.mean()), int(xs.mean())
    lab_far, _ = draw([far])
    assert lab_far[cy, cx] == _draw.BOX  # the two really overlap there
    for objs in ([far, near], [near, far]):  # input order must not matter
        lab, col = draw(objs)
        assert lab[cy, cx] == _draw.BALL  # the nearer ball hides the box
        assert (lab == _draw.BOX).any()  # the box is still partly visible
        ball, box = lab == _draw.BALL, lab == _draw.BOX
        assert (col[ball, 2] > col[ball, 0]).all()  # colour follows the label (blue ball,
        assert (col[box, 0] > col[box, 2]).all()  # red box; the ball's glint is white)


def test_label_edges_coincide_with_image_edges():
    """Where the label changes, the clean image changes much more than inside regions."""
    cfg = SceneConfig(texture=False, noise_std=0.0, blur=0.0)
    images, labels = scene_batch(range(10), cfg)
    x = images.astype(np.float32)
    grad = np.abs(np.diff(x, axis=2)).sum(-1)
    edge = np.diff(labels.astype(np.int16), axis=2) != 0
    assert grad[edge].mean() > 3 * grad[~edge].mean()


def test_heldout_seeds_are_disjoint_from_train():
    assert len(HELDOUT_SEEDS) > 0 and len(TRAIN_SEEDS) > 0
    assert not set(TRAIN_SEEDS) & set(HELDOUT_SEEDS)


def test_scene_batch_stacks_make_scene():
    cfg = SceneConfig(height=32, width=48)
    images, labels = scene_batch([5, 6, 7], cfg)
    assert images.shape == (3, 32, 48, 3) and labels.shape == (3, 32, 48)
    img, lab = make_scene(6, cfg)
    assert np.array_equal(images[1], img) and np.array_equal(labels[1], lab)
    empty_i, empty_l = scene_batch([], cfg)
    assert empty_i.shape == (0, 32, 48, 3) and empty_l.shape == (0, 32, 48)


def test_clip_is_mostly_static_with_moving_objects():
    changed_any = False
    for seed in range(4):
        frames, labels = make_clip(seed, 8, moving=2)
        assert frames.shape == (8, 128, 128, 3) and labels.shape == (8, 128, 128)
        assert frames.dtype == np.uint8 and labels.dtype == np.uint8
        frac = (labels[1:] != labels[:-1]).mean(axis=(1, 2))
        assert (frac < 0.25).all()
        changed_any |= bool(frac.sum() > 0)
        # Wall/sky/surface never flip into each other: only objects move.
        bg = np.where(labels < 2, labels.astype(np.int16), -1)
        hi = bg.max(0)
        lo = np.where(bg < 0, 127, bg).min(0)
        assert ((hi < 0) | (lo == hi)).all()
        assert not np.array_equal(frames[0], frames[1])  # fresh sensor noise per frame
    assert changed_any
    frames, labels = make_clip(1, 3, moving=2)
    assert np.array_equal(make_clip(1, 3, moving=2)[0], frames)  # deterministic


def test_clip_without_moving_objects_has_static_labels():
    frames, labels = make_clip(11, 4, moving=0)
    assert (labels == labels[0]).all()
    diff = np.abs(frames[1:].astype(np.int16) - frames[:-1]).mean()
    assert 0 < diff < 10  # only noise


def test_save_preview_writes_side_by_side_png_atomically(tmp_path):
    img, lab = make_scene(2, SceneConfig(height=32, width=64))
    path = tmp_path / "preview.png"
    save_preview(path, img, lab)
    out = np.asarray(Image.open(path))
    assert out.shape == (32, 2 * 64 + 2, 3)
    assert np.array_equal(out[:, :64], img)
    assert np.array_equal(out[:, -64:], PALETTE[lab])
    assert os.listdir(tmp_path) == ["preview.png"]

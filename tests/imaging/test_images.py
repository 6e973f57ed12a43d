"""Image reading rules, resizing/upsampling, overlays and atomic PNG writes."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from edgeprune.core.errors import EdgepruneError
from edgeprune.imaging.images import (
    class_fractions,
    default_palette,
    overlay,
    palette_array,
    read_rgb,
    resize_rgb,
    save_png_atomic,
    upsample_argmax,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)


def test_rgb_and_lossless_conversions(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    assert np.array_equal(read_rgb(tmp_path / "a.png"), RGB)
    opaque = np.concatenate([RGB, np.full((30, 40, 1), 255, np.uint8)], 2)
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    assert np.array_equal(read_rgb(tmp_path / "opaque.png"), RGB)
    pal = Image.fromarray(RGB).quantize(16)
    pal.save(tmp_path / "p.png")
    assert np.array_equal(read_rgb(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    Image.fromarray(RGB).save(tmp_path / "a.jpg")
    jpg = read_rgb(tmp_path / "a.jpg")
    assert jpg.shape == (30, 40, 3) and jpg.dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(RGB).save(tmp_path / "r.jpg", exif=exif)
    assert read_rgb(tmp_path / "r.jpg").shape == (40, 30, 3)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: Image.fromarray(RGB[..., 0]), r"mode L \(1 channel\)"),
        (lambda: Image.fromarray(RGB).convert("LA"), r"mode LA \(2 channels\)"),
        (lambda: Image.fromarray(RGB[..., 0].astype(np.uint16) * 200), "mode I"),
        (lambda: Image.fromarray(np.concatenate([RGB, RGB[..., :1]], 2)), "transparent"),
    ],
)
def test_wrong_channels_are_refused(make, match, tmp_path):
    make().save(tmp_path / "x.png")
    with pytest.raises(EdgepruneError, match=match):
        read_rgb(tmp_path / "x.png")


def test_cmyk_and_transparent_palette_are_refused(tmp_path):
    Image.fromarray(RGB).convert("CMYK").save(tmp_path / "c.jpg")
    with pytest.raises(EdgepruneError, match=r"mode CMYK \(4 channels\)"):
        read_rgb(tmp_path / "c.jpg")
    pal = Image.fromarray(RGB).quantize(16)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "t.png", transparency=0)
    with pytest.raises(EdgepruneError, match="transparent"):
        read_rgb(tmp_path / "t.png")


def test_unreadable_files(tmp_path):
    with pytest.raises(EdgepruneError, match="cannot read image .*no such file"):
        read_rgb(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(os.urandom(300))
    with pytest.raises(EdgepruneError, match="cannot read image .*not a recognised image format"):
        read_rgb(tmp_path / "junk.png")
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgepruneError, match="cannot read image"):
        read_rgb(tmp_path / "half.png")


def test_resize_shape_and_identity():
    assert resize_rgb(RGB, 30, 40) is RGB
    small = resize_rgb(RGB, 16, 8)
    assert small.shape == (16, 8, 3) and small.dtype == np.uint8


@pytest.mark.parametrize("size", [(150, 200), (7, 5), (128, 128), (301, 97)])
def test_upsample_argmax_matches_torch(size):
    logits = RNG.standard_normal((7, 16, 12)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(logits)[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)
    got = upsample_argmax(logits, *size, band=64)
    assert got.dtype == np.uint8 and got.shape == size
    assert (got == ref.numpy()).mean() > 0.999  # float ties aside


def test_overlay_and_fractions():
    labels = np.zeros((30, 40), np.uint8)
    labels[:, 20:] = 2
    palette = default_palette(3)
    mixed = overlay(RGB, labels, palette, alpha=0.25)
    expected = RGB * 0.75 + palette[labels] * 0.25
    assert mixed.dtype == np.uint8 and np.abs(mixed - expected).max() <= 0.5 + 1e-6
    assert np.array_equal(overlay(RGB, labels, palette, 0.0), RGB)
    assert np.allclose(class_fractions(labels, 3), [0.5, 0.0, 0.5])
    with pytest.raises(ValueError):
        overlay(RGB, labels[:10], palette)


def test_palettes():
    assert default_palette(12).shape == (12, 3) and len({tuple(c) for c in default_palette(12)}) == 12
    assert np.array_equal(palette_array([[1, 2, 3], [4, 5, 6]], 2), [[1, 2, 3], [4, 5, 6]])
    assert np.array_equal(palette_array(None, 4), default_palette(4))
    assert np.array_equal(palette_array([[1, 2, 3]], 2), default_palette(2))  # wrong length


def test_save_png_atomic(tmp_path, monkeypatch):
    save_png_atomic(tmp_path / "l.png", RGB[..., 0])
    save_png_atomic(tmp_path / "c.png", RGB)
    assert Image.open(tmp_path / "l.png").mode == "L" and Image.open(tmp_path / "c.png").mode == "RGB"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "c.png")), RGB)
    with pytest.raises(ValueError):
        save_png_atomic(tmp_path / "bad.png", RGB.astype(np.float32))

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    before = (tmp_path / "c.png").read_bytes()
    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(EdgepruneError, match="No space left on device"):  # one line, not a traceback
        save_png_atomic(tmp_path / "c.png", RGB[::-1].copy())
    assert (tmp_path / "c.png").read_bytes() == before  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["c.png", "l.png"]  # and no temp file is left

"""Calibration data for ``edgeprune tune``: image folders (class subfolders, flat) and IDX datasets,
split into disjoint seeded calibration / hold-out parts and preprocessed like the model's training."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeprune.core.errors import EdgepruneError
from edgeprune.tune.data import ImageSet, Preprocess, load_calibration


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


def decode(images: torch.Tensor, mean: float, std: float) -> np.ndarray:
    """Back from normalised float to 0..255 values (rounded)."""
    return np.rint((images.numpy() * std + mean) * 255.0).astype(np.int64)


# --------------------------------------------------------------------------- Preprocess


def test_normalisation_by_hand():
    pre = Preprocess((2, 2), 3, (0.1, 0.2, 0.3), (0.5, 0.25, 0.125))
    image = np.zeros((1, 2, 2, 3), np.uint8)
    image[0, 0, 1] = (255, 128, 0)
    image[0, 1, 0] = (51, 51, 51)
    x = pre(image)
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    assert x[0, :, 0, 1].tolist() == pytest.approx([(1.0 - 0.1) / 0.5, (128 / 255 - 0.2) / 0.25, (0.0 - 0.3) / 0.125], abs=1e-6)
    assert x[0, :, 1, 0].tolist() == pytest.approx([(0.2 - 0.1) / 0.5, (0.2 - 0.2) / 0.25, (0.2 - 0.3) / 0.125], abs=1e-6)
    # a black pixel is -mean/std in every channel
    assert x[0, :, 0, 0].tolist() == pytest.approx([-0.2, -0.8, -2.4], abs=1e-6)


def test_scalar_mean_std_broadcast_to_every_channel():
    pre = Preprocess((1, 1), 3, (0.5,), (0.25,))
    x = pre(np.array([[[[255, 0, 51]]]], np.uint8))
    assert x[0, :, 0, 0].tolist() == pytest.approx([2.0, -2.0, (0.2 - 0.5) / 0.25], abs=1e-6)


def test_grey_to_three_channels_and_rgb_to_grey():
    grey = np.array([[[0, 100], [200, 255]]], np.uint8)  # [1, 2, 2]
    x3 = Preprocess((2, 2), 3, (0.0,), (1.0,))(grey)
    assert x3.shape == (1, 3, 2, 2)
    for c in range(3):
        assert torch.allclose(x3[0, c], torch.tensor(grey[0] / 255.0, dtype=torch.float32))
    rgb = np.array([[[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]]], np.uint8)  # [1, 2, 2, 3]
    x1 = Preprocess((2, 2), 1, (0.0,), (1.0,))(rgb)
    assert x1.shape == (1, 1, 2, 2)
    luma = (rgb.astype(np.float64) / 255.0) @ np.array([0.299, 0.587, 0.114])
    assert np.allclose(x1[0, 0].numpy(), luma[0], atol=1e-6)


@pytest.mark.parametrize("kwargs, word", [
    (dict(mean=(0.1, 0.2), std=(0.5, 0.5, 0.5)), "--mean"),
    (dict(mean=(0.1, 0.2, 0.3), std=(0.5, 0.5)), "--std"),
    (dict(mean=(0.1, 0.2, 0.3, 0.4), std=(0.5,)), "--mean"),
    (dict(mean=(0.5,), std=(0.0,)), "positive"),
    (dict(mean=(0.5,), std=(0.2, -0.1, 0.3)), "positive"),
    (dict(mean=(0.5,), std=(0.2,), fit="stretch"), "fit"),
])
def test_preprocess_rejects_bad_settings(kwargs, word):
    with pytest.raises(EdgepruneError) as excinfo:
        Preprocess((8, 8), 3, **kwargs)
    assert word in one_line_error(excinfo)


def test_fit_pad_centres_and_refuses_larger_images():
    pre = Preprocess((32, 32), 1, (0.0,), (1.0,), fit="pad")
    out = pre.fit_image(np.full((27, 29), 255, np.uint8))
    assert out.shape == (32, 32)
    rows, cols = np.nonzero(out)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 28, 1, 29)  # top (32-27)//2, left (32-29)//2
    assert out.sum() == 255 * 27 * 29
    rgb = pre.fit_image(np.full((28, 28, 3), 7, np.uint8))
    assert rgb.shape == (32, 32, 3) and (rgb[2:30, 2:30] == 7).all() and rgb[:2].sum() == 0 and rgb[:, 30:].sum() == 0
    for shape in ((40, 20), (20, 33), (33, 33)):
        with pytest.raises(EdgepruneError) as excinfo:
            pre.fit_image(np.zeros(shape, np.uint8))
        assert "does not fit" in one_line_error(excinfo)


def test_fit_resize_crops_the_centre_instead_of_squashing():
    pre = Preprocess((32, 32), 3, (0.0,), (1.0,))
    tall = np.zeros((64, 32, 3), np.uint8)  # red band, green middle, blue band
    tall[:16] = (255, 0, 0)
    tall[16:48] = (0, 255, 0)
    tall[48:] = (0, 0, 255)
    out = pre.fit_image(tall)
    assert out.shape == (32, 32, 3)
    assert (out[1:-1, :, 1] > 240).all() and (out[1:-1, :, 0] < 15).all() and (out[1:-1, :, 2] < 15).all()
    for shape in ((50, 37), (20, 45), (31, 33), (100, 100)):  # odd sizes, up- and downscaling
        assert pre.fit_image(np.full((*shape, 3), 90, np.uint8)).shape == (32, 32, 3)
        assert (pre.fit_image(np.full(shape, 90, np.uint8)) == 90).all()


# --------------------------------------------------------------------------- image folders


def write_image(path: Path, size: tuple[int, int], value: int, mode: str) -> None:
    """A uniform image (height, width) whose value survives resizing and colour conversion exactly."""
    h, w = size
    if mode == "RGB":
        Image.new("RGB", (w, h), (value, value, value)).save(path)
    else:
        Image.new("L", (w, h), value).save(path)


SIZES = [(32, 32), (50, 37), (20, 45), (33, 31), (64, 64)]


@pytest.fixture
def class_folder(tmp_path):
    """Three classes (sorted: a_dog, b_cat, c) with uniform images of distinct values, mixed modes and
    odd sizes, plus things that are not images or not classes."""
    root = tmp_path / "classes"
    expected = {}  # value -> label
    value = 10
    for label, name in enumerate(["a_dog", "b_cat", "c"]):
        d = root / name
        d.mkdir(parents=True)
        for j in range(4 + label):
            suffix = (".png", ".jpg", ".bmp", ".PNG")[j % 4]
            mode = "RGB" if j % 2 else "L"
            write_image(d / f"img{j}{suffix}", SIZES[(j + label) % len(SIZES)], value, mode)
            expected[value] = label
            value += 12
        (d / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    write_image(root / ".hidden" / "x.png", (32, 32), 250, "L")
    return root, expected


def values_of(images: torch.Tensor) -> list[int]:
    """The uniform value of each preprocessed image (mean 0, std 1 preprocessing)."""
    raw = decode(images, 0.0, 1.0)
    out = []
    for im in raw:
        assert (np.abs(im - im.flat[0]) <= 1).all(), "a uniform image did not stay uniform"
        out.append(int(im.flat[0]))
    return out


def test_class_folder_labels_sizes_and_disjoint_split(class_folder):
    root, expected = class_folder
    pre = Preprocess((32, 32), 3, (0.0,), (1.0,))
    calib, hold = load_calibration(root, pre, 5, -1)
    assert calib.images.shape == (5, 3, 32, 32) and hold.images.shape == (len(expected) - 5, 3, 32, 32)
    seen = []
    for part in (calib, hold):
        values = values_of(part.images)
        for v, label in zip(values, part.labels.tolist()):
            # JPEG is lossy, so find the nearest written value
            nearest = min(expected, key=lambda e: abs(e - v))
            assert abs(nearest - v) <= 3
            assert label == expected[nearest], (v, label)
            seen.append(nearest)
    assert sorted(seen) == sorted(expected)  # disjoint, and together every image (the .hidden one excluded)
    assert "3 classes" in calib.description and "a_dog" in calib.description
    # seeded: the same split again
    again, again_hold = load_calibration(root, pre, 5, -1)
    assert torch.equal(again.images, calib.images) and torch.equal(again.labels, calib.labels)
    assert torch.equal(again_hold.images, hold.images)
    # a limited hold-out is a prefix of the full one, and 0 means none
    _, hold2 = load_calibration(root, pre, 5, 2)
    assert torch.equal(hold2.images, hold.images[:2])
    assert load_calibration(root, pre, 5, 0)[1] is None


def test_class_folder_to_one_channel(class_folder):
    root, expected = class_folder
    calib, hold = load_calibration(root, Preprocess((16, 16), 1, (0.0,), (1.0,)), 100, 5)
    assert hold is None  # every image went to calibration
    assert calib.images.shape == (len(expected), 1, 16, 16) and calib.labels.dtype == torch.int64
    assert sorted(calib.labels.tolist()) == sorted(expected.values())


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(6):
        write_image(tmp_path / f"{i}.png", (40, 30), 20 * i + 5, "RGB" if i % 2 else "L")
    (tmp_path / "readme.md").write_text("x")
    calib, hold = load_calibration(tmp_path, Preprocess((32, 32), 1, (0.0,), (1.0,)), 4, -1)
    assert calib.labels is None and hold.labels is None and len(calib) == 4 and len(hold) == 2
    assert sorted(values_of(calib.images) + values_of(hold.images)) == [20 * i + 5 for i in range(6)]
    assert "unlabelled" in calib.description


def test_fit_pad_from_a_folder(tmp_path):
    write_image(tmp_path / "a.png", (28, 28), 255, "L")
    mean, std = 0.1307, 0.3081
    calib, _ = load_calibration(tmp_path, Preprocess((32, 32), 1, (mean,), (std,), fit="pad"), 1, 0)
    x = calib.images[0, 0]
    assert x[2:30, 2:30].numpy() == pytest.approx(np.full((28, 28), (1.0 - mean) / std), abs=1e-5)
    assert x[:2].numpy() == pytest.approx(np.full((2, 32), -mean / std), abs=1e-5)
    write_image(tmp_path / "big.png", (30, 40), 1, "L")
    with pytest.raises(EdgepruneError) as excinfo:
        load_calibration(tmp_path, Preprocess((32, 32), 1, (mean,), (std,), fit="pad"), 2, 0)
    assert "does not fit" in one_line_error(excinfo)


def test_folder_errors(tmp_path):
    pre = Preprocess((32, 32), 3, (0.5,), (0.5,))
    with pytest.raises(EdgepruneError) as excinfo:
        load_calibration(tmp_path / "missing", pre, 10, 0)
    assert "missing" in one_line_error(excinfo)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(EdgepruneError) as excinfo:
        load_calibration(tmp_path / "file.png", pre, 10, 0)
    assert "not a folder" in one_line_error(excinfo)
    empty = tmp_path / "empty"
    (empty / "only_text").mkdir(parents=True)
    (empty / "only_text" / "a.txt").write_text("x")
    with pytest.raises(EdgepruneError) as excinfo:
        load_calibration(empty, pre, 10, 0)
    assert "no images" in one_line_error(excinfo)
    with pytest.raises(EdgepruneError) as excinfo:
        load_calibration(tmp_path / "empty", pre, 0, 0)
    assert "--calib-count" in one_line_error(excinfo)


def test_corrupt_image_is_named(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"ok{i}.png", (32, 32), 50, "L")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png\n" * 3)
    with pytest.raises(EdgepruneError) as excinfo:
        load_calibration(tmp_path, Preprocess((32, 32), 3, (0.5,), (0.5,)), 4, 0)
    message = one_line_error(excinfo)
    assert "broken.png" in message and "cannot read" in message


def test_fingerprint_follows_content():
    images = torch.zeros(3, 1, 4, 4)
    a = ImageSet(images.clone(), torch.tensor([0, 1, 2]), "a")
    same = ImageSet(images.clone(), torch.tensor([0, 1, 2]), "another description")
    assert a.fingerprint() == same.fingerprint()
    pixel = images.clone()
    pixel[2, 0, 3, 1] = 1e-3
    assert ImageSet(pixel, torch.tensor([0, 1, 2]), "a").fingerprint() != a.fingerprint()
    assert ImageSet(images.clone(), torch.tensor([0, 1, 1]), "a").fingerprint() != a.fingerprint()
    assert ImageSet(images.clone(), None, "a").fingerprint() != a.fingerprint()


# --------------------------------------------------------------------------- IDX datasets


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    def blob(magic: int, arr: np.ndarray) -> bytes:
        return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.astype(np.uint8).tobytes()

    for kind, ndim, arr in (("images", 3, images), ("labels", 1, labels)):
        data = blob(0x0800 + ndim, arr)
        name = folder / f"{prefix}-{kind}-idx{ndim}-ubyte"
        if gz:
            with gzip.open(f"{name}.gz", "wb") as f:
                f.write(data)
        else:
            name.write_bytes(data)


def coded_digits(n: int, base: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Images whose pixel [0, 0] is their index (+ base) and whose label is that index mod 10."""
    images = np.random.default_rng(base).integers(0, 256, (n, size, size)).astype(np.uint8)
    images[:, 0, 0] = np.arange(base, base + n)
    labels = (np.arange(base, base + n) % 10).astype(np.uint8)
    return images, labels


def codes(part, mean=0.0, std=1.0, at=(0, 0)) -> list[int]:
    return decode(part.images[:, 0, at[0], at[1]], mean, std).tolist()


@pytest.mark.parametrize("gz", [True, False])
def test_idx_one_split_is_a_disjoint_seeded_permutation(tmp_path, gz):
    images, labels = coded_digits(50)
    write_idx(tmp_path, "t10k", images, labels, gz)
    pre = Preprocess((28, 28), 1, (0.1307,), (0.3081,))
    calib, hold = load_calibration(tmp_path, pre, 30, -1)
    assert len(calib) == 30 and len(hold) == 20 and calib.images.shape == (30, 1, 28, 28)
    c, h = codes(calib, 0.1307, 0.3081), codes(hold, 0.1307, 0.3081)
    assert set(c).isdisjoint(h) and sorted(c + h) == list(range(50))
    assert c != sorted(c)  # a permutation, not the first 30
    assert calib.labels.tolist() == [i % 10 for i in c] and hold.labels.tolist() == [i % 10 for i in h]
    # whole images come through, normalised
    i = c[0]
    expected = (images[i].astype(np.float32) / 255.0 - 0.1307) / 0.3081
    assert np.allclose(calib.images[0, 0].numpy(), expected, atol=1e-5)
    again, again_hold = load_calibration(tmp_path, pre, 30, 7)
    assert codes(again, 0.1307, 0.3081) == c and codes(again_hold, 0.1307, 0.3081) == h[:7]
    assert load_calibration(tmp_path, pre, 50, -1)[1] is None


def test_idx_train_and_test_splits(tmp_path):
    train_x, train_y = coded_digits(40, base=0)
    test_x, test_y = coded_digits(25, base=100)
    write_idx(tmp_path, "train", train_x, train_y, gz=False)
    write_idx(tmp_path, "t10k", test_x, test_y, gz=True)
    pre = Preprocess((32, 32), 3, (0.0,), (1.0,), fit="pad")  # 28x28 digits padded into a 3-channel model
    calib, hold = load_calibration(tmp_path, pre, 12, 5)
    assert calib.images.shape == (12, 3, 32, 32) and hold.images.shape == (5, 3, 32, 32)
    c, h = codes(calib, at=(2, 2)), codes(hold, at=(2, 2))
    assert all(0 <= v < 40 for v in c) and len(set(c)) == 12  # from train
    assert h == [100, 101, 102, 103, 104]  # the first of the test split
    assert hold.labels.tolist() == [0, 1, 2, 3, 4] and calib.labels.tolist() == [v % 10 for v in c]
    assert torch.equal(calib.images[:, 0], calib.images[:, 2])  # grey replicated
    assert calib.images[:, :, :2].abs().max() == 0  # the padding
    _, all_test = load_calibration(tmp_path, pre, 12, -1)
    assert len(all_test) == 25
    assert load_calibration(tmp_path, pre, 12, 0)[1] is None


def test_idx_errors(tmp_path):
    pre = Preprocess((28, 28), 1, (0.5,), (0.5,))
    images, labels = coded_digits(5)
    missing_labels = tmp_path / "a"
    missing_labels.mkdir()
    write_idx(missing_labels, "t10k", images, labels, gz=False)
    (missing_labels / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(EdgepruneError) as excinfo:
        load_calibration(missing_labels, pre, 3, 0)
    assert "t10k-labels-idx1-ubyte" in one_line_error(excinfo)
    bad = tmp_path / "b"
    bad.mkdir()
    write_idx(bad, "t10k", images, labels, gz=False)
    (bad / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + b"\x00" * 20)
    with pytest.raises(EdgepruneError) as excinfo:
        load_calibration(bad, pre, 3, 0)
    one_line_error(excinfo)
    short = tmp_path / "c"
    short.mkdir()
    write_idx(short, "t10k", images, labels[:4], gz=True)
    with pytest.raises(EdgepruneError) as excinfo:
        load_calibration(short, pre, 3, 0)
    assert "labels" in one_line_error(excinfo)

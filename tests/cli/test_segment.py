"""``edgeprune segment`` as users run it: outputs at the original size, eager == artifact, bad input -> exit 2."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeprune.cli.main import main
from edgeprune.data import SceneConfig, make_scene
from tests.cli.test_cli import TINY_ARGS, error_line, run

REFERENCE = Path(__file__).resolve().parents[2] / "models" / "scene_seg"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The reference segmenter folder, a tome artifact of it, and a (tiny) classifier artifact."""
    root = tmp_path_factory.mktemp("segment_models")
    assert main(["export", str(REFERENCE), "--method", "tome", "--flops", "0.6", "--out", str(root / "seg")]) == 0
    assert main(["export", "vit_tiny_patch16_224", *TINY_ARGS, "--method", "none", "--out", str(root / "cls")]) == 0
    (root / "empty").mkdir()
    return {"eager": REFERENCE, "artifact": root / "seg", "classifier": root / "cls", "empty": root / "empty"}


@pytest.fixture
def images(tmp_path):
    """A held-out 128x128 scene (with its ground truth) and a non-square 200x150 JPEG."""
    scene, truth = make_scene(1_000_000, SceneConfig(height=128, width=128))
    Image.fromarray(scene).save(tmp_path / "scene.png")
    wide, _ = make_scene(1_000_001, SceneConfig(height=160, width=208))
    Image.fromarray(wide[:150, :200]).save(tmp_path / "wide.jpg", quality=95)
    return {"scene": tmp_path / "scene.png", "wide": tmp_path / "wide.jpg", "truth": truth}


def labels_of(folder: Path, stem: str) -> np.ndarray:
    img = Image.open(folder / f"{stem}_labels.png")
    assert img.mode == "L"
    return np.asarray(img)


def test_eager_and_artifact_agree_at_original_size(models, images, tmp_path, capsys):
    results = {}
    for kind in ("eager", "artifact"):
        out = tmp_path / f"out_{kind}"
        code, stdout, err = run(["segment", images["scene"], images["wide"], "--model", models[kind],
                                 "--out", out, "--json", tmp_path / f"{kind}.json"], capsys)
        assert code == 0, err
        assert "wide.jpg" in stdout and "200x150" in stdout and "surface" in stdout
        wide = labels_of(out, "wide")
        assert wide.shape == (150, 200) and wide.max() < 7
        over = Image.open(out / "wide_overlay.png")
        assert over.mode == "RGB" and over.size == (200, 150)
        assert sorted(os.listdir(out)) == ["scene_labels.png", "scene_overlay.png", "wide_labels.png", "wide_overlay.png"]
        summary = json.loads((tmp_path / f"{kind}.json").read_text())
        row = summary["images"][1]
        assert (row["width"], row["height"]) == (200, 150) and row["infer_ms"] > 0
        assert abs(sum(row["classes"].values()) - 1) < 1e-4
        assert summary["engine"] == ("pytorch" if kind == "eager" else "onnxruntime")
        results[kind] = {stem: labels_of(out, stem) for stem in ("scene", "wide")}
    for stem in ("scene", "wide"):
        agree = (results["eager"][stem] == results["artifact"][stem]).mean()
        assert agree >= 0.99, (stem, agree)
    # A held-out scene against its ground truth: catches wrong normalisation or channel order.
    accuracy = (results["eager"]["scene"] == images["truth"]).mean()
    assert accuracy > 0.9, accuracy
    # Overlay = 50/50 blend of the image and the class colour.
    scene = np.asarray(Image.open(images["scene"])).astype(int)
    palette = np.array(json.loads((REFERENCE / "config.json").read_text())["palette"])
    blend = np.asarray(Image.open(tmp_path / "out_eager" / "scene_overlay.png")).astype(int)
    assert np.abs(blend - (scene + palette[results["eager"]["scene"]]) / 2).max() <= 1


def test_existing_outputs_need_force(models, images, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["segment", images["wide"], "--model", models["artifact"], "--out", out, "--alpha", "0"]
    assert run(argv, capsys)[0] == 0
    before = (out / "wide_labels.png").read_bytes()
    code, _, err = run(argv, capsys)
    assert code == 2 and "already exists" in error_line(err) and "--force" in error_line(err)
    code, _, err = run([*argv, "--force", "--alpha", "1"], capsys)
    assert code == 0, err
    assert (out / "wide_labels.png").read_bytes() == before
    overlay = np.asarray(Image.open(out / "wide_overlay.png"))
    assert len(np.unique(overlay.reshape(-1, 3), axis=0)) <= 7  # alpha 1: pure palette colours
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temp files left behind


def test_artifact_on_openvino_gives_onnx_runtimes_labels(models, images, tmp_path, capsys):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install \"edgeprune[openvino]\")")
    labels = {}
    for provider in ("cpu", "openvino", "auto"):
        out = tmp_path / provider
        code, stdout, err = run(["segment", images["scene"], images["wide"], "--model", models["artifact"], "--out", out,
                                 "--provider", provider, "--json", tmp_path / f"{provider}.json", "--threads", "1"], capsys)
        assert code == 0, err
        summary = json.loads((tmp_path / f"{provider}.json").read_text())
        labels[provider] = {stem: labels_of(out, stem) for stem in ("scene", "wide")}
        if provider == "openvino":
            assert summary["engine"] == "openvino" and summary["provider"] == "OpenVINO CPU f32"
            assert "openvino: OpenVINO CPU f32" in " ".join(stdout.split())
        if provider == "auto":  # an artifact has no calibrations to compare: the rule without them
            assert "--provider auto:" in err and "nothing calibrated to compare" in " ".join(err.split())
    for stem in ("scene", "wide"):
        assert (labels["openvino"][stem] == labels["cpu"][stem]).mean() >= 0.999, stem


def test_bad_engine_options_are_one_line(models, images, tmp_path, capsys):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install \"edgeprune[openvino]\")")
    for argv, match in ((["--provider", "tpu"], "--provider must be one of"),
                        (["--provider", "openvino", "--device", "GPU.7"], "OpenVINO device 'GPU.7' is not available"),
                        (["--device", "CPU"], "--device CPU is OpenVINO's device")):
        code, _, err = run(["segment", images["scene"], "--model", models["artifact"], "--out", tmp_path / "o", *argv],
                           capsys)
        assert code == 2 and match in error_line(err), argv
        assert not (tmp_path / "o").exists()


def _write_bad_inputs(d: Path) -> None:
    rgba = np.full((30, 40, 4), 200, np.uint8)
    rgba[5, 5, 3] = 0
    Image.fromarray(rgba).save(d / "alpha.png")
    Image.fromarray(np.full((30, 40), 90, np.uint8)).save(d / "grey.png")
    (d / "corrupt.png").write_bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes())
    (d / "sub").mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(d / "sub" / "scene.jpg")


@pytest.mark.parametrize(
    "inputs,model,match",
    [
        (["{tmp}/missing.png"], "artifact", "cannot read image"),
        (["{scene}", "{tmp}/corrupt.png"], "artifact", "cannot read image"),
        (["{scene}", "{tmp}/alpha.png"], "artifact", "transparent"),
        (["{tmp}/grey.png"], "eager", "mode L (1 channel)"),
        (["{scene}", "{tmp}/sub/scene.jpg"], "artifact", "would both write"),
        (["{scene}"], "classifier", "not a timm-vit-seg segmenter"),
        (["{scene}"], "empty", "neither config.json"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(inputs, model, match, models, images, tmp_path, capsys):
    _write_bad_inputs(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{scene}", str(images["scene"])) for a in inputs]
    out = tmp_path / "out"
    code, stdout, err = run(["segment", *argv, "--model", models[model], "--out", out], capsys)
    assert code == 2
    assert error_line(err).startswith("error:") and match in error_line(err)
    assert not out.exists() or not any(out.iterdir())


REAL_MODEL = Path(__file__).resolve().parents[2] / "models" / "camvid_seg"
CITYSCAPES = Path(__file__).resolve().parents[3] / "shared" / "data" / "segmentation" / "cityscapes"


@pytest.mark.skipif(not CITYSCAPES.is_dir(), reason="needs ../shared/data/segmentation")
def test_default_model_is_the_street_scene_one(tmp_path, capsys):
    """Issue 16: with no --model a real street photo gets the CamVid model, and on the Cityscapes
    sample (a city the model never saw, labelled with Cityscapes ids) road, building and sky come out
    where its ground truth has them (the scenes model called the buildings "person")."""
    photo = next(CITYSCAPES.glob("*_leftImg8bit.png"))
    truth = np.asarray(Image.open(next(CITYSCAPES.glob("*_gtFine_labelIds.png"))))
    out = tmp_path / "out"
    code, stdout, err = run(["segment", photo, "--out", out, "--json", tmp_path / "s.json", "--threads", "1"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["model"].endswith("camvid_seg")
    assert data["classes"] == json.loads((REAL_MODEL / "config.json").read_text())["classes"]
    pred = labels_of(out, photo.stem)
    assert pred.shape == truth.shape
    classes = data["classes"]
    # Cityscapes label ids: 7 road, 11 building, 23 sky
    for city, name in ((7, "road"), (11, "building"), (23, "sky")):
        mask = truth == city
        assert mask.sum() > 500, name
        share = float((pred[mask] == classes.index(name)).mean())
        assert share > 0.6, (name, share)

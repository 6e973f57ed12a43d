"""Scene mIoU for ONNX artifacts and eager modules: one metric, any batch layout, clear refusals."""

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.artifacts.artifact import Artifact
from edgeprune.data import CLASSES
from edgeprune.core.errors import EdgepruneError
from edgeprune.measure.seg_eval import DEFAULT_SCENES, EvalSet, evaluate_artifact, evaluate_module, heldout_scenes, parse_eval_spec

REFERENCE = Path(__file__).resolve().parents[2] / "models" / "scene_seg"
INPUT = {"size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def conv_artifact(root, batch, weight: np.ndarray) -> Artifact:
    """A 1x1-conv 'segmenter' written as ONNX by hand: milliseconds instead of a real export."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dim = batch if isinstance(batch, int) else "batch"
    graph = helper.make_graph(
        [helper.make_node("Conv", ["pixel_values", "w"], ["logits"])], "conv",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [dim, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dim, len(CLASSES), 32, 32])],
        [numpy_helper.from_array(weight, "w")])
    root.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(root / "model.onnx"))
    manifest = {
        "model": {"family": "timm-vit-seg", "num_classes": len(CLASSES), "classes": list(CLASSES), "input": INPUT},
        "inputs": [{"name": "pixel_values", "shape": [dim, 3, 32, 32]}],
        "onnx": {"file": "model.onnx"},
    }
    return Artifact(root, manifest)


@pytest.fixture(scope="module")
def conv_weight():
    return np.random.default_rng(0).standard_normal((len(CLASSES), 3, 1, 1)).astype(np.float32)


@pytest.mark.parametrize("batch", [1, 3, "batch"])
def test_artifact_matches_eager_for_any_batch_layout(tmp_path, conv_weight, batch):
    artifact = conv_artifact(tmp_path / "a", batch, conv_weight)
    calls = []
    onnx_score = evaluate_artifact(artifact, 7, threads=1, progress=lambda done, n: calls.append((done, n)))
    conv = torch.nn.Conv2d(3, len(CLASSES), 1, bias=False)
    conv.weight.data = torch.from_numpy(conv_weight)
    eager = evaluate_module(conv, 7, INPUT, batch=4)
    assert calls[-1] == (7, 7) and onnx_score["n"] == 7
    assert onnx_score["miou"] == pytest.approx(eager["miou"], abs=1e-9)
    assert onnx_score["pixel_accuracy"] == pytest.approx(eager["pixel_accuracy"], abs=1e-9)
    assert set(onnx_score["per_class_iou"]) == set(CLASSES)


def test_parse_eval_spec():
    assert parse_eval_spec("scenes") == EvalSet("scenes", DEFAULT_SCENES)
    assert parse_eval_spec("scenes:20") == EvalSet("scenes", 20)
    assert parse_eval_spec("camvid") == EvalSet("camvid", None, "test")
    assert parse_eval_spec("camvid:val:12") == EvalSet("camvid", 12, "val")
    for bad in ("imagenet", "scenes:", "scenes:0", "scenes:-3", "scenes:x", "scenes:10000000", "scenes:1:2",
                "camvid:train2", "camvid:test:0", "camvid:test:1:2"):
        with pytest.raises(EdgepruneError, match="--eval"):
            parse_eval_spec(bad)


def test_refuses_what_it_cannot_score(tmp_path, conv_weight):
    artifact = conv_artifact(tmp_path / "a", 1, conv_weight)
    model = artifact.manifest["model"]
    for change, match in ((dict(family="timm-vit"), "segmentation artifact"), (dict(num_classes=21), "classes"),
                          (dict(classes=["x"] * len(CLASSES)), "classes"), (dict(input=None), "model.input")):
        bad = Artifact(artifact.path, {**artifact.manifest, "model": {**model, **change}})
        with pytest.raises(EdgepruneError, match=match):
            evaluate_artifact(bad, 2)
    with pytest.raises(EdgepruneError, match="cannot render"):
        heldout_scenes(2, 24, 24)
    with pytest.raises(EdgepruneError, match="input_info"):
        evaluate_module(torch.nn.Identity(), 2)


def test_reference_model_eager_score():
    import edgeprune
    from edgeprune.families.timm_seg import load_segmenter

    model = load_segmenter(REFERENCE)
    plain = evaluate_module(model, 10)  # input normalisation from the model's config.json
    assert 0.3 < plain["miou"] <= 1 and plain["n"] == 10 and "HELDOUT_SEEDS[:10]" in plain["seeds"]
    unreduced = evaluate_module(edgeprune.reduce_model(model, edgeprune.build_plan(model, "none")), 10)
    assert unreduced["miou"] == pytest.approx(plain["miou"], abs=1e-6)
    assert not model.training

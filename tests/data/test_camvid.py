"""CamVid as shipped in ../shared: splits, frame order, labels, and scoring a model on it (ONNX = eager,
unlabelled pixels ignored)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeprune.data import camvid
from edgeprune.core.errors import EdgepruneError

pytestmark = pytest.mark.skipif(not camvid.default_root().is_dir(), reason="needs ../shared/data/camvid")


def test_splits_and_frames():
    assert [len(camvid.split_files(s)) for s in camvid.SPLITS] == [367, 101, 233]
    images, labels, names = camvid.load_split("test", limit=3)
    assert images.shape == (3, 180, 240, 3) and images.dtype == np.uint8
    assert labels.shape == (3, 180, 240) and labels.max() <= camvid.IGNORE
    assert names == camvid.split_files("test")[:3]


def test_sequences_are_in_frame_order():
    names = camvid.split_files("test")
    groups = camvid.sequences(names)
    assert set(groups) == {"0001TP", "Seq05VD"} and sum(map(len, groups.values())) == len(names)
    for seq, idx in groups.items():
        frames = [camvid.frame_number(names[i]) for i in idx]
        assert frames == sorted(frames) and all(names[i].startswith(seq) for i in idx)
    assert camvid.sequences(["b_10", "a_f2", "b_9"]) == {"b": [2, 0], "a": [1]}
    with pytest.raises(EdgepruneError, match="frame number"):
        camvid.sequences(["a_b"])


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(EdgepruneError, match="unknown CamVid split 'dev'"):
        camvid.split_files("dev")
    monkeypatch.setenv("EDGEPRUNE_CAMVID", str(tmp_path))
    with pytest.raises(EdgepruneError, match="does not exist"):
        camvid.load_split("val")


def test_onnx_and_eager_scores_agree_and_ignore_unlabelled(tmp_path):
    import edgeprune
    from edgeprune.imaging.evaluation import confusion, iou_report
    from edgeprune.families.timm_seg import create_segmenter
    from edgeprune.measure.seg_eval import EvalSet, evaluate_artifact, evaluate_module

    torch.manual_seed(0)
    # Input 90x120: frames are resized to it and predictions back to the 180x240 labels.
    model = create_segmenter("vit_tiny_patch16_224", len(camvid.CLASSES), head="linear", img_size=(90, 120),
                             patch_size=15, depth=2, embed_dim=32, num_heads=2)
    info = {"size": [3, 90, 120], "mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3]}
    artifact = edgeprune.export(model, edgeprune.build_plan(model, "none"), tmp_path / "a", batch=2,
                                model_info={"input": info, "classes": list(camvid.CLASSES)})
    data = EvalSet("camvid", 5, "val")
    onnx = evaluate_artifact(artifact, data, threads=1)
    eager = evaluate_module(model, data, info, batch=2)
    assert onnx["n"] == eager["n"] == 5
    assert onnx["miou"] == pytest.approx(eager["miou"], abs=1e-3)
    assert set(onnx["per_class_iou"]) == set(camvid.CLASSES)
    # unlabelled pixels never count: the same score from a confusion matrix that drops them by hand
    _, labels, _ = camvid.load_split("val", limit=5)
    predicted = np.zeros_like(labels)
    conf = confusion(labels, predicted, len(camvid.CLASSES))
    assert conf.sum() == (labels != camvid.IGNORE).sum()
    assert iou_report(conf, camvid.CLASSES)["per_class_iou"]["sky"] is not None
    with pytest.raises(EdgepruneError, match="not camvid's"):
        other = edgeprune.export(model, edgeprune.build_plan(model, "none"), tmp_path / "b", batch=1,
                                 model_info={"input": info, "classes": [f"c{i}" for i in range(11)]})
        evaluate_artifact(other, data)

"""edgeprune.mllm.query_conditioning: the class-share bookkeeping on hand-made labels, and the study's core
function on a few held-out scenes of the reference segmenter."""

from __future__ import annotations

import numpy as np
import pytest

from edgeprune.mllm import query_conditioning

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def qc():
    return query_conditioning


def test_patch_labels_majority_and_ties(qc):
    label = np.zeros((1, 4, 6), np.uint8)  # 2 x 3 patches of 2 x 2 pixels
    label[0, 0:2, 0:2] = 3  # patch 0: all ball
    label[0, 0, 2:4] = 5  # patch 1: 2 tool + 2 background -> tie -> lower id (0)
    label[0, 0:2, 4:6] = 2
    label[0, 1, 5] = 1  # patch 2: 3 box + 1 surface -> box
    label[0, 2:4, 0:2] = 6
    label[0, 3, 1] = 0  # patch 3: 3 person -> person
    assert qc.patch_labels(label, 2).tolist() == [[3, 0, 2, 6, 0, 0]]


def test_pick_target_smallest_under_cover(qc):
    label = np.zeros((16, 16), np.uint8)
    label[:8, :8] = 2  # box: 25 % of the image, too big
    label[8:12, 8:12] = 3  # ball: 16 px = 6.25 %
    label[12:14, 0:4] = 4  # cylinder: 8 px = 3.1 %, smallest
    patches = qc.patch_labels(label[None], 4)[0]
    assert qc.pick_target(label, patches) == 3  # the cylinder owns no 4x4 patch of its own
    assert qc.pick_target(label, qc.patch_labels(label[None], 2)[0]) == 4
    assert qc.pick_target(np.zeros((16, 16), np.uint8), np.zeros(16, np.int64)) is None


def test_kept_stats(qc):
    patches = np.array([0, 3, 3, 1, 3, 0, 0, 0])
    stats = qc.kept_stats(np.array([1, 2, 5, 7]), patches, 3)  # K = 4, 2 of 3 ball patches kept
    assert stats == {"kept": 2, "share": 0.5, "capped": 2 / 3, "recall": 2 / 3}
    assert qc.kept_stats(np.array([0, 5]), patches, 3)["share"] == 0.0


def test_study_on_a_few_scenes(qc):
    result = qc.run_study(qc.load_model(), n_scenes=6, k=8, layers=(6,), survivors=32)
    assert len(result["scenes"]) == 6 and result["dominant"] == 7 and result["tokens"] == 256
    for scene in result["scenes"]:
        assert scene["donor"] != scene["seed"] and scene["donor_patches"] >= qc.DONOR_MIN_PATCHES
        assert scene["class"] in qc.FOREGROUND and 0 < scene["class_pixels_frac"] < qc.MAX_COVER
        assert scene["seed"] >= 1000000  # held-out seeds only
    layer = result["layers"]["6"]
    assert set(layer["means"]) == set(qc.METHODS) | {"random"}
    for stats in layer["means"].values():
        assert all(0.0 <= v <= 1.0 for v in stats.values())
    assert all(0.0 <= v <= 1.0 for v in layer["scene_fraction"].values())
    assert set(layer["pass"]) == {"qcsp", "script"}

"""mIoU against a label pair counted by hand (not one implementation checked against itself)."""

import numpy as np
import pytest

from edgeprune.imaging.evaluation import confusion, iou_report


def test_miou_hand_counted():
    truth = np.array([[0, 0, 1, 1],
                      [0, 0, 1, 1],
                      [2, 2, 2, 9]])  # 9: unlabelled, ignored
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 1, 2],
                     [2, 2, 0, 0]])
    # class 0: truth 4 px, predicted 4 px (3 inside + 1 at (2,2)), overlap 3 -> IoU 3 / (4 + 4 - 3) = 0.6
    # class 1: truth 4, predicted 4 ((0,1) wrongly + 3 inside), overlap 3 -> 3 / 5 = 0.6
    # class 2: truth 3, predicted 3 ((1,3) + 2 inside), overlap 2 -> 2 / 4 = 0.5
    report = iou_report(confusion(truth, pred, 3), ["a", "b", "c"])
    assert report["per_class_iou"] == {"a": 0.6, "b": 0.6, "c": 0.5}
    assert report["miou"] == pytest.approx((0.6 + 0.6 + 0.5) / 3)
    assert report["pixel_accuracy"] == pytest.approx(8 / 11)  # (2,3) is ignored

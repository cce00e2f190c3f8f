"""VOC AP@0.5 against values computed by hand."""

import numpy as np
import pytest

pytest.importorskip("torch")

from roipool.fastrcnn.data import Sample  # noqa: E402
from roipool.fastrcnn.evaluate import average_precision, match_detections, mean_average_precision  # noqa: E402


def test_ap_all_correct_is_one():
    assert average_precision([0.9, 0.8, 0.1], [1, 1, 1], 3) == pytest.approx(1.0)


def test_ap_uses_the_precision_envelope():
    # Ranks: TP, FP, TP, FP with 3 ground truths. Precision 1, 1/2, 2/3, 1/2 at
    # recall 1/3, 1/3, 2/3, 2/3; envelope 1, 2/3, 2/3, 1/2.
    # AP = 1/3 * 1 + 1/3 * 2/3 = 5/9 (the third ground truth is never found).
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], 3) == pytest.approx(5 / 9)


def test_ap_sorts_by_score_first():
    # Sorted: FP (0.9) then TP (0.6); precision 0 then 1/2 at recall 1/2 -> AP 1/4.
    assert average_precision([0.6, 0.9], [1, 0], 2) == pytest.approx(0.25)


def test_ap_without_detections_is_zero_and_without_ground_truth_undefined():
    assert average_precision([], [], 2) == 0.0
    assert np.isnan(average_precision([0.5], [0], 0))


def test_a_second_detection_of_the_same_object_is_a_false_positive():
    gt = np.array([[0, 0, 10, 10]], np.float32)
    dets = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [40, 40, 50, 50]], np.float32)
    assert match_detections(dets, [0.5, 0.9, 0.8], gt).tolist() == [False, True, False]


def test_map_over_two_images_and_two_classes_by_hand():
    s1 = Sample(np.zeros((3, 8, 8), np.float32), np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32),
                np.array([1, 2]))  # fmt: skip
    s2 = Sample(np.zeros((3, 8, 8), np.float32), np.array([[0, 0, 10, 10]], np.float32), np.array([1]))
    dets = [
        # class 1 TP (0.9), class 2 wrong place (0.8), class 2 TP (0.3)
        (np.array([[0, 0, 10, 10], [0, 0, 10, 10], [21, 21, 30, 30]], np.float32), np.array([0.9, 0.8, 0.3]),
         np.array([1, 2, 2])),
        # class 1: FP (0.95), TP at IoU 0.81 (0.7)
        (np.array([[50, 50, 60, 60], [1, 1, 10, 10]], np.float32), np.array([0.95, 0.7]), np.array([1, 1])),
    ]  # fmt: skip
    result = mean_average_precision(dets, [s1, s2], num_classes=2)
    # class 1 ranks: FP .95, TP .9, TP .7 over 2 GT: precision 0, 1/2, 2/3 -> AP = 1/2 * 2/3 + 1/2 * 2/3 = 2/3
    # class 2 ranks: FP .8, TP .3 over 1 GT: AP = 1 * 1/2 = 1/2
    assert result["ap50"]["circle"] == pytest.approx(2 / 3)
    assert result["ap50"]["square"] == pytest.approx(1 / 2)
    assert result["map50"] == pytest.approx((2 / 3 + 1 / 2) / 2)

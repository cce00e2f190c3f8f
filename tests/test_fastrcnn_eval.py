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


# --- COCO-style AP over IoU 0.5:0.95 ------------------------------------------------------------


COCO_IOUS = np.linspace(0.5, 0.95, 10)


def _coco_ap_by_hand(detections, samples, label, iou_thresholds=COCO_IOUS):
    """COCO's bbox AP of one class, written out: greedy matching by score, 101-point interpolation."""
    from roipool.fastrcnn.boxes import box_iou

    torch = pytest.importorskip("torch")
    aps = []
    for t in iou_thresholds:
        scored, num_gt = [], 0
        for (boxes, scores, labels), sample in zip(detections, samples, strict=True):
            gt = sample.boxes[sample.labels == label]
            num_gt += len(gt)
            sel = np.asarray(labels) == label
            b, s = np.asarray(boxes)[sel], np.asarray(scores)[sel]
            order = np.argsort(-s, kind="stable")
            taken = np.zeros(len(gt), bool)
            iou = box_iou(torch.as_tensor(b).reshape(-1, 4), torch.as_tensor(gt).reshape(-1, 4)).numpy()
            for i in order:
                # The best-overlapping ground truth not yet taken, at IoU >= t.
                best, which = t, -1
                for j in range(len(gt)):
                    if not taken[j] and iou[i, j] >= best:
                        best, which = iou[i, j], j
                if which >= 0:
                    taken[which] = True
                scored.append((s[i], which >= 0))
        scored.sort(key=lambda x: -x[0])
        tp = np.cumsum([ok for _, ok in scored])
        recall = tp / num_gt
        precision = tp / np.arange(1, len(scored) + 1)
        ap = 0.0
        for r in np.linspace(0, 1, 101):
            reached = precision[recall >= r - 1e-12] if len(scored) else []
            ap += max(reached) if len(reached) else 0.0
        aps.append(ap / 101)
    return float(np.mean(aps))


def test_coco_ap_of_hand_made_detections():
    pytest.importorskip("pycocotools")
    from roipool.fastrcnn.coco import coco_map

    gt = Sample(np.zeros((3, 64, 64), np.float32), np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32),
                np.array([1, 2]))  # fmt: skip
    # Class 1: one detection at IoU 0.8 (true positive at thresholds 0.5..0.8: 7 of 10) -> AP 0.7.
    # Class 2: a false positive scored above a perfect detection -> precision 1/2 at every recall, AP 0.5.
    dets = [(np.array([[0, 0, 10, 8], [40, 40, 60, 60], [20, 20, 40, 40]], np.float32),
             np.array([0.9, 0.8, 0.7]), np.array([1, 2, 2]))]  # fmt: skip
    result = coco_map(dets, [gt], ("a", "b"))
    assert result["ap"]["a"] == pytest.approx(0.7)
    assert result["ap"]["b"] == pytest.approx(0.5)
    assert result["map"] == pytest.approx(0.6)
    assert result["map75"] == pytest.approx((1.0 + 0.5) / 2)


def test_coco_ap_agrees_with_the_matching_written_out_on_generated_detections():
    pytest.importorskip("pycocotools")
    from roipool.fastrcnn.coco import coco_map

    rng = np.random.default_rng(0)
    samples, dets = [], []
    for _ in range(6):
        xy = rng.uniform(0, 80, (4, 2))
        gt_boxes = np.concatenate([xy, xy + rng.uniform(8, 40, (4, 2))], axis=1).astype(np.float32)
        gt_labels = rng.integers(1, 3, 4)
        samples.append(Sample(np.zeros((3, 128, 128), np.float32), gt_boxes, gt_labels))
        # Jittered copies of the ground truth (some labelled wrongly) and random boxes.
        jitter = gt_boxes + rng.normal(0, 3, gt_boxes.shape).astype(np.float32)
        xy = rng.uniform(0, 80, (3, 2))
        noise = np.concatenate([xy, xy + rng.uniform(8, 40, (3, 2))], axis=1).astype(np.float32)
        labels = np.concatenate([np.where(rng.random(4) < 0.8, gt_labels, 3 - gt_labels), rng.integers(1, 3, 3)])
        dets.append((np.concatenate([jitter, noise]), rng.random(7), labels))
    result = coco_map(dets, samples, ("a", "b"))
    for label, name in ((1, "a"), (2, "b")):
        assert result["ap"][name] == pytest.approx(_coco_ap_by_hand(dets, samples, label), abs=1e-9)


def test_coco_ap_of_a_class_without_detections_is_zero_and_without_ground_truth_nan():
    pytest.importorskip("pycocotools")
    from roipool.fastrcnn.coco import coco_map

    gt = Sample(np.zeros((3, 32, 32), np.float32), np.array([[0, 0, 10, 10]], np.float32), np.array([1]))
    result = coco_map([(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))], [gt], ("a", "b"))
    assert result["ap"]["a"] == 0.0 and np.isnan(result["ap"]["b"]) and result["map"] == 0.0

"""Detection on an image and VOC-style evaluation (AP at IoU 0.5 per class, and their mean).

AP is the area under the precision/recall curve after making precision
monotone (non-increasing in recall), summed at every recall change: the
PASCAL VOC 2010+ "all points" rule. A detection is a true positive when its
best-overlapping ground-truth box of the same class and image has IoU >= 0.5
and was not already taken by a higher-scored detection.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import boxes as B
from .data import CLASSES, Sample
from .model import FastRCNN
from .proposals import dense_proposals

SCORE_THRESHOLD = 0.05
NMS_IOU = 0.3
MAX_DETECTIONS = 100


def load(model_dir) -> FastRCNN:
    """A model saved by ``roipool fast-rcnn train`` (safetensors weights, JSON config), in eval mode."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    model = FastRCNN(**config["model"])
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    return model.eval()


@torch.no_grad()
def detect(model: FastRCNN, image: torch.Tensor, proposals: torch.Tensor | None = None):
    """Detections on one image ``(3, H, W)``: ``(boxes (D, 4), scores (D,), labels (D,))``.

    Every proposal is scored for every class; its box is regressed with that
    class's deltas; per class, boxes scoring at least ``SCORE_THRESHOLD`` go
    through NMS at IoU ``NMS_IOU``; the best ``MAX_DETECTIONS`` are kept.
    """
    _, height, width = image.shape
    if proposals is None:
        proposals = torch.from_numpy(dense_proposals(height, width))
    rois = torch.cat([proposals.new_zeros(len(proposals), 1), proposals], dim=1)
    logits, deltas = model(image[None], rois)
    probs = torch.softmax(logits, dim=1)
    out_boxes, out_scores, out_labels = [], [], []
    for c in range(1, model.num_classes + 1):
        scores = probs[:, c]
        keep = torch.nonzero(scores >= SCORE_THRESHOLD).flatten()
        if len(keep) == 0:
            continue
        keep = keep[torch.argsort(scores[keep], descending=True)[:300]]
        boxes = B.clip(B.decode(proposals[keep], deltas[keep, 4 * (c - 1) : 4 * c]), height, width)
        kept = B.nms(boxes, scores[keep], NMS_IOU)
        out_boxes.append(boxes[kept])
        out_scores.append(scores[keep][kept])
        out_labels.append(torch.full((len(kept),), c, dtype=torch.int64))
    if not out_boxes:
        return torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    boxes, scores, labels = torch.cat(out_boxes), torch.cat(out_scores), torch.cat(out_labels)
    top = torch.argsort(scores, descending=True)[:MAX_DETECTIONS]
    return boxes[top], scores[top], labels[top]


def average_precision(scores, is_true_positive, num_ground_truth: int) -> float:
    """VOC all-points AP of one class from its detections' scores and TP flags over all images."""
    if num_ground_truth == 0:
        return float("nan")
    scores = np.asarray(scores, dtype=np.float64)
    tp = np.asarray(is_true_positive, dtype=np.float64)[np.argsort(-scores, kind="stable")]
    if tp.size == 0:
        return 0.0
    tp_cum = np.cumsum(tp)
    recall = tp_cum / num_ground_truth
    precision = tp_cum / np.arange(1, tp.size + 1)
    # Precision envelope: at each rank, the best precision at this or any higher recall.
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    recall_steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(recall_steps * envelope))


def match_detections(det_boxes, det_scores, gt_boxes, iou_threshold: float = 0.5):
    """TP flags for one image and class: greedy in score order, each ground truth matched once."""
    det_boxes = torch.as_tensor(det_boxes, dtype=torch.float32).reshape(-1, 4)
    gt_boxes = torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(det_scores, dtype=np.float64), kind="stable")
    flags = np.zeros(len(order), dtype=bool)
    if len(gt_boxes) == 0 or len(order) == 0:
        return flags
    iou = B.box_iou(det_boxes, gt_boxes).numpy()
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for i in order:
        j = int(np.argmax(iou[i]))
        if iou[i, j] >= iou_threshold and not taken[j]:
            taken[j] = True
            flags[i] = True
    return flags


def mean_average_precision(detections, samples, num_classes: int, iou_threshold: float = 0.5) -> dict:
    """``detections``: per image ``(boxes, scores, labels)``; ``samples``: the ground truth.

    Returns ``{"map50": mean over classes, "ap50": {class name: AP}}``.
    """
    per_class = {}
    for c in range(1, num_classes + 1):
        scores, flags, num_gt = [], [], 0
        for (boxes, det_scores, labels), sample in zip(detections, samples):
            sel = np.asarray(labels) == c
            gt = sample.boxes[sample.labels == c]
            num_gt += len(gt)
            s = np.asarray(det_scores)[sel]
            scores.append(s)
            flags.append(match_detections(np.asarray(boxes)[sel], s, gt, iou_threshold))
        ap = average_precision(np.concatenate(scores), np.concatenate(flags), num_gt)
        per_class[CLASSES[c - 1] if c <= len(CLASSES) else str(c)] = ap
    values = [v for v in per_class.values() if not np.isnan(v)]
    return {"map50": float(np.mean(values)) if values else float("nan"), "ap50": per_class}


def evaluate(model: FastRCNN, samples: list[Sample], progress: bool = False) -> dict:
    """mAP@0.5 of ``model`` on ``samples`` with the dense sliding-window proposals."""
    model.eval()
    dets = []
    items = samples
    if progress:
        from tqdm import tqdm

        items = tqdm(samples, desc="eval", unit="img", leave=False)
    for sample in items:
        boxes, scores, labels = detect(model, torch.from_numpy(sample.image))
        dets.append((boxes.numpy(), scores.numpy(), labels.numpy()))
    return mean_average_precision(dets, samples, model.num_classes)

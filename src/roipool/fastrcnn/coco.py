"""COCO-style AP (IoU 0.5:0.05:0.95, 101 recall points), computed by pycocotools.

Our detections and ground truth are handed to ``pycocotools.cocoeval.COCOeval``
(the maintained reference implementation) unchanged: boxes become COCO's
``[x, y, width, height]`` (continuous pixels, no ``+1``), every object is
"not crowd", and the area ranges are left at COCO's defaults (only "all" is
reported). At most ``MAX_DETECTIONS`` = 100 detections per image reach it.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np


def coco_map(detections, samples, classes) -> dict:
    """``detections``: per image ``(boxes (D, 4), scores (D,), labels (D,))``; ``samples``: the ground truth.

    Returns ``{"map": COCO mAP@[0.5:0.95], "map75": at IoU 0.75, "ap": {class
    name: AP@[0.5:0.95]}}``; a class without ground truth gets NaN and is left
    out of the means.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations = [], []
    for i, sample in enumerate(samples):
        images.append({"id": i + 1, "width": int(sample.image.shape[2]), "height": int(sample.image.shape[1])})
        for box, label in zip(sample.boxes.tolist(), sample.labels.tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label),
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
    rows = []
    for i, (boxes, scores, labels) in enumerate(detections):
        for box, score, label in zip(
            np.asarray(boxes).tolist(), np.asarray(scores).tolist(), np.asarray(labels).tolist(), strict=True
        ):
            rows.append([i + 1, box[0], box[1], box[2] - box[0], box[3] - box[1], score, label])
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(classes)]
    nan = float("nan")
    if not annotations:
        return {"map": nan, "map75": nan, "ap": {name: nan for name in classes}}
    quiet = io.StringIO()  # pycocotools prints its progress
    with contextlib.redirect_stdout(quiet):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations, "categories": categories}
        truth.createIndex()
        found = truth.loadRes(np.array(rows, dtype=np.float64)) if rows else COCO()
        if not rows:
            found.dataset = {"images": images, "annotations": [], "categories": categories}
            found.createIndex()
        ev = COCOeval(truth, found, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]  # (IoU thresholds, recall points, classes, area ranges, max dets)
    per_class = {}
    for c, name in enumerate(classes):
        p = precision[:, :, c, 0, -1]  # area "all", 100 detections
        per_class[name] = float(np.mean(p[p > -1])) if np.any(p > -1) else nan
    at75 = precision[list(np.round(ev.params.iouThrs, 2)).index(0.75), :, :, 0, -1]
    values = [v for v in per_class.values() if not np.isnan(v)]
    return {
        "map": float(np.mean(values)) if values else nan,
        "map75": float(np.mean(at75[at75 > -1])) if np.any(at75 > -1) else nan,
        "ap": per_class,
    }

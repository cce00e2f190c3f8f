"""Loading a trained model, detection on an image, and evaluation.

Two detection metrics, per class and their mean over classes: VOC AP at IoU
0.5 (below, our own, tested against hand-computed cases) and COCO-style AP
averaged over IoU 0.5:0.05:0.95 (``coco.py``, computed by pycocotools).
And proposal recall (:func:`proposal_recall`).

VOC AP is the area under the precision/recall curve after making precision
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
from . import data as D
from .data import CLASSES, Sample
from .model import CHECKPOINT_FORMAT, FastRCNN

SCORE_THRESHOLD = 0.05
NMS_IOU = 0.3
MAX_DETECTIONS = 100
RECALL_COUNTS = (50, 100, 300, 1000, 2000)
RECALL_IOUS = (0.5, 0.7)


class ModelError(ValueError):
    """A ``--model`` folder that cannot be loaded; the message names what is wrong, in one line."""


def load_checkpoint(model_dir) -> tuple[FastRCNN, dict]:
    """The model saved by ``roipool fast-rcnn train`` in ``model_dir`` (eval mode) and its config.json.

    Raises :class:`ModelError` for a missing folder or file, a folder written
    by another version (``config.json``'s ``format``), or a config that does
    not match the weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model folder {model_dir} does not exist (train one with: roipool fast-rcnn train --out DIR)")
    for name in ("config.json", "model.safetensors"):
        if not (model_dir / name).is_file():
            raise ModelError(f"model folder {model_dir} has no {name} (not written by roipool fast-rcnn train)")
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{model_dir / 'config.json'} is not valid JSON ({e})") from None
    found = config.get("format") if isinstance(config, dict) else None
    if found != CHECKPOINT_FORMAT:
        raise ModelError(f"{model_dir} was written by another version of roipool (format {found!r}; "
                         f"this one reads {CHECKPOINT_FORMAT!r}): train it again")  # fmt: skip
    try:
        model = FastRCNN(**config["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{model_dir / 'config.json'}: its model section does not describe a detector ({e})") from None
    try:
        state = load_file(str(model_dir / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{model_dir / 'model.safetensors'} cannot be read ({e})") from None
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"weights missing for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            details.append(
                f"weights not in the config: {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"
            )
        if wrong:
            k = wrong[0]
            details.append(f"{k} is {tuple(state[k].shape)} in the weights, {tuple(expected[k].shape)} by the config")
        raise ModelError(f"{model_dir}: config.json does not match model.safetensors ({'; '.join(details)})")
    model.load_state_dict(state)
    dataset = config.get("train", {}).get("dataset", "easy")
    if dataset not in D.DATASETS or len(D.get(dataset).classes) != model.num_classes:
        raise ModelError(
            f"{model_dir}: config.json's dataset {dataset!r} does not match its {model.num_classes} classes"
        )
    return model.eval(), config


def load(model_dir) -> FastRCNN:
    """The model of :func:`load_checkpoint`, with ``model.dataset`` set to the name of the set it was trained on."""
    model, config = load_checkpoint(model_dir)
    model.dataset = config.get("train", {}).get("dataset", "easy")
    return model


@torch.no_grad()
def detect(model: FastRCNN, image: torch.Tensor, proposals: torch.Tensor | None = None, top_n: int | None = None,
           return_proposals: bool = False):  # fmt: skip
    """Detections on one image ``(3, H, W)``: ``(boxes (D, 4), scores (D,), labels (D,))``.

    One backbone pass; the proposals are ``proposals (P, 4)`` if given, else
    the model's own (the RPN's best ``top_n``, default 300, or its sliding
    windows). Every proposal is scored for every class; its box is regressed
    with that class's deltas; per class, boxes scoring at least
    ``SCORE_THRESHOLD`` go through NMS at IoU ``NMS_IOU``; the best
    ``MAX_DETECTIONS`` are kept. ``return_proposals``: also return the
    proposals and their scores (objectness for the RPN) as a fourth item.
    """
    _, height, width = image.shape
    features = model.backbone(image[None])
    if proposals is None:
        proposals, proposal_scores = model.proposals(features, height, width, top_n)[0]
    else:
        proposal_scores = torch.ones(len(proposals))
    rois = torch.cat([proposals.new_zeros(len(proposals), 1), proposals], dim=1)
    logits, deltas = model.head(model.pool(features, rois))
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
    if out_boxes:
        boxes, scores, labels = torch.cat(out_boxes), torch.cat(out_scores), torch.cat(out_labels)
        top = torch.argsort(scores, descending=True)[:MAX_DETECTIONS]
        result = (boxes[top], scores[top], labels[top])
    else:
        result = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    return (*result, (proposals, proposal_scores)) if return_proposals else result


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


def mean_average_precision(detections, samples, num_classes: int, iou_threshold: float = 0.5,
                           classes=CLASSES) -> dict:  # fmt: skip
    """``detections``: per image ``(boxes, scores, labels)``; ``samples``: the ground truth.

    Returns ``{"map50": mean over classes, "ap50": {class name: AP}}`` (VOC all-points AP).
    """
    per_class = {}
    for c in range(1, num_classes + 1):
        scores, flags, num_gt = [], [], 0
        for (boxes, det_scores, labels), sample in zip(detections, samples, strict=True):
            sel = np.asarray(labels) == c
            gt = sample.boxes[sample.labels == c]
            num_gt += len(gt)
            s = np.asarray(det_scores)[sel]
            scores.append(s)
            flags.append(match_detections(np.asarray(boxes)[sel], s, gt, iou_threshold))
        ap = average_precision(np.concatenate(scores), np.concatenate(flags), num_gt)
        per_class[classes[c - 1] if c <= len(classes) else str(c)] = ap
    values = [v for v in per_class.values() if not np.isnan(v)]
    return {"map50": float(np.mean(values)) if values else float("nan"), "ap50": per_class}


def evaluate(model: FastRCNN, samples: list[Sample], classes=None, progress: bool = False,
             top_n: int | None = None) -> dict:  # fmt: skip
    """VOC mAP@0.5 and COCO mAP@[0.5:0.95] of ``model`` (with its own proposals) on ``samples``.

    ``classes``: the class names (default: those of the set the model was
    trained on, else the easy set's). Returns ``map50``, ``ap50`` (per class),
    ``map``, ``ap`` (COCO, per class) and ``map75``.
    """
    from .coco import coco_map

    if classes is None:
        classes = D.get(getattr(model, "dataset", "easy")).classes
    model.eval()
    dets = []
    items = samples
    if progress:
        from tqdm import tqdm

        items = tqdm(samples, desc="eval", unit="img", leave=False)
    for sample in items:
        boxes, scores, labels = detect(model, torch.from_numpy(sample.image), top_n=top_n)
        dets.append((boxes.numpy(), scores.numpy(), labels.numpy()))
    result = mean_average_precision(dets, samples, model.num_classes, classes=classes)
    result.update(coco_map(dets, samples, classes))
    return result


@torch.no_grad()
def proposal_recall(model: FastRCNN, samples: list[Sample], counts=RECALL_COUNTS, ious=RECALL_IOUS) -> dict:
    """Fraction of ground-truth boxes with a proposal at IoU >= t among the first ``k`` proposals per image.

    Returns ``{k: {t: recall}}`` for every count ``k`` and threshold ``t``.
    RPN: its best ``k`` proposals after NMS (the proposal layer run once with
    ``top_n = max(counts)``, so smaller ``k`` are its prefixes). Windows:
    ``k`` windows evenly spread over the sizes and the image (as many as the
    grid holds, if fewer).
    """
    model.eval()
    hits = {k: {t: 0 for t in ious} for k in counts}
    total = 0
    for sample in samples:
        image = torch.from_numpy(sample.image)
        gt = torch.from_numpy(sample.boxes)
        total += len(gt)
        if len(gt) == 0:
            continue
        _, height, width = image.shape
        ranked = None
        if model.rpn is not None:
            features = model.backbone(image[None])
            ranked = model.proposals(features, height, width, max(counts), pre_nms_top_n=2 * max(counts))[0][0]
        for k in counts:
            props = ranked[:k] if ranked is not None else model.windows(height, width, k)
            best = B.box_iou(gt, props).max(dim=1).values if len(props) else torch.zeros(len(gt))
            for t in ious:
                hits[k][t] += int((best >= t).sum())
    return {k: {t: hits[k][t] / max(total, 1) for t in ious} for k in counts}

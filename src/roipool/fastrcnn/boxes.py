"""Box arithmetic on tensors, the one module both detectors use: IoU, box coding, clipping, NMS.

Boxes are ``(K, 4)`` rows ``[x1, y1, x2, y2]`` in pixels, with area
``(x2 - x1) * (y2 - y1)`` (continuous coordinates).

NMS is our own (a greedy Numba loop, tested against a brute-force definition
in ``tests/test_fastrcnn_boxes.py``): the maintained one, ``torchvision.ops.nms``,
would add torchvision as a dependency for this one function.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

# Regression targets are divided by these (Fast R-CNN's normalisation), so the
# four coordinates have comparable spread.
BBOX_STD = (0.1, 0.1, 0.2, 0.2)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``a (A, 4)`` with every box in ``b (B, 4)``: ``(A, B)``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=1e-9)


def encode(proposals: torch.Tensor, targets: torch.Tensor, std=BBOX_STD) -> torch.Tensor:
    """Deltas ``(K, 4)`` taking each proposal to its target (R-CNN's parametrisation).

    ``dx = (tx - px) / pw``, ``dy = (ty - py) / ph``, ``dw = log(tw / pw)``,
    ``dh = log(th / ph)`` on centres and sizes, each divided by ``std``
    (``BBOX_STD`` for the RoI head; the RPN uses 1).
    """
    pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    px, py = proposals[:, 0] + 0.5 * pw, proposals[:, 1] + 0.5 * ph
    tw, th = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
    tx, ty = targets[:, 0] + 0.5 * tw, targets[:, 1] + 0.5 * th
    deltas = torch.stack([(tx - px) / pw, (ty - py) / ph, torch.log(tw / pw), torch.log(th / ph)], dim=1)
    return deltas / deltas.new_tensor(std)


def decode(proposals: torch.Tensor, deltas: torch.Tensor, std=BBOX_STD) -> torch.Tensor:
    """Inverse of :func:`encode`: boxes ``(K, 4)`` from proposals and deltas ``(K, 4)``."""
    d = deltas * deltas.new_tensor(std)
    # Clamp the log-size deltas so an untrained model cannot overflow exp().
    dw, dh = d[:, 2].clamp(max=4.0), d[:, 3].clamp(max=4.0)
    pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    px, py = proposals[:, 0] + 0.5 * pw, proposals[:, 1] + 0.5 * ph
    cx, cy = px + d[:, 0] * pw, py + d[:, 1] * ph
    w, h = pw * torch.exp(dw), ph * torch.exp(dh)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=1)


def clip(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    x = boxes[:, 0::2].clamp(0, width)
    y = boxes[:, 1::2].clamp(0, height)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


@numba.njit(cache=True)
def _greedy_nms(boxes, iou_threshold, max_keep):
    """Indices into ``boxes`` (sorted by falling score) kept by greedy NMS, at most ``max_keep``."""
    n = boxes.shape[0]
    suppressed = np.zeros(n, np.bool_)
    keep = np.empty(min(n, max_keep), np.int64)
    kept = 0
    for i in range(n):
        if suppressed[i]:
            continue
        keep[kept] = i
        kept += 1
        if kept == max_keep:
            break
        x1, y1, x2, y2 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
        for j in range(i + 1, n):
            if suppressed[j]:
                continue
            w = min(x2, boxes[j, 2]) - max(x1, boxes[j, 0])
            h = min(y2, boxes[j, 3]) - max(y1, boxes[j, 1])
            if w <= 0.0 or h <= 0.0:
                continue
            inter = w * h
            other = max(boxes[j, 2] - boxes[j, 0], 0.0) * max(boxes[j, 3] - boxes[j, 1], 0.0)
            # The same IoU as box_iou (union floored at 1e-9), compared in float64.
            if inter / max(area + other - inter, 1e-9) > iou_threshold:
                suppressed[j] = True
    return keep[:kept]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int | None = None) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first.

    Boxes are visited by falling score (ties: lower index first); a box is
    kept unless a kept box overlaps it with IoU > ``iou_threshold``. Stops
    after ``max_keep`` kept boxes (None: no limit), which gives the same first
    ``max_keep`` indices as running to the end and truncating.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_boxes = boxes[order].detach().to(torch.float64).numpy()
    limit = len(boxes) if max_keep is None else int(max_keep)
    keep = _greedy_nms(sorted_boxes, float(iou_threshold), max(limit, 1))
    return order[torch.from_numpy(keep)][:limit]

"""Box arithmetic on tensors: IoU, Fast R-CNN's box coding, clipping, NMS.

Boxes are ``(K, 4)`` rows ``[x1, y1, x2, y2]`` in pixels, with area
``(x2 - x1) * (y2 - y1)`` (continuous coordinates).
"""

from __future__ import annotations

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


def encode(proposals: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Deltas ``(K, 4)`` taking each proposal to its target (R-CNN's parametrisation).

    ``dx = (tx - px) / pw``, ``dy = (ty - py) / ph``, ``dw = log(tw / pw)``,
    ``dh = log(th / ph)`` on centres and sizes, each divided by ``BBOX_STD``.
    """
    pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    px, py = proposals[:, 0] + 0.5 * pw, proposals[:, 1] + 0.5 * ph
    tw, th = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
    tx, ty = targets[:, 0] + 0.5 * tw, targets[:, 1] + 0.5 * th
    deltas = torch.stack([(tx - px) / pw, (ty - py) / ph, torch.log(tw / pw), torch.log(th / ph)], dim=1)
    return deltas / deltas.new_tensor(BBOX_STD)


def decode(proposals: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode`: boxes ``(K, 4)`` from proposals and deltas ``(K, 4)``."""
    d = deltas * deltas.new_tensor(BBOX_STD)
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


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first."""
    order = torch.argsort(scores, descending=True)
    boxes = boxes[order]
    iou = box_iou(boxes, boxes)
    keep = torch.ones(len(boxes), dtype=torch.bool)
    for i in range(len(boxes)):
        if keep[i]:
            # Later (lower-scored) boxes overlapping a kept one are dropped.
            suppressed = iou[i] > iou_threshold
            suppressed[: i + 1] = False
            keep &= ~suppressed
    return order[keep]

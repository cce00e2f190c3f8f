"""The Region Proposal Network (Faster R-CNN, Ren et al. 2015) on the shared backbone.

``features (N, C, h, w)`` (stride ``STRIDE``) -> 3x3 conv, ReLU -> per cell and
anchor an objectness logit and 4 box deltas. Anchors: ``len(sizes) *
len(aspects)`` per feature-map cell, centred on the cell's centre in image
pixels. The proposal layer decodes the deltas, clips to the image, removes
boxes with a side under ``min_size``, runs NMS at IoU 0.7 and keeps the best
``post_nms_top_n``.

Training as the paper: an anchor is positive at IoU >= 0.7 with a ground-truth
box, and so is the best anchor (every anchor tying for best) of each
ground-truth box; negative below 0.3; others are ignored. 256 anchors are
sampled per image, up to half positive; the loss is the log loss on the
sampled anchors' objectness plus smooth L1 on the positives' deltas, divided by
the number sampled. One deviation: anchors crossing the image border are kept
(the paper ignores them in training), because the largest anchors here (90 px
on 192 px images) would otherwise leave objects near the border with no
anchor at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import boxes as B

# Anchor side (square root of its area) in pixels, and aspects (height / width),
# for objects of 10-90 px with aspects 0.7-1.4.
ANCHOR_SIZES = (12.0, 18.0, 27.0, 40.0, 60.0, 90.0)
ANCHOR_ASPECTS = (0.625, 1.0, 1.6)
# The RPN's deltas are not normalised (the paper's parametrisation as is).
RPN_STD = (1.0, 1.0, 1.0, 1.0)
POSITIVE_IOU, NEGATIVE_IOU = 0.7, 0.3
ANCHORS_PER_IMAGE, POSITIVE_FRACTION = 256, 0.5
NMS_IOU = 0.7
MIN_SIZE = 4.0
# Smooth L1's beta for the RPN (py-faster-rcnn's sigma = 3, beta = 1 / sigma^2).
SMOOTH_L1_BETA = 1.0 / 9.0


def make_anchors(height: int, width: int, stride: int, sizes=ANCHOR_SIZES, aspects=ANCHOR_ASPECTS) -> torch.Tensor:
    """Anchors of a ``height x width`` feature map: ``(height * width * A, 4)``, ``A = sizes x aspects``.

    Rows are ordered by cell (row-major) and then by anchor (size-major, then
    aspect), the order of :meth:`RPNHead.forward`'s outputs. The anchor of
    size ``s`` and aspect ``a`` in cell ``(i, j)`` is centred at
    ``((j + 0.5) * stride, (i + 0.5) * stride)``, ``s / sqrt(a)`` wide and
    ``s * sqrt(a)`` tall.
    """
    shapes = torch.tensor([[s / a**0.5, s * a**0.5] for s in sizes for a in aspects], dtype=torch.float32)
    half = torch.cat([-shapes / 2, shapes / 2], dim=1)  # (A, 4) around the origin
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
    return (centres + half[None]).reshape(-1, 4)


class RPNHead(nn.Module):
    """3x3 conv, ReLU, then 1x1 convs to ``A`` objectness logits and ``4 A`` deltas per cell."""

    def __init__(self, in_channels: int, num_anchors: int, channels: int = 128):
        super().__init__()
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.objectness = nn.Conv2d(channels, num_anchors, 1)
        self.deltas = nn.Conv2d(channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor):
        """``features (N, C, h, w)`` -> objectness logits ``(N, h*w*A)``, deltas ``(N, h*w*A, 4)``."""
        x = torch.relu(self.conv(features))
        n = len(features)
        logits = self.objectness(x).permute(0, 2, 3, 1).reshape(n, -1)
        deltas = self.deltas(x).permute(0, 2, 3, 1).reshape(n, -1, 4)
        return logits, deltas


def label_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor, positive_iou=POSITIVE_IOU, negative_iou=NEGATIVE_IOU):
    """Anchor labels ``(K,)``: 1 positive, 0 negative, -1 ignored; and each anchor's best ground truth ``(K,)``.

    Positive: IoU >= ``positive_iou`` with some ground-truth box, or an
    anchor whose IoU with a ground-truth box equals that box's best (ties all
    count; a box overlapping no anchor gives none). Negative: best IoU below
    ``negative_iou`` and not positive. No ground truth: every anchor negative.
    """
    labels = torch.full((len(anchors),), -1, dtype=torch.int64)
    if len(gt_boxes) == 0:
        return labels.fill_(0), torch.zeros(len(anchors), dtype=torch.int64)
    iou = B.box_iou(anchors, gt_boxes)
    best, matched = iou.max(dim=1)
    labels[best < negative_iou] = 0
    labels[best >= positive_iou] = 1
    best_per_gt = iou.max(dim=0).values
    is_best = (iou == best_per_gt[None]) & (best_per_gt[None] > 0)
    labels[is_best.any(dim=1)] = 1
    return labels, matched


def sample_anchors(
    labels: torch.Tensor, generator: torch.Generator, count=ANCHORS_PER_IMAGE, fraction=POSITIVE_FRACTION
):
    """Indices of the sampled positive and negative anchors: up to ``count * fraction`` positives, negatives fill up."""
    pos = torch.nonzero(labels == 1).flatten()
    neg = torch.nonzero(labels == 0).flatten()
    num_pos = min(int(count * fraction), len(pos))
    pos = pos[torch.randperm(len(pos), generator=generator)[:num_pos]]
    neg = neg[torch.randperm(len(neg), generator=generator)[: count - num_pos]]
    return pos, neg


def rpn_loss(logits, deltas, anchors, gt_boxes: list, generator: torch.Generator):
    """Objectness log loss and smooth L1 box loss over the sampled anchors of every image.

    ``logits (N, K)``, ``deltas (N, K, 4)``, ``anchors (K, 4)``, ``gt_boxes``:
    N tensors ``(G_i, 4)``. Both losses are divided by the number of sampled
    anchors (as the paper's ``N_cls``; its ``lambda * / N_reg`` is about the same).
    """
    cls_logits, cls_targets, box_pred, box_targets = [], [], [], []
    for i, gt in enumerate(gt_boxes):
        labels, matched = label_anchors(anchors, gt)
        pos, neg = sample_anchors(labels, generator)
        keep = torch.cat([pos, neg])
        cls_logits.append(logits[i, keep])
        cls_targets.append((labels[keep] == 1).to(logits.dtype))
        if len(pos):
            box_pred.append(deltas[i, pos])
            box_targets.append(B.encode(anchors[pos], gt[matched[pos]], RPN_STD))
    sampled = max(sum(len(t) for t in cls_targets), 1)
    cls_loss = (
        F.binary_cross_entropy_with_logits(torch.cat(cls_logits), torch.cat(cls_targets), reduction="sum") / sampled
    )
    if not box_pred:
        return cls_loss, deltas.sum() * 0
    box_loss = F.smooth_l1_loss(torch.cat(box_pred), torch.cat(box_targets), beta=SMOOTH_L1_BETA, reduction="sum")
    return cls_loss, box_loss / sampled


@torch.no_grad()
def propose(logits, deltas, anchors, height: int, width: int, pre_nms_top_n: int, post_nms_top_n: int,
            nms_iou: float = NMS_IOU, min_size: float = MIN_SIZE):  # fmt: skip
    """The proposal layer: per image, ``(boxes (P, 4), objectness (P,))`` with ``P <= post_nms_top_n``.

    The ``pre_nms_top_n`` highest-scoring anchors are decoded, clipped to the
    ``height x width`` image; boxes narrower or shorter than ``min_size`` are
    removed; NMS at ``nms_iou``; the best ``post_nms_top_n`` are kept, by
    falling objectness (a probability). Proposals are constants: no gradient
    flows back through them (approximate joint training).
    """
    out = []
    for i in range(len(logits)):
        scores = logits[i]
        top = torch.topk(scores, min(pre_nms_top_n, len(scores))).indices
        boxes = B.clip(B.decode(anchors[top], deltas[i, top], RPN_STD), height, width)
        scores = scores[top]
        big = torch.nonzero((boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size)).flatten()
        boxes, scores = boxes[big], scores[big]
        kept = B.nms(boxes, scores, nms_iou, max_keep=post_nms_top_n)
        out.append((boxes[kept], torch.sigmoid(scores[kept])))
    return out

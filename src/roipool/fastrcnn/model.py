"""The detector: a small convolutional backbone, proposals, RoI pooling, a two-layer head.

``images (N, 3, H, W)`` -> backbone -> feature map ``(N, C, H/8, W/8)``;
``rois (K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` in image pixels ->
RoI pooling to ``(K, C, 7, 7)`` -> fc6 -> fc7 -> class scores ``(K, classes + 1)``
(column 0 is background) and class-specific box deltas ``(K, 4 * classes)``.
The backbone is trained from scratch (no pretrained weights exist here).

Proposals (``proposals``): ``"windows"``, dense sliding windows that depend
only on the image size (Fast R-CNN with a fixed proposal method), or
``"rpn"``, a Region Proposal Network on the same feature map (Faster R-CNN;
``rpn.py``). :meth:`FastRCNN.proposals` gives either.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import rpn as R
from .proposals import ASPECTS, dense_proposals

STRIDE = 8  # three 2x2 max pools
CHECKPOINT_FORMAT = "roipool-fastrcnn/2"  # config.json's "format": what evaluate.load() accepts
POOLERS = ("roi_pool", "roi_align")
PROPOSALS = ("rpn", "windows")
# Test-time proposals per image: the RPN's post-NMS top N (the paper's 300) from
# its best 2000 pre-NMS; the training step's RPN keeps 1000 of 2000.
RPN_TEST_TOP_N, RPN_TEST_PRE_NMS = 300, 2000
RPN_TRAIN_TOP_N, RPN_TRAIN_PRE_NMS = 1000, 2000


class RoIPooling(nn.Module):
    """``roi_pool`` (max, Fast R-CNN) or ``roi_align`` (bilinear, Mask R-CNN) from roipool."""

    def __init__(self, kind: str, output_size: int, spatial_scale: float):
        super().__init__()
        if kind not in POOLERS:
            raise ValueError(f"pooler must be one of {POOLERS}, got {kind!r}")
        self.kind, self.output_size, self.spatial_scale = kind, output_size, spatial_scale
        from roipool import nn as layers

        if kind == "roi_pool":
            self.layer = layers.RoIPool(output_size, spatial_scale)
        else:
            if not hasattr(layers, "RoIAlign"):
                raise NotImplementedError("roi_align needs roipool.nn.RoIAlign, which has not landed yet")
            self.layer = layers.RoIAlign(output_size, spatial_scale, sampling_ratio=2, aligned=True)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return self.layer(features, rois)


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def make_backbone(channels=(32, 64, 128, 64)) -> nn.Sequential:
    """Four 3x3 conv blocks with a 2x2 max pool after each of the first three (stride 8)."""
    c1, c2, c3, c4 = channels
    return nn.Sequential(
        *_conv(3, c1), nn.MaxPool2d(2),
        *_conv(c1, c2), nn.MaxPool2d(2),
        *_conv(c2, c3), nn.MaxPool2d(2),
        *_conv(c3, c4),
    )  # fmt: skip


class FastRCNN(nn.Module):
    def __init__(
        self,
        num_classes: int = 3,
        channels=(32, 64, 128, 64),
        output_size: int = 7,
        hidden: int = 256,
        pooler: str = "roi_pool",
        proposals: str = "windows",
        window_sizes=None,
        window_aspects=None,
        window_count=None,
        anchor_sizes=R.ANCHOR_SIZES,
        anchor_aspects=R.ANCHOR_ASPECTS,
        rpn_channels: int = 128,
    ):
        super().__init__()
        if proposals not in PROPOSALS:
            raise ValueError(f"proposals must be one of {PROPOSALS}, got {proposals!r}")
        self.config = dict(
            num_classes=num_classes, channels=list(channels), output_size=output_size, hidden=hidden, pooler=pooler,
            proposals=proposals, window_sizes=None if window_sizes is None else list(window_sizes),
            window_aspects=None if window_aspects is None else list(window_aspects), window_count=window_count,
        )  # fmt: skip
        if proposals == "rpn":
            self.config.update(anchor_sizes=list(anchor_sizes), anchor_aspects=list(anchor_aspects),
                               rpn_channels=rpn_channels)  # fmt: skip
        self.num_classes, self.output_size = num_classes, output_size
        self.backbone = make_backbone(channels)
        self.rpn = None
        if proposals == "rpn":
            self.rpn = R.RPNHead(channels[-1], len(anchor_sizes) * len(anchor_aspects), rpn_channels)
        self._anchors = {}
        self.pool = RoIPooling(pooler, output_size, 1.0 / STRIDE)
        self.fc6 = nn.Linear(channels[-1] * output_size * output_size, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.cls_score = nn.Linear(hidden, num_classes + 1)
        self.bbox_pred = nn.Linear(hidden, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def head(self, pooled: torch.Tensor):
        """``pooled (K, C, 7, 7)`` -> ``(class logits (K, classes + 1), deltas (K, 4 * classes))``."""
        x = torch.relu(self.fc6(pooled.flatten(1)))
        x = torch.relu(self.fc7(x))
        return self.cls_score(x), self.bbox_pred(x)

    def forward(self, images: torch.Tensor, rois: torch.Tensor):
        """``images (N, 3, H, W)``, ``rois (K, 5)`` -> class logits and box deltas for each RoI."""
        return self.head(self.pool(self.backbone(images), rois))

    def anchors(self, features: torch.Tensor) -> torch.Tensor:
        """The RPN's anchors ``(h * w * A, 4)`` for a feature map ``(N, C, h, w)`` (cached per size)."""
        size = tuple(features.shape[-2:])
        if size not in self._anchors:
            c = self.config
            self._anchors[size] = R.make_anchors(*size, STRIDE, c["anchor_sizes"], c["anchor_aspects"])
        return self._anchors[size]

    def windows(self, height: int, width: int, count: int | None = None) -> torch.Tensor:
        """The sliding windows ``(K, 4)`` of a ``height x width`` image (``window_*`` of the config).

        ``count``: exactly this many, evenly spread over the sizes and the image
        (default: the config's ``window_count``, or the whole grid).
        """
        c = self.config
        count = c.get("window_count") if count is None else count
        sizes = None if c.get("window_sizes") is None else tuple(c["window_sizes"])
        aspects = ASPECTS if c.get("window_aspects") is None else tuple(c["window_aspects"])
        return torch.from_numpy(dense_proposals(height, width, count, sizes, aspects))

    def proposals(self, features: torch.Tensor, height: int, width: int, top_n: int | None = None,
                  pre_nms_top_n: int = RPN_TEST_PRE_NMS):  # fmt: skip
        """Proposals per image of the batch: a list of ``(boxes (P, 4), scores (P,))``.

        RPN: the proposal layer's best ``top_n`` (default ``RPN_TEST_TOP_N``),
        scores are objectness. Windows: the same windows for every image
        (``top_n`` of them, evenly spread, if given), every score 1.
        """
        if self.rpn is None:
            boxes = self.windows(height, width, top_n)
            return [(boxes, torch.ones(len(boxes)))] * len(features)
        logits, deltas = self.rpn(features)
        top_n = RPN_TEST_TOP_N if top_n is None else top_n
        return R.propose(logits, deltas, self.anchors(features), height, width, max(pre_nms_top_n, top_n), top_n)

    def compress_head(self, rank6: int, rank7: int | None = None) -> "FastRCNN":
        """Replace fc6 (and fc7) by truncated SVDs ``W ~ U_r S_r V_r^T`` (Fast R-CNN, section 3.1).

        One ``(out, in)`` layer becomes two, ``in -> r`` (``S_r V_r^T``, no bias)
        and ``r -> out`` (``U_r``, the bias): ``r * (in + out)`` multiplies per
        RoI instead of ``in * out``. In place; returns ``self``.
        """
        for name, rank in (("fc6", rank6), ("fc7", rank7)):
            layer = getattr(self, name)
            if rank is None or not isinstance(layer, nn.Linear) or rank >= min(layer.weight.shape):
                continue
            u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
            first = nn.Linear(layer.in_features, rank, bias=False)
            second = nn.Linear(rank, layer.out_features)
            with torch.no_grad():
                first.weight.copy_(s[:rank, None] * vh[:rank])
                second.weight.copy_(u[:, :rank])
                second.bias.copy_(layer.bias)
            setattr(self, name, nn.Sequential(first, second))
        return self


def multiply_adds(model: FastRCNN, height: int, width: int, rois: int) -> dict:
    """Multiply-adds of the backbone on one image and of the head on ``rois`` RoIs (for reports)."""
    backbone, h, w = 0, height, width
    for m in model.backbone:
        if isinstance(m, nn.Conv2d):
            backbone += h * w * m.in_channels * m.out_channels * int(np.prod(m.kernel_size))
        elif isinstance(m, nn.MaxPool2d):
            h, w = h // 2, w // 2
    head = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return {"backbone": backbone, "head": head * rois}

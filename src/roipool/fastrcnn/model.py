"""The Fast R-CNN network: a small convolutional backbone, RoI pooling, a two-layer head.

``images (N, 3, H, W)`` -> backbone -> feature map ``(N, C, H/8, W/8)``;
``rois (K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` in image pixels ->
RoI pooling to ``(K, C, 7, 7)`` -> fc6 -> fc7 -> class scores ``(K, classes + 1)``
(column 0 is background) and class-specific box deltas ``(K, 4 * classes)``.
The backbone is trained from scratch (no pretrained weights exist here).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

STRIDE = 8  # three 2x2 max pools
POOLERS = ("roi_pool", "roi_align")


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
    ):
        super().__init__()
        self.config = dict(
            num_classes=num_classes, channels=list(channels), output_size=output_size, hidden=hidden, pooler=pooler
        )
        self.num_classes, self.output_size = num_classes, output_size
        self.backbone = make_backbone(channels)
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

"""The named workloads of ``roipool bench``: feature maps and boxes made from a seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def as_channels_last(x: np.ndarray) -> np.ndarray:
    """The same ``(N, C, H, W)`` values in channels-last memory: a view of an ``(N, H, W, C)`` array
    (``torch.from_numpy`` of it is a ``torch.channels_last`` tensor)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    images: int
    channels: int
    height: int
    width: int
    image_h: int
    image_w: int
    boxes_per_image: int
    output_size: int
    spatial_scale: float
    sampling_ratio: int = 2
    aligned: bool = True
    # position-sensitive workloads (C = C_out * output_size**2) run only the ps_ ops, the others never
    position_sensitive: bool = False
    # run by a plain `roipool bench`; named workloads run when asked for (--workload)
    in_default_run: bool = True
    # the feature map in channels-last memory (`roipool bench --channels-last`)
    channels_last: bool = False

    def make(self, seed: int = 0):
        """Feature map ``(N, C, H, W)`` float32 and boxes ``(K, 5)`` float32.

        Box sides are log-uniform between 16 px and the image side, placed
        uniformly inside the image.
        """
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.images, self.channels, self.height, self.width), dtype=np.float32)
        k = self.images * self.boxes_per_image
        w = np.exp(rng.uniform(np.log(16), np.log(self.image_w), k))
        h = np.exp(rng.uniform(np.log(16), np.log(self.image_h), k))
        x1 = rng.uniform(0, self.image_w - w)
        y1 = rng.uniform(0, self.image_h - h)
        batch = np.repeat(np.arange(self.images), self.boxes_per_image)
        rois = np.column_stack([batch, x1, y1, x1 + w, y1 + h]).astype(np.float32)
        return (as_channels_last(x) if self.channels_last else x), rois


WORKLOADS = {
    w.name: w
    for w in [
        Workload(
            "vgg16", "600x800 image through VGG16 conv5_3, 2000 proposals", 1, 512, 38, 50, 600, 800, 2000, 7, 1 / 16
        ),
        Workload(
            "small-batch", "8 images of 256x256, stride 8, 256 proposals each", 8, 256, 32, 32, 256, 256, 256, 7, 1 / 8
        ),
        Workload(
            "tiny",
            "a smoke test: 2 images of 128x128, stride 8, 32 proposals each",
            2,
            16,
            16,
            16,
            128,
            128,
            32,
            7,
            1 / 8,
            in_default_run=False,
        ),
        Workload(
            "maskrcnn",
            "Mask R-CNN-like: the P2 level of an 800x1088 image (1x256x200x272, stride 4), 512 proposals, 14x14",
            1,
            256,
            200,
            272,
            800,
            1088,
            512,
            14,
            1 / 4,
            in_default_run=False,
        ),
        Workload(
            "rfcn",
            "R-FCN head: 600x800 image, stride 16, 7x7 bins x 21 classes, 2000 proposals",
            1,
            7 * 7 * 21,
            38,
            50,
            600,
            800,
            2000,
            7,
            1 / 16,
            position_sensitive=True,
        ),
    ]
}


@dataclass(frozen=True)
class PyramidWorkload:
    """An FPN pyramid pooled by ``MultiScaleRoIAlign`` (op ``multi_scale_roi_align``).

    Levels P2-P5 (strides 4 to 32) of ``images`` images of ``image_h x image_w``;
    box sides log-uniform between 16 px and the image side.
    """

    name: str
    description: str
    images: int
    channels: int
    image_h: int
    image_w: int
    boxes_per_image: int
    output_sizes: tuple
    sampling_ratio: int = 2
    strides: tuple = (4, 8, 16, 32)
    devices: tuple = ("cuda",)  # 592 MB of maps and GBs of gradients: too large for a CPU run by default
    channels_last: bool = False  # every level in channels-last memory

    def make(self, seed: int = 0):
        """``({"p2": (N, C, H/4, W/4), ...}, [boxes (L, 4)] * N)``, float32 NumPy arrays."""
        rng = np.random.default_rng(seed)
        maps = {
            f"p{2 + i}": rng.standard_normal(
                (self.images, self.channels, -(-self.image_h // s), -(-self.image_w // s)), dtype=np.float32
            )
            for i, s in enumerate(self.strides)
        }
        boxes = []
        for _ in range(self.images):
            w = np.exp(rng.uniform(np.log(16), np.log(self.image_w), self.boxes_per_image))
            h = np.exp(rng.uniform(np.log(16), np.log(self.image_h), self.boxes_per_image))
            x1, y1 = rng.uniform(0, self.image_w - w), rng.uniform(0, self.image_h - h)
            boxes.append(np.column_stack([x1, y1, x1 + w, y1 + h]).astype(np.float32))
        if self.channels_last:
            maps = {name: as_channels_last(m) for name, m in maps.items()}
        return maps, boxes


PYRAMID_WORKLOADS = {
    w.name: w
    for w in [
        PyramidWorkload(
            "maskrcnn-fpn",
            "Mask R-CNN-like: FPN P2-P5 of 8 images at 800x1088, 256 channels, 512 boxes each",
            8,
            256,
            800,
            1088,
            512,
            (7, 14),
        ),
    ]
}


# rotated RoIAlign: the dota workload


@dataclass(frozen=True)
class RotatedWorkload(Workload):
    def make(self, seed: int = 0):
        """Feature map ``(N, C, H, W)`` float32 and rotated boxes ``(K, 6)`` ``[n, cx, cy, w, h, angle]``:
        sides log-uniform between 16 px and ``max_side``, centres uniform in the image, angles uniform."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.images, self.channels, self.height, self.width), dtype=np.float32)
        k = self.images * self.boxes_per_image
        w, h = np.exp(rng.uniform(np.log(16), np.log(512), (2, k)))
        cx, cy = rng.uniform(0, self.image_w, k), rng.uniform(0, self.image_h, k)
        angle = rng.uniform(-np.pi, np.pi, k)
        batch = np.repeat(np.arange(self.images), self.boxes_per_image)
        rois = np.column_stack([batch, cx, cy, w, h, angle]).astype(np.float32)
        return (as_channels_last(x) if self.channels_last else x), rois


WORKLOADS["dota"] = RotatedWorkload(
    "dota", "1024x1024 aerial image, stride 8, 2000 rotated boxes (sides 16-512 px, any angle)",
    1, 256, 128, 128, 1024, 1024, 2000, 7, 1 / 8,
    in_default_run=False,  # OpenVINO's ROIAlignRotated, the peer, takes minutes a call here
)  # fmt: skip

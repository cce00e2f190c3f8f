"""A generated detection data set: coloured shapes on textured, noisy backgrounds.

Every image is a pure function of ``(seed, split, index)``, so a data set is
reproducible and any other seed gives a fresh, held-out one. NumPy only.

An image is ``float32 (3, H, W)`` in ``[0, 1]``; its targets are ``boxes
float32 (G, 4)`` as ``[x1, y1, x2, y2]`` in pixels (``x2``/``y2`` one past the
last covered pixel) and ``labels int64 (G,)`` in ``1..len(CLASSES)`` (0 is
background). A box is the whole shape's extent, also where another shape
hides part of it (as VOC annotates occluded objects).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("circle", "square", "triangle")
# Each class has its own hue band (shape and colour both tell the classes
# apart, which keeps a from-scratch model on a laptop CPU accurate), jittered
# per object; saturation and brightness vary freely.
_HUE = {"circle": 0.0, "square": 0.33, "triangle": 0.62}
_HUE_JITTER = 0.07

IMAGE_SIZE = 128
MIN_SIDE, MAX_SIDE = 16, 52
MAX_OBJECTS = 4
# Objects may overlap partially: a new shape is rejected if its box overlaps
# an earlier one with IoU above this.
MAX_OVERLAP_IOU = 0.3

TRAIN, VALIDATION, TEST = 0, 1, 2


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # float32 (3, H, W)
    boxes: np.ndarray  # float32 (G, 4)
    labels: np.ndarray  # int64 (G,)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour blobs, optional stripes, and pixel noise."""
    coarse = rng.uniform(0.15, 0.6, (3, 5, 5))
    # Bilinear upsampling of a 5x5 grid gives smooth colour variation.
    t = np.linspace(0, 4, size)
    i0 = np.minimum(t.astype(int), 3)
    f = (t - i0)[None, :]
    rows = coarse[:, i0, :] * (1 - f[..., None]) + coarse[:, i0 + 1, :] * f[..., None]
    img = rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f
    img = img * rng.uniform(0.6, 1.0, (3, 1, 1))  # desaturate
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:size, 0:size]
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 20)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period
        img = img + rng.uniform(0.04, 0.12) * np.sin(phase)[None]
    img = img + rng.normal(0, rng.uniform(0.02, 0.08), img.shape)
    return img


def _shape_mask(kind: str, x1: int, y1: int, w: int, h: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if kind == "circle":  # an ellipse, when the aspect is not 1
        rx, ry = w / 2, h / 2
        return ((xx - x1 - rx) / rx) ** 2 + ((yy - y1 - ry) / ry) ** 2 <= 1.0
    if kind == "square":  # a rectangle, when the aspect is not 1
        return (xx >= x1) & (xx < x1 + w) & (yy >= y1) & (yy < y1 + h)
    # An upright isosceles triangle with its apex at the top middle.
    depth = (yy - y1) / h
    return (depth >= 0) & (depth <= 1) & (np.abs(xx - x1 - w / 2) <= depth * w / 2)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (area + areas - inter)


def make_sample(seed: int, split: int, index: int, size: int = IMAGE_SIZE) -> Sample:
    """Image ``index`` of ``split`` (TRAIN, VALIDATION, TEST) for ``seed``."""
    rng = np.random.default_rng([int(seed), int(split), int(index)])
    img = _background(rng, size)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    wanted = int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(wanted * 10):
        if len(boxes) == wanted:
            break
        label = int(rng.integers(1, len(CLASSES) + 1))
        kind = CLASSES[label - 1]
        side = np.exp(rng.uniform(np.log(MIN_SIDE), np.log(MAX_SIDE)))
        aspect = np.exp(rng.uniform(np.log(0.6), np.log(1.6)))  # height / width
        w = int(np.clip(round(side / np.sqrt(aspect)), MIN_SIDE * 0.75, size - 2))
        h = int(np.clip(round(side * np.sqrt(aspect)), MIN_SIDE * 0.75, size - 2))
        x1 = int(rng.integers(0, size - w + 1))
        y1 = int(rng.integers(0, size - h + 1))
        box = np.array([x1, y1, x1 + w, y1 + h], np.float32)
        if boxes and _iou(box, np.array(boxes)).max() > MAX_OVERLAP_IOU:
            continue
        mask = _shape_mask(kind, x1, y1, w, h, size)
        hue = (_HUE[kind] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)) % 1.0
        colour = _hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.65, 1.0))
        img[:, mask] = colour[:, None] + rng.normal(0, 0.03, (3, int(mask.sum())))
        boxes.append(box)
        labels.append(label)
    return Sample(
        image=np.clip(img, 0, 1).astype(np.float32),
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        labels=np.array(labels, np.int64),
    )


def make_set(seed: int, split: int, count: int, size: int = IMAGE_SIZE) -> list[Sample]:
    return [make_sample(seed, split, i, size) for i in range(count)]

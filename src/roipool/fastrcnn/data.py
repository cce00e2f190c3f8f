"""Generated detection data sets: shapes on textured, noisy backgrounds.

Two sets, chosen by name (``DATASETS``; ``--dataset`` on the command line):

- ``hard`` (the default): six shape classes whose colour is drawn
  independently of the class, so only shape tells them apart; 10-90 px
  objects, 1-8 per image with more overlap, on 192x192 textured backgrounds
  with distractor blobs that are not objects (``make_hard_sample``).
- ``easy``: three classes, each with its own hue band, 16-52 px, 1-4 per
  image on 128x128 (``make_sample``; the speed and demo figures use it).

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
    """``count`` images of the easy set (see :meth:`Dataset.make_set` for any set)."""
    return [make_sample(seed, split, i, size) for i in range(count)]


# --- the harder set: only shape tells the classes apart ---------------------------------------

HARD_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")
HARD_IMAGE_SIZE = 192
HARD_MIN_SIDE, HARD_MAX_SIDE = 10, 90
HARD_MAX_OBJECTS = 8
HARD_MAX_OVERLAP_IOU = 0.4
HARD_MAX_DISTRACTORS = 3


def _hard_mask(kind: str, w: int, h: int) -> np.ndarray:
    """Boolean ``(h, w)`` mask of a shape filling a ``w x h`` box (pixel centres sampled)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    u, v = 2 * xx / w - 1, 2 * yy / h - 1  # [-1, 1] across the box
    if kind == "circle":  # an ellipse when the aspect is not 1
        return u * u + v * v <= 1.0
    if kind == "square":  # a rectangle when the aspect is not 1
        return np.ones((h, w), bool)
    if kind == "triangle":  # upright isosceles, apex at the top middle
        depth = (v + 1) / 2
        return np.abs(u) <= depth
    if kind == "cross":  # a plus sign, arms a third of the box thick
        return (np.abs(u) <= 1 / 3) | (np.abs(v) <= 1 / 3)
    if kind == "ring":  # an annulus, inner radius 0.55 of the outer
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    # A five-pointed star, point up: inside if the radius is below the star's
    # boundary at that angle (outer radius 1, inner 0.45, linear between).
    angle = np.arctan2(u, -v)  # 0 at the top, clockwise
    sector = np.mod(angle, 2 * np.pi / 5) / (2 * np.pi / 5)  # 0..1 between two points
    t = np.abs(sector - 0.5) * 2  # 1 at a point, 0 at the notch between two
    boundary = 0.45 + 0.55 * t
    # The star's outline is straight between points; this radial interpolation
    # bows it slightly, which does not matter for a class that is a shape.
    return np.sqrt(u * u + v * v) <= boundary


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour blobs, then stripes, checks or coarse grain, then pixel noise (float32 throughout)."""
    coarse = rng.uniform(0.15, 0.6, (3, 6, 6)).astype(np.float32) * rng.uniform(0.6, 1.0, (3, 1, 1)).astype(np.float32)
    # Bilinear upsampling of a 6x6 grid gives smooth colour variation.
    t = np.linspace(0, 5, size, dtype=np.float32)
    i0 = np.minimum(t.astype(int), 4)
    f = (t - i0)[None, :]
    rows = coarse[:, i0, :] * (1 - f[..., None]) + coarse[:, i0 + 1, :] * f[..., None]
    img = rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f
    axis = np.arange(size, dtype=np.float32)
    kind = rng.integers(0, 3)
    if kind == 0:  # stripes of any angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 20)
        phase = (axis[None, :] * np.cos(angle) + axis[:, None] * np.sin(angle)) * np.float32(2 * np.pi / period)
        img += np.float32(rng.uniform(0.04, 0.12)) * np.sin(phase)[None]
    elif kind == 1:  # soft checks
        period = rng.uniform(8, 24)
        checks = np.sign(np.sin(axis[None, :] * np.pi / period) * np.sin(axis[:, None] * np.pi / period))
        img += np.float32(rng.uniform(0.03, 0.08)) * checks.astype(np.float32)[None]
    else:  # coarse grain: noise at a quarter of the resolution, repeated
        grain = rng.standard_normal((3, size // 4 + 1, size // 4 + 1), dtype=np.float32) * rng.uniform(0.03, 0.08)
        img += grain.repeat(4, axis=1).repeat(4, axis=2)[:, :size, :size]
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(0.02, 0.08))
    return img


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """Any hue, fairly saturated and bright: drawn without looking at the class."""
    return _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.45, 1.0), rng.uniform(0.5, 1.0))


def _paint(img, rng, mask, x1, y1, colour) -> None:
    h, w = mask.shape
    region = img[:, y1 : y1 + h, x1 : x1 + w]
    # A gentle left-to-right shading, so a shape is not one flat colour.
    shade = 1 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, w)[None, :]
    fill = colour[:, None, None] * shade[None] + rng.standard_normal((3, h, w), dtype=np.float32) * np.float32(0.03)
    region[:, mask] = fill[:, mask]


def _distractor(img, rng, size: int) -> None:
    """A lumpy blob of 3-5 overlapping discs: clutter that is none of the classes."""
    radius = rng.uniform(4, 12)
    cx, cy = rng.uniform(2 * radius, size - 2 * radius, 2)
    x0, y0 = int(max(cx - 2 * radius, 0)), int(max(cy - 2 * radius, 0))
    x1, y1 = int(min(cx + 2 * radius, size)), int(min(cy + 2 * radius, size))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    mask = np.zeros(xx.shape, bool)
    for _ in range(int(rng.integers(3, 6))):
        # Offsets of half a radius keep the discs merged into one irregular lump.
        ox, oy = rng.normal(0, 0.5 * radius, 2)
        r = radius * rng.uniform(0.5, 0.9)
        mask |= (xx - cx - ox) ** 2 + (yy - cy - oy) ** 2 <= r * r
    colour = _random_colour(rng)
    region = img[:, y0:y1, x0:x1]
    region[:, mask] = colour[:, None] + rng.normal(0, 0.05, (3, int(mask.sum())))


def make_hard_sample(seed: int, split: int, index: int, size: int = HARD_IMAGE_SIZE) -> Sample:
    """Image ``index`` of ``split`` of the harder set for ``seed`` (labels index ``HARD_CLASSES``).

    Distractor blobs are painted first, so objects may cover them; the colour
    of an object is drawn after its class from a stream that never reads the
    class (``_random_colour``), so colour carries no information about it.
    """
    rng = np.random.default_rng([int(seed), int(split), int(index), 1])
    img = _texture(rng, size)
    for _ in range(int(rng.integers(0, HARD_MAX_DISTRACTORS + 1))):
        _distractor(img, rng, size)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    wanted = int(rng.integers(1, HARD_MAX_OBJECTS + 1))
    for _ in range(wanted * 10):
        if len(boxes) == wanted:
            break
        label = int(rng.integers(1, len(HARD_CLASSES) + 1))
        side = np.exp(rng.uniform(np.log(HARD_MIN_SIDE), np.log(HARD_MAX_SIDE)))
        aspect = np.exp(rng.uniform(np.log(0.7), np.log(1.4)))  # height / width
        w = int(np.clip(round(side / np.sqrt(aspect)), HARD_MIN_SIDE, size - 2))
        h = int(np.clip(round(side * np.sqrt(aspect)), HARD_MIN_SIDE, size - 2))
        x1 = int(rng.integers(0, size - w + 1))
        y1 = int(rng.integers(0, size - h + 1))
        colour = _random_colour(rng)
        box = np.array([x1, y1, x1 + w, y1 + h], np.float32)
        if boxes and _iou(box, np.array(boxes)).max() > HARD_MAX_OVERLAP_IOU:
            continue
        _paint(img, rng, _hard_mask(HARD_CLASSES[label - 1], w, h), x1, y1, colour)
        boxes.append(box)
        labels.append(label)
    return Sample(
        image=np.clip(img, 0, 1).astype(np.float32),
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        labels=np.array(labels, np.int64),
    )


@dataclass(frozen=True)
class Dataset:
    """A named generated set: its classes, image side and sample function."""

    name: str
    classes: tuple
    image_size: int
    max_objects: int
    sample_fn: object  # (seed, split, index) -> Sample

    def make_sample(self, seed: int, split: int, index: int) -> Sample:
        return self.sample_fn(seed, split, index)

    def make_set(self, seed: int, split: int, count: int) -> list[Sample]:
        return [self.sample_fn(seed, split, i) for i in range(count)]


DATASETS = {
    "hard": Dataset("hard", HARD_CLASSES, HARD_IMAGE_SIZE, HARD_MAX_OBJECTS, make_hard_sample),
    "easy": Dataset("easy", CLASSES, IMAGE_SIZE, MAX_OBJECTS, make_sample),
}
DEFAULT_DATASET = "hard"


def get(name: str) -> Dataset:
    """The data set called ``name`` (one of ``DATASETS``)."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {name!r}")
    return DATASETS[name]

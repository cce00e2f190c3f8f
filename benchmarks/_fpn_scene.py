"""The feature-pyramid scene that ``pyramid_step.py`` and ``jax_pyramid.py`` time (one image)."""

from __future__ import annotations

import numpy as np

HEIGHT, WIDTH, BOXES = 800, 1088, 512


def fpn_scene(rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """``(features, boxes)``: P2 to P5 of one 800 x 1088 image (strides 4 to 32, 256 channels,
    float32) and 512 boxes ``(x1, y1, x2, y2)`` float32 with sides log-uniform from 16 to 800 px,
    drawn from ``rng`` in that order."""
    features = [rng.standard_normal((1, 256, HEIGHT // s, WIDTH // s), np.float32) for s in (4, 8, 16, 32)]
    corner = rng.uniform(0, [WIDTH, HEIGHT], (BOXES, 2))
    sides = np.exp(rng.uniform(np.log(16), np.log(800), (BOXES, 2)))
    boxes = np.concatenate([corner, np.minimum(corner + sides, [WIDTH, HEIGHT])], 1).astype(np.float32)
    return features, boxes

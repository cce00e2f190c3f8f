"""Draw docs/images/roi-align-rotated.png: the rotated sampling grid of roi_align_rotated.

Run from the repository root: ``python docs/images/make_roi_align_rotated.py``.
Every position drawn comes from ``roipool.reference.roi_align_rotated_samples``.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from roipool import reference  # noqa: E402

HEIGHT, WIDTH = 8, 10


def box_corners(cx, cy, w, h, theta):
    """Corners of the box in map coordinates (aligned: centre shifted by half a cell)."""
    corners = []
    for v, u in ((-h / 2, -w / 2), (-h / 2, w / 2), (h / 2, w / 2), (h / 2, -w / 2), (-h / 2, -w / 2)):
        corners.append((v * math.sin(theta) + u * math.cos(theta) + cx, v * math.cos(theta) - u * math.sin(theta) + cy))
    return np.array(corners)


def draw(ax, roi, title, sampling_ratio, pooled=(2, 3)):
    ax.set_xlim(-2.2, WIDTH + 1.2)
    ax.set_ylim(HEIGHT + 1.2, -2.2)  # image convention: y grows downwards
    ax.set_aspect("equal")
    ax.add_patch(plt.Rectangle((-1, -1), WIDTH + 1, HEIGHT + 1, fill=False, ls=":", ec="0.5"))
    ax.add_patch(plt.Rectangle((0, 0), WIDTH - 1, HEIGHT - 1, fill=False, ec="0.3"))
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    ax.plot(xx, yy, ".", color="0.75", ms=3)
    cx, cy, w, h, theta = roi[1] - 0.5, roi[2] - 0.5, roi[3], roi[4], roi[5]
    ax.plot(*box_corners(cx, cy, w, h, theta).T, color="tab:blue", lw=1.5)
    bins, count = reference.roi_align_rotated_samples(roi, 1.0, *pooled, sampling_ratio, True, False, HEIGHT, WIDTH, np.float64)
    for (ph, pw), samples in bins.items():
        colour = plt.cm.tab10((ph * pooled[1] + pw + 1) % 10)
        for y, x, taps in samples:
            ax.plot(x, y, "o", ms=4, color=colour if taps else "white", mec=colour)
            for row, col, weight in taps:
                if weight > 0:
                    ax.plot([x, col], [y, row], "-", color=colour, lw=0.4 + 1.5 * weight, alpha=0.6)
    ax.set_title(f"{title}\n{count} samples per bin", fontsize=9)
    ax.tick_params(labelsize=7)


def main():
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    draw(axes[0], np.array([0, 5.0, 4.5, 6.0, 3.0, math.pi / 6]), "angle pi/6, sampling_ratio=2", 2)
    draw(axes[1], np.array([0, 1.0, 7.5, 6.0, 4.0, -math.pi / 3]), "past the border (hollow: reads nothing)", 2)
    draw(axes[2], np.array([0, 5.5, 4.0, 7.0, 5.0, 2.0]), "adaptive: ceil(h / 2) x ceil(w / 3)", -1)
    fig.text(
        0.5, 0.01,
        "grey dots: cell centres; solid rectangle: [0, H-1] x [0, W-1] (interpolated); dotted: [-1, H] x [-1, W] "
        "(clamped to the border); lines: bilinear taps, width = weight",
        ha="center", fontsize=8,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out = Path(__file__).with_name("roi-align-rotated.png")
    fig.savefig(out, dpi=90)
    print(out)


if __name__ == "__main__":
    main()

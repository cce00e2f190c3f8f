"""``roipool demo``: RoI max pooling worked through step by step on the classic example."""

from __future__ import annotations

import numpy as np

from . import _checks
from .reference import c_round

# The classic teaching example: an 8x8 feature map (one channel) and one
# proposal given in image coordinates, pooled to 2x2.
FEATURE_MAP = np.array(
    [
        [0.88, 0.44, 0.14, 0.16, 0.37, 0.77, 0.96, 0.27],
        [0.19, 0.45, 0.57, 0.16, 0.63, 0.29, 0.71, 0.70],
        [0.66, 0.26, 0.82, 0.64, 0.54, 0.73, 0.59, 0.26],
        [0.85, 0.34, 0.76, 0.84, 0.29, 0.75, 0.62, 0.25],
        [0.32, 0.74, 0.21, 0.39, 0.34, 0.03, 0.33, 0.48],
        [0.20, 0.14, 0.16, 0.13, 0.73, 0.65, 0.96, 0.32],
        [0.19, 0.69, 0.09, 0.86, 0.88, 0.07, 0.01, 0.48],
        [0.83, 0.24, 0.97, 0.04, 0.24, 0.35, 0.50, 0.91],
    ],
    dtype=np.float32,
)
# [batch_index, x1, y1, x2, y2] in image pixels; the map has stride 32.
PROPOSAL = np.array([0, 0, 96, 220, 224], dtype=np.float32)
SPATIAL_SCALE = 1 / 32
OUTPUT_SIZE = (2, 2)


def _fmt(a) -> str:
    return np.array2string(np.asarray(a), precision=2, floatmode="fixed", separator=" ")


def walk_through(print=print) -> np.ndarray:
    """Print each step for the embedded example; return the pooled output."""
    import roipool

    x = FEATURE_MAP[None, None]
    ph, pw = _checks.output_size_pair(OUTPUT_SIZE)
    height, width = FEATURE_MAP.shape
    scale = np.float32(SPATIAL_SCALE)
    print(f"RoI max pooling, step by step (feature map {height}x{width}, output {ph}x{pw})\n")
    print("Feature map (one channel):")
    print(_fmt(FEATURE_MAP))
    _, x1, y1, x2, y2 = PROPOSAL
    print(f"\n1. Proposal in image pixels: x1={x1:g} y1={y1:g} x2={x2:g} y2={y2:g}")
    corners = [c_round(np.float32(v) * scale) for v in (x1, y1, x2, y2)]
    print(
        f"2. Scale by spatial_scale=1/{round(1 / SPATIAL_SCALE)} and round half away from zero:\n"
        f"   x: {x1:g}->{x1 * scale:g}->{corners[0]}, {x2:g}->{x2 * scale:g}->{corners[2]}; "
        f"y: {y1:g}->{y1 * scale:g}->{corners[1]}, {y2:g}->{y2 * scale:g}->{corners[3]}"
    )
    rx1, ry1, rx2, ry2 = corners
    roi_h, roi_w = max(ry2 - ry1 + 1, 1), max(rx2 - rx1 + 1, 1)
    print(f"3. The RoI covers rows {ry1}..{ry2} and columns {rx1}..{rx2} (ends included): {roi_h}x{roi_w} cells")
    print("   (neighbouring bins may share a row or column: floor and ceil both round outwards)")
    bin_h, bin_w = np.float32(roi_h) / ph, np.float32(roi_w) / pw
    print(f"4. Bins are {roi_h}/{ph}={bin_h:g} rows by {roi_w}/{pw}={bin_w:g} columns; floor starts, ceil ends:")
    out, argmax = roipool.roi_pool_with_argmax(x, PROPOSAL[None], OUTPUT_SIZE, SPATIAL_SCALE)
    for i in range(ph):
        r0 = min(max(int(np.floor(i * bin_h)) + ry1, 0), height)
        r1 = min(max(int(np.ceil((i + 1) * bin_h)) + ry1, 0), height)
        for j in range(pw):
            c0 = min(max(int(np.floor(j * bin_w)) + rx1, 0), width)
            c1 = min(max(int(np.ceil((j + 1) * bin_w)) + rx1, 0), width)
            where = divmod(int(argmax[0, 0, i, j]), width)
            print(f"   bin ({i},{j}): rows {r0}..{r1 - 1}, columns {c0}..{c1 - 1}")
            print("      " + _fmt(FEATURE_MAP[r0:r1, c0:c1]).replace("\n", "\n      "))
            print(f"      maximum {out[0, 0, i, j]:.2f} at row {where[0]}, column {where[1]}")
    print(f"5. Pooled output ({ph}x{pw}):")
    print("   " + _fmt(out[0, 0]).replace("\n", "\n   "))
    return out


def batch_example(print=print, seed: int = 0):
    """A batch of proposals on a larger map: shapes in, shapes out."""
    import roipool

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 256, 38, 50)).astype(np.float32)
    side = np.exp(rng.uniform(np.log(16), np.log(600), (300, 2)))
    x1 = rng.uniform(0, 800 - side[:, 0])
    y1 = rng.uniform(0, 600 - side[:, 1])
    boxes = [np.column_stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]])[i::2].astype(np.float32) for i in range(2)]
    out = roipool.roi_pool(x, boxes, 7, 1 / 16)
    print("\nA batch: 2 images of 600x800 pixels through a stride-16 backbone")
    print(f"   feature map {x.shape} (N, C, H, W), boxes {[b.shape for b in boxes]} per image")
    print(f"   roi_pool(..., output_size=7, spatial_scale=1/16) -> {out.shape} (K, C, 7, 7)")
    return out


def pictures(out_dir, print=print) -> list:
    """Draw the worked example and the proposals picture into ``out_dir``; print and return the paths.

    Needs matplotlib (the ``viz`` extra); without it, says so and draws nothing.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("\n(pictures skipped: install matplotlib, e.g. pip install 'roipool[viz]')")
        return []
    from pathlib import Path

    from . import viz

    out_dir = Path(out_dir)
    paths = [
        viz.forward_pass_figure(out_dir / "roi-pool-forward.png", FEATURE_MAP, PROPOSAL, SPATIAL_SCALE, OUTPUT_SIZE),
        viz.proposals_figure(out_dir / "roi-pool-proposals.png"),
    ]
    print("\nPictures:")
    print(f"   {paths[0]}  (the walk-through above: bins, each bin's maximum, the pooled grid)")
    print(f"   {paths[1]}  (proposals on a generated image beside their 7x7 pooled outputs)")
    return paths


def main(print=print, out_dir=None) -> None:
    walk_through(print)
    batch_example(print)
    if out_dir is not None:
        pictures(out_dir, print)

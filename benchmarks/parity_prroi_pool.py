"""Hand-run parity check of prroi_pool against its oracles (no peer exists on the CPU).

Random cases (maps up to 14x14, boxes past the map, inverted, tiny, float32
and float64) through the NumPy frontend, compared with the float64 reference
(values, input gradient, box gradient), and a smaller set of bins compared
with scipy's adaptive quadrature of the interpolant. Run from the project
root: ``python benchmarks/parity_prroi_pool.py [cases]``. Prints the counts
quoted in the report and docs.
"""

from __future__ import annotations

import sys

sys.path[:0] = ["src", "."]

import numpy as np  # noqa: E402
from tests.helpers import random_rois  # noqa: E402
from tests.test_prroi_pool import integrated_bin  # noqa: E402

import roipool  # noqa: E402
import roipool.reference as ref  # noqa: E402


def main(cases: int) -> None:
    rng = np.random.default_rng(2026)
    worst = {}
    counts = {}

    def note(key, got, want):
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        err = float(np.abs(got - want).max(initial=0.0)) / scale
        worst[key] = max(worst.get(key, 0.0), err)
        counts[key] = counts.get(key, 0) + got.size

    for case in range(cases):
        dtype = (np.float32, np.float64)[case % 2]
        n, c = int(rng.integers(1, 3)), int(rng.integers(1, 6))
        h, w = int(rng.integers(1, 15)), int(rng.integers(1, 15))
        scale = float(rng.choice([1.0, 0.5, 0.25, 2.0]))
        size = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        rois = random_rois(rng, int(rng.integers(1, 8)), n, h, w, scale)
        out = roipool.prroi_pool(x, rois, size, scale)
        r = rois.astype(dtype)
        note(f"forward {np.dtype(dtype).name}", out, ref.prroi_pool(x, r, *size, scale))
        g = rng.standard_normal(out.shape).astype(dtype)
        note(
            f"input grad {np.dtype(dtype).name}",
            roipool.prroi_pool_backward(g, rois, x.shape, size, scale),
            ref.prroi_pool_backward(g, r, x.shape, scale),
        )
        note(
            f"box grad {np.dtype(dtype).name}",
            roipool.prroi_pool_boxes_backward(g, x, rois, size, scale)[:, 1:],
            ref.prroi_pool_boxes_backward(g, x, r, scale)[:, 1:],
        )
    # quadrature: float64, bins of upright boxes
    for _ in range(cases // 10):
        x = rng.standard_normal((1, 1, 6, 7))
        rois = random_rois(rng, 2, 1, 6, 7, 1.0)
        rois[:, 1:] = np.column_stack(
            [np.minimum(rois[:, 1], rois[:, 3]), np.minimum(rois[:, 2], rois[:, 4]),
             np.maximum(rois[:, 1], rois[:, 3]) + 0.1, np.maximum(rois[:, 2], rois[:, 4]) + 0.1]
        )  # fmt: skip
        out = roipool.prroi_pool(x, rois, 2)
        want = np.zeros_like(out)
        for k, (_, x1, y1, x2, y2) in enumerate(rois):
            bh, bw = (y2 - y1) / 2, (x2 - x1) / 2
            for ph in range(2):
                for pw in range(2):
                    y0, x0 = y1 + ph * bh, x1 + pw * bw
                    want[k, 0, ph, pw] = integrated_bin(x[0, 0], y0, y0 + bh, x0, x0 + bw)
        note("forward vs quadrature float64", out, want)
    for key in counts:
        print(f"{key:<32} {counts[key]:>8} values  worst error {worst[key]:.2e} (relative to max(1, |largest|))")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)

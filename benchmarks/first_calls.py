"""How long the first call of each op family takes: Numba compiling its kernels, or loading them.

Run it in a fresh process with an empty cache directory, then again with the same one:

    dir=$(mktemp -d)
    NUMBA_CACHE_DIR=$dir .venv/bin/python benchmarks/first_calls.py   # compiles
    NUMBA_CACHE_DIR=$dir .venv/bin/python benchmarks/first_calls.py   # loads from the cache

Every call is on tiny float32 inputs, so what is timed is the compile (or the load), not the
work. The steps run in this order in one process, each paying only for the kernels that no
earlier step compiled.
"""

from __future__ import annotations

import time

start = time.perf_counter()

import numpy as np  # noqa: E402

import roipool  # noqa: E402

rng = np.random.default_rng(0)
x = rng.standard_normal((1, 18, 20, 20)).astype(np.float32)
x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
boxes = np.array([[0, 1, 1, 10, 12], [0, 3, 2, 18, 15]], np.float32)
rotated = np.array([[0, 8, 8, 10, 6, 0.3], [0, 10, 9, 6, 4, -0.5]], np.float32)
grad = np.ones((2, 18, 3, 3), np.float32)
grad_ps = np.ones((2, 2, 3, 3), np.float32)


def _argmax_and_backward():
    out, argmax = roipool.roi_pool_with_argmax(x, boxes, 3)
    roipool.roi_pool_backward(np.ones_like(out), argmax, boxes, x.shape)


STEPS = [
    ("roi_pool", lambda: roipool.roi_pool(x, boxes, 3)),
    ("roi_pool_with_argmax + roi_pool_backward", _argmax_and_backward),
    ("roi_pool_backward(..., input=x)", lambda: roipool.roi_pool_backward(grad, None, boxes, x.shape, input=x)),
    ("roi_align", lambda: roipool.roi_align(x, boxes, 3, 1.0, 2)),
    ("roi_align_backward", lambda: roipool.roi_align_backward(grad, boxes, x.shape, 3, 1.0, 2, False)),
    ("prroi_pool", lambda: roipool.prroi_pool(x, boxes, 3)),
    ("prroi_pool_backward", lambda: roipool.prroi_pool_backward(grad, boxes, x.shape, 3)),
    ("prroi_pool_boxes_backward", lambda: roipool.prroi_pool_boxes_backward(grad, x, boxes, 3)),
    ("roi_align_boxes_backward", lambda: roipool.roi_align_boxes_backward(grad, x, boxes, 3, 1.0, 2, True)),
    ("roi_align_rotated", lambda: roipool.roi_align_rotated(x, rotated, 3, 1.0, 2)),
    ("roi_align_rotated_backward", lambda: roipool.roi_align_rotated_backward(grad, rotated, x.shape, 3, 1.0, 2)),
    (
        "ps_roi_pool + backward",
        lambda: (roipool.ps_roi_pool(x, boxes, 3), roipool.ps_roi_pool_backward(grad_ps, boxes, x.shape, 3)),
    ),
    (
        "ps_roi_align + backward",
        lambda: (
            roipool.ps_roi_align(x, boxes, 3, 1.0, 2),
            roipool.ps_roi_align_backward(grad_ps, boxes, x.shape, 3, 1.0, 2),
        ),
    ),
    ("ps_roi_align_boxes_backward", lambda: roipool.ps_roi_align_boxes_backward(grad_ps, x, boxes, 3, 1.0, 2)),
    (
        "roi_pool + roi_align, layout='nhwc'",
        lambda: (
            roipool.roi_pool(x_nhwc, boxes, 3, layout="nhwc"),
            roipool.roi_align(x_nhwc, boxes, 3, 1.0, 2, layout="nhwc"),
        ),
    ),
]


def main() -> None:
    print(f"{'import numpy, roipool':45s} {time.perf_counter() - start:7.2f} s")
    total = 0.0
    for name, call in STEPS:
        began = time.perf_counter()
        call()
        took = time.perf_counter() - began
        total += took
        print(f"{name:45s} {took:7.2f} s")
    print(f"{'all first calls':45s} {total:7.2f} s")


if __name__ == "__main__":
    main()

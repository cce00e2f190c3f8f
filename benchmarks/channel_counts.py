"""The align kernels across channel counts: full 128-channel register blocks and the narrower rest.

Usage: ``PYTHONPATH=src python benchmarks/channel_counts.py [threads]`` (default: roipool's).
For each channel count, a 2-image 32x32 map with 64 boxes (7x7 bins, sampling 2,
aligned, float32; ``bench.Workload``), six calls: the NumPy ``roi_align``
forward on an NCHW and on an NHWC (``layout="nhwc"``) array, its backward,
``roi_align_rotated`` on the same boxes turned by 0.3 rad, ``roi_pool`` and
its backward that finds each bin's maximum again (``input=x``). Prints the median of
9 rounds of 20 calls, in us. Run it on two trees in turn (``PYTHONPATH``) to
compare them; the counts 64, 96, 192 and 245 exercise the pieces narrower than a
register block (four, two and one vector, and single channels).
"""

from __future__ import annotations

import statistics
import sys
import timeit

import numpy as np

import roipool
from roipool.bench.workloads import Workload

COUNTS = (16, 64, 96, 128, 192, 245)


def calls(channels: int) -> dict:
    x, rois = Workload("channels", "", 2, channels, 32, 32, 256, 256, 64, 7, 1 / 8).make()
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    grad = np.random.default_rng(0).standard_normal((rois.shape[0], channels, 7, 7)).astype(np.float32)
    centre, size = (rois[:, 1:3] + rois[:, 3:5]) / 2, rois[:, 3:5] - rois[:, 1:3]
    rotated = np.concatenate([rois[:, :1], centre, size, np.full((len(rois), 1), 0.3)], axis=1).astype(np.float32)
    return {
        "forward": lambda: roipool.roi_align(x, rois, 7, 1 / 8, 2, True),
        "forward nhwc": lambda: roipool.roi_align(x_nhwc, rois, 7, 1 / 8, 2, True, layout="nhwc"),
        "backward": lambda: roipool.roi_align_backward(grad, rois, x.shape, 7, 1 / 8, 2, True),
        "rotated": lambda: roipool.roi_align_rotated(x, rotated, 7, 1 / 8, 2),
        "roi_pool": lambda: roipool.roi_pool(x, rois, 7, 1 / 8),
        "roi_pool backward": lambda: roipool.roi_pool_backward(grad, None, rois, x.shape, input=x, spatial_scale=1 / 8),
    }


def main() -> None:
    if len(sys.argv) > 1:
        roipool.set_num_threads(int(sys.argv[1]))
    print(f"threads {roipool.get_num_threads()}; medians of 9 rounds of 20 calls, us")
    for channels in COUNTS:
        row = []
        for name, call in calls(channels).items():
            call()
            rounds = timeit.repeat(call, number=20, repeat=9)
            row.append(f"{name} {statistics.median(rounds) / 20 * 1e6:6.0f}")
        print(f"C {channels:3d}: " + "  ".join(row), flush=True)


if __name__ == "__main__":
    main()

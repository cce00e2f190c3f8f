"""Small and mid-size calls: one thread against all of them, and what ``launch`` chooses.

    python benchmarks/small_calls.py [repeat]

For each map and box count below, times the NumPy ``roi_align`` (sampling
ratio 2, aligned) and ``roi_pool`` forwards, NCHW, in three settings, one
after the other in one process: every kernel on the calling thread
(``_parallel.GRAIN`` set past any call), every kernel on the pool (``GRAIN``
0), and the library's own choice. ``values`` is what ``launch`` compares
with the grain for the forward kernel (the map and the output). Prints
medians of ``repeat`` calls (default 200) in ms.

Boxes are log-uniform in size from 16 px to the image side (``roipool bench``'s
rule), the image 8 times the map.
"""

from __future__ import annotations

import statistics
import sys
import time

import roipool
from roipool.bench.workloads import Workload
from roipool.cpu import _parallel

# (channels, height, width, boxes, output size)
SIZES = [
    (16, 16, 16, 64, 7),
    (64, 16, 16, 32, 7),
    (64, 16, 16, 48, 7),
    (64, 16, 16, 64, 7),
    (256, 16, 16, 16, 7),
    (64, 16, 16, 128, 7),
    (256, 32, 32, 64, 7),
    (512, 38, 50, 64, 7),
    (256, 38, 50, 256, 7),
]


def _median_ms(call, repeat: int) -> float:
    for _ in range(5):
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(repeat: int = 200) -> None:
    default = _parallel.GRAIN
    settings = {"one thread": 1 << 62, "all threads": 0, "chosen": default}
    print(f"threads {roipool.get_num_threads()}, GRAIN {default}, PART_VALUES {_parallel.PART_VALUES}")
    print(f"{'C  H x W  K':>18} {'values':>9}  op        " + "  ".join(f"{s:>11}" for s in settings))
    for channels, height, width, boxes, size in SIZES:
        x, rois = Workload("small", "", 1, channels, height, width, 8 * height, 8 * width, boxes, size, 1 / 8).make()
        calls = {
            "roi_align": lambda x=x, rois=rois, size=size: roipool.roi_align(x, rois, size, 1 / 8, 2, True),
            "roi_pool": lambda x=x, rois=rois, size=size: roipool.roi_pool(x, rois, size, 1 / 8),
        }
        values = x.size + boxes * channels * size * size
        for op, call in calls.items():
            times = {}
            try:
                for name, grain in settings.items():
                    _parallel.GRAIN = grain
                    times[name] = _median_ms(call, repeat)
            finally:
                _parallel.GRAIN = default
            label = f"{channels} {height}x{width} {boxes}"
            print(f"{label:>18} {values:>9}  {op:9} " + "  ".join(f"{times[s]:11.3f}" for s in settings))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)

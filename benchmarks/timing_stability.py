"""How steady one op's time is from call to call, and what the page faults have to do with it.

Usage: ``PYTHONPATH=src python benchmarks/timing_stability.py [calls] [workload] [op] [--torch] [--nhwc]``
(defaults: 40 calls, ``maskrcnn``, ``roi_align`` forward through the NumPy API;
``--torch`` calls the torch op on a tensor instead; ``--nhwc`` passes the map channels-last:
an ``(N, H, W, C)`` array with ``layout="nhwc"``, or a ``torch.channels_last`` tensor). Prints the CPU, the load,
the minimum, median and maximum time of the calls, and the minor page
faults per call (``getrusage``), so that runs under different settings
(environment variables such as ``MALLOC_MMAP_THRESHOLD_``,
``OMP_WAIT_POLICY``) can be set side by side. Each call's output is
dropped before the next call, as in a training loop.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time

import roipool
from roipool import bench


def main(
    calls: int = 40, workload: str = "maskrcnn", op: str = "roi_align", use_torch: bool = False, nhwc: bool = False
) -> None:
    w = bench.WORKLOADS[workload]
    x, rois = w.make()
    extra = {"sampling_ratio": w.sampling_ratio, "aligned": w.aligned} if op == "roi_align" else {}
    fn = getattr(roipool, op)
    if nhwc:
        x = bench.workloads.as_channels_last(x)  # NCHW-shaped, channels-last strides
    if use_torch:
        import torch

        x, rois = torch.from_numpy(x), torch.from_numpy(rois)
    elif nhwc:
        x, extra = x.transpose(0, 2, 3, 1), {**extra, "layout": "nhwc"}
    fn(x, rois, w.output_size, w.spatial_scale, **extra)  # compile or load the kernels
    times, faults = [], []
    for _ in range(calls):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        out = fn(x, rois, w.output_size, w.spatial_scale, **extra)
        times.append((time.perf_counter() - t0) * 1e3)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del out
    settings = {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "OMP_", "GOMP_", "NUMBA_NUM"))}
    print(f"cpu: {bench.machine()['cpu']}, load {os.getloadavg()[0]:.2f}, settings {settings or 'default'}")
    print(
        f"{workload} {op} forward ({'torch' if use_torch else 'numpy'}{', channels-last' if nhwc else ''}), "
        f"{calls} calls: "
        f"min {min(times):.1f} ms, median {statistics.median(times):.1f} ms, max {max(times):.1f} ms; "
        f"minor page faults per call: median {statistics.median(faults):.0f}, max {max(faults)}"
    )


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(
        int(args[0]) if args else 40,
        args[1] if len(args) > 1 else "maskrcnn",
        args[2] if len(args) > 2 else "roi_align",
        "--torch" in sys.argv,
        "--nhwc" in sys.argv,
    )

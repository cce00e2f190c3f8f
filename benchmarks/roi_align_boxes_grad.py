"""roi_align training step with and without the boxes' gradient (issue 11: within 1.5x).

Usage: ``PYTHONPATH=src python benchmarks/roi_align_boxes_grad.py [repeats] [workload]``.
The two steps are interleaved in one process and the medians compared; the
upstream gradient is made once outside the timed step. Prints the machine
(CPU model, load) beside the figures: the machine may be shared.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import roipool
from roipool import bench


def main(repeats: int = 7, workload: str = "vgg16") -> None:
    w = bench.WORKLOADS[workload]
    x, rois = w.make()
    xt = torch.from_numpy(x)
    rt = torch.from_numpy(rois)
    args = (w.output_size, w.spatial_scale, w.sampling_ratio, w.aligned)
    upstream = torch.randn(
        (rois.shape[0], x.shape[1], w.output_size, w.output_size), generator=torch.Generator().manual_seed(0)
    )

    def step(boxes_grad):
        xg = xt.detach().requires_grad_()
        rg = rt.detach().requires_grad_(boxes_grad)
        y = roipool.roi_align(xg, rg, *args)
        wanted = (xg, rg) if boxes_grad else (xg,)
        return torch.autograd.grad(y, wanted, upstream)

    times = {False: [], True: []}
    for flag in (False, True):  # warm-up: compile and cache
        step(flag)
    for _ in range(repeats):
        for flag in (False, True):
            t0 = time.perf_counter()
            step(flag)
            times[flag].append(time.perf_counter() - t0)
    without, with_ = statistics.median(times[False]), statistics.median(times[True])
    m = bench.machine()
    print(f"machine: {m}")
    print(
        f"{workload}: step without box gradient {without * 1e3:.1f} ms, with {with_ * 1e3:.1f} ms, "
        f"ratio {with_ / without:.2f}x (medians of {repeats}, interleaved; threads {roipool.get_num_threads()})"
    )


if __name__ == "__main__":
    main(*(int(a) if a.isdigit() else a for a in sys.argv[1:]))

"""Channels-last against NCHW, in one process, interleaved: what following the input's memory format costs or saves.

Usage: ``PYTHONPATH=src python benchmarks/channels_last.py [rounds] [workload ...]``
(defaults: 11 rounds, ``maskrcnn`` and ``vgg16``). For each workload, op
(``roi_align`` with the workload's sampling ratio, ``roi_pool``) and pass
(forward; forward+backward, a training step on the torch path), the torch op
is called on the contiguous map and on its channels-last copy (which gives a
channels-last output and gradient), and the NumPy function on the NCHW array
and on the NHWC array with ``layout="nhwc"``; every round runs each variant
once, in turn, each after the process's threads have been idle for 20 ms
(``bench._quiesce``). Also measured in the same rounds: the write floor,
filling a fresh array of the output's size on roipool's own threads, as the
kernels write (what any implementation must at least do with a new output on
this machine), and the warm write floor, filling one array already written (what a call costs at
least when its output reuses memory: roipool's memory cache, ``cpu/_pool.py``,
serves each call here with the memory the previous call's output freed).
Prints the CPU, the load, and medians (and minima) in ms.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numba
import numpy as np
import torch

import roipool
from roipool import bench
from roipool.cpu._parallel import launch


@numba.njit(nogil=True)
def _fill_part(flat, part, parts):
    for i in range(flat.size * part // parts, flat.size * (part + 1) // parts):
        flat[i] = 1.0


def _fill(a):
    """``a`` filled with ones by roipool's own threads, in parts, as its kernels write."""
    launch(_fill_part, a.reshape(-1), values=a.size)
    return a


def _variants(w, op):
    x, rois = w.make()
    extra = {"sampling_ratio": w.sampling_ratio, "aligned": w.aligned} if op == "roi_align" else {}
    fn = getattr(roipool, op)
    size, scale = w.output_size, w.spatial_scale
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    xt = torch.from_numpy(np.ascontiguousarray(x))
    xt_cl = xt.contiguous(memory_format=torch.channels_last)
    rt = torch.from_numpy(rois)
    out_shape = fn(xt, rt, size, scale, **extra).shape

    def torch_step(t):
        def run():
            leaf = t.detach().requires_grad_()
            y = fn(leaf, rt, size, scale, **extra)
            y.backward(torch.ones_like(y))  # ones_like keeps y's memory format
            return leaf.grad

        return run

    warm = np.empty(out_shape, np.float32)
    variants = {
        "write floor (fill a fresh output)": lambda: _fill(np.empty(out_shape, np.float32)),
        "write floor, warm (fill the same again)": lambda: _fill(warm),
        "torch NCHW forward": lambda: fn(xt, rt, size, scale, **extra),
        "torch channels-last forward": lambda: fn(xt_cl, rt, size, scale, **extra),
        "numpy NCHW forward": lambda: fn(x, rois, size, scale, **extra),
        "numpy NHWC forward": lambda: fn(xh, rois, size, scale, layout="nhwc", **extra),
        "torch NCHW forward+backward": torch_step(xt),
        "torch channels-last forward+backward": torch_step(xt_cl),
    }
    return variants


def main(rounds: int = 11, workloads=("maskrcnn", "vgg16")) -> None:
    print(f"cpu: {bench.machine()['cpu']}, threads {roipool.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    for wname in workloads:
        w = bench.WORKLOADS[wname]
        for op in ("roi_align", "roi_pool"):
            variants = _variants(w, op)
            for run in variants.values():  # compile or load the kernels, fault in the inputs
                run()
            times = {name: [] for name in variants}
            for _ in range(rounds):
                for name, run in variants.items():
                    # torch's OpenMP threads keep spinning after the steps' own torch ops, and
                    # would take the cores from whatever comes next (on maskrcnn a forward took
                    # 37 instead of 31 ms): wait until the process is idle, as the bench does
                    bench._quiesce()
                    t0 = time.perf_counter()
                    result = run()
                    times[name].append((time.perf_counter() - t0) * 1e3)
                    del result
            print(f"{wname} {op} (medians of {rounds} interleaved rounds, ms; minimum in brackets)")
            for name, ts in times.items():
                print(f"  {name:40s} {statistics.median(ts):8.1f}  ({min(ts):.1f})")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 11, tuple(args[1:]) or ("maskrcnn", "vgg16"))

"""16-bit maps: ``roi_align``'s forward on float16 and bfloat16 maps, in one process, interleaved.

Usage: ``PYTHONPATH=src python benchmarks/half_maps.py [rounds] [workload ...]`` (defaults: 11
rounds, ``maskrcnn`` and ``vgg16``). For each workload, 16-bit dtype and memory format, the torch
op is timed as it is (a channels-last map is read by the kernel in 16 bits,
``cpu/roi_align.forward_half``) and, for a channels-last map, with that kernel turned off
(``reads_half`` giving None: the map widened to float32 first, the output rounded after, the route
before it), beside float32 for scale; and Intel Extension for PyTorch's ``roi_align`` on bfloat16
and float32 where it is importable (run it from the venv that has it, with ``PYTHONPATH=src``).
Every round runs each candidate once, in turn, each after the process's threads have been idle
for 20 ms (``bench._quiesce``); the values are checked first (roipool's routes bit for bit, the
peer within 0.05). Prints the CPU and medians in ms.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import roipool
from roipool import bench
from roipool.bench.workloads import WORKLOADS
from roipool.cpu import roi_align as kernels

try:
    import intel_extension_for_pytorch as ipex
except ImportError:
    ipex = None


def _candidates(x, rois, w):
    size, scale, ratio, aligned = w.output_size, w.spatial_scale, w.sampling_ratio, w.aligned
    reads_half = kernels.reads_half

    def ours():
        return roipool.roi_align(x, rois, size, scale, ratio, aligned)

    def via_float32():
        kernels.reads_half = lambda dtype: None
        try:
            return ours()
        finally:
            kernels.reads_half = reads_half

    out = {"roipool": ours}
    if x.dtype != torch.float32 and x.is_contiguous(memory_format=torch.channels_last):
        out["roipool via float32"] = via_float32
    if ipex is not None and x.dtype != torch.float16:
        layer = ipex.nn.modules._roi_align.RoIAlign((size, size), scale, ratio, aligned=aligned)
        out["intel-extension-for-pytorch"] = lambda: layer(x, rois)
    return out


def main(rounds: int = 11, workloads=("maskrcnn", "vgg16")) -> None:
    print(f"cpu: {bench.machine()['cpu']}, threads {roipool.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    for name in workloads:
        w = WORKLOADS[name]
        x, rois = w.make()[:2]
        rt = torch.from_numpy(rois)
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for channels_last in (True, False):
                xt = torch.from_numpy(x).to(dtype)
                if channels_last:
                    xt = xt.contiguous(memory_format=torch.channels_last)
                candidates = _candidates(xt, rt, w)
                times = {k: [] for k in candidates}
                with torch.no_grad():
                    want = candidates["roipool"]()
                    for k, call in candidates.items():
                        got = call()
                        error = (got.float() - want.float()).abs().max().item()
                        bits = torch.int16 if dtype != torch.float32 else torch.int32  # NaN-free: bits
                        bitwise = k.startswith("roipool") and torch.equal(got.view(bits), want.view(bits))
                        assert bitwise or (not k.startswith("roipool") and error <= 0.05), (k, error)
                    for _ in range(rounds):
                        for k, call in candidates.items():
                            bench._quiesce()
                            start = time.perf_counter()
                            call()
                            times[k].append(time.perf_counter() - start)
                layout = "channels-last" if channels_last else "NCHW"
                print(f"{name} {str(dtype)[6:]} {layout} (medians of {rounds} interleaved rounds, ms)")
                for k, ts in times.items():
                    print(f"  {k:32s} {1e3 * statistics.median(ts):8.1f}")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 11, tuple(sys.argv[2:]) or ("maskrcnn", "vgg16"))

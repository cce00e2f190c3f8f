"""16-bit maps: ``roi_align``'s forward on float16 and bfloat16 maps, in one process, interleaved.

Usage: ``PYTHONPATH=src python benchmarks/half_maps.py [rounds] [workload ...]`` (defaults: 11
rounds, ``maskrcnn`` and ``vgg16``). For each workload, 16-bit dtype and memory format, the torch
op is timed as it is (the kernels read and write 16 bits: ``cpu/roi_align.forward_half`` for a
channels-last map, the widening blocked copy for NCHW) and with that turned off (``_tiles.reads_half``
giving None: the map widened to float32 first, the output rounded after, the route before it),
beside float32 for scale; for float16 the NumPy function both ways too; and Intel Extension for
PyTorch's ``roi_align`` on bfloat16 and float32 where it is importable (run it from the venv that
has it, with ``PYTHONPATH=src``).
The torch candidates' training steps (the forward, then the gradient with respect to the map,
16-bit in and out) are timed the same way. Every round runs each candidate once, in turn, each
after the process's threads have been idle for 20 ms (``bench._quiesce``); the values are checked
first (roipool's routes bit for bit, the peer's forward within 0.05; its gradient's largest
difference is printed). ``roi_pool``'s torch forward is timed too, both ways. Prints the CPU and
medians in ms.
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
from roipool.cpu import _tiles

try:
    import intel_extension_for_pytorch as ipex
except ImportError:
    ipex = None


def _via_float32(call):
    """``call`` with the 16-bit kernels turned off (``_tiles.reads_half`` giving None): the map
    widened to float32 first and the output rounded after, the route before them."""
    reads_half = _tiles.reads_half

    def run():
        _tiles.reads_half = lambda dtype: None
        try:
            return call()
        finally:
            _tiles.reads_half = reads_half

    return run


def _both_routes(name, call, x):
    """``{name: call}``, and for a 16-bit map the same through float32 (:func:`_via_float32`)."""
    return {name: call} if x.dtype == torch.float32 else {name: call, f"{name} via float32": _via_float32(call)}


def _candidates(x, rois, w):
    """``roi_align``'s forward: torch (and NumPy for float16) both ways, and IPEX where it is importable."""
    size, scale, ratio, aligned = w.output_size, w.spatial_scale, w.sampling_ratio, w.aligned
    out = _both_routes("roipool", lambda: roipool.roi_align(x, rois, size, scale, ratio, aligned), x)
    if x.dtype == torch.float16:  # NumPy's own float16, NCHW or NHWC (layout="nhwc")
        nhwc = x.is_contiguous(memory_format=torch.channels_last)
        xn = x.permute(0, 2, 3, 1).contiguous().numpy() if nhwc else x.numpy()
        layout = "nhwc" if nhwc else "nchw"

        def numpy_call():
            return torch.from_numpy(roipool.roi_align(xn, rois.numpy(), size, scale, ratio, aligned, layout=layout))

        out.update(_both_routes("roipool NumPy", numpy_call, x))
    if ipex is not None and x.dtype != torch.float16:
        layer = ipex.nn.modules._roi_align.RoIAlign((size, size), scale, ratio, aligned=aligned)
        out["intel-extension-for-pytorch"] = lambda: layer(x, rois)
    return out


def _pool_candidates(x, rois, w):
    """``roi_pool``'s forward, torch, both ways."""
    return _both_routes("roipool roi_pool", lambda: roipool.roi_pool(x, rois, w.output_size, w.spatial_scale), x)


def _step_candidates(x, rois, w):
    """Training steps (the forward, then the gradient with respect to the map): roipool's torch
    call both ways, and IPEX's."""
    leaf = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    size, scale, ratio, aligned = w.output_size, w.spatial_scale, w.sampling_ratio, w.aligned
    with torch.no_grad():
        upstream = torch.ones_like(roipool.roi_align(x, rois, size, scale, ratio, aligned))

    def step(forward):
        return lambda: torch.autograd.grad(forward(leaf), leaf, upstream)[0]

    out = _both_routes("roipool step", step(lambda z: roipool.roi_align(z, rois, size, scale, ratio, aligned)), x)
    if ipex is not None and x.dtype != torch.float16:
        layer = ipex.nn.modules._roi_align.RoIAlign((size, size), scale, ratio, aligned=aligned)
        out["intel-extension-for-pytorch step"] = step(lambda z: layer(z, rois))
    return out


def _time(candidates, rounds, dtype, grad):
    """Medians (ms) of ``rounds`` interleaved rounds, after checking the values: roipool's routes
    bit for bit, the peer's forward within 0.05 (its gradient's largest difference is printed)."""
    times = {k: [] for k in candidates}
    with torch.set_grad_enabled(grad):
        want = candidates[next(iter(candidates))]()
        for k, call in candidates.items():
            got = call()
            if "NumPy" in k and want.is_contiguous(memory_format=torch.channels_last):
                got = got.permute(0, 3, 1, 2)  # NHWC -> the logical (K, C, PH, PW)
            error = (got.float() - want.float()).abs().max().item()
            bits = torch.int16 if dtype != torch.float32 else torch.int32  # NaN-free: bits
            if k.startswith("roipool"):
                assert torch.equal(got.view(bits), want.view(bits)), k
            elif grad:
                print(f"  ({k}: largest difference from roipool's {error:.3g})")
            else:
                assert error <= 0.05, (k, error)
        for _ in range(rounds):
            for k, call in candidates.items():
                bench._quiesce()
                start = time.perf_counter()
                call()
                times[k].append(time.perf_counter() - start)
    return {k: 1e3 * statistics.median(ts) for k, ts in times.items()}


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
                layout = "channels-last" if channels_last else "NCHW"
                print(f"{name} {str(dtype)[6:]} {layout} (medians of {rounds} interleaved rounds, ms)")
                medians = _time(_candidates(xt, rt, w), rounds, dtype, grad=False)
                medians.update(_time(_step_candidates(xt, rt, w), rounds, dtype, grad=True))
                medians.update(_time(_pool_candidates(xt, rt, w), rounds, dtype, grad=False))
                for k, ms in medians.items():
                    print(f"  {k:40s} {ms:8.1f}")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 11, tuple(sys.argv[2:]) or ("maskrcnn", "vgg16"))

"""Launch settings of the roi_pool and roi_align Triton kernels, timed against torchvision on a GPU.

``python benchmarks/gpu/sweep.py OUT.json`` times every setting in ``SETTINGS``
(lanes and warps per program, forward and backward, and the backward's way to
its (RoI, bin) pairs: ``roipool.triton._launch.TUNING``)
on ``vgg16`` and the ``maskrcnn-fpn`` pyramid, forward and forward+backward,
interleaved with torchvision's CUDA ops in one process (CUDA events, medians),
checks that every setting gives the first setting's bits, prints a table and
writes the timings as JSON. The settings change no arithmetic, only how the
work is split among programs. Without a GPU it rehearses on the CPU, on small
workloads (the settings then change nothing: the CPU path is Numba's).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys

import torch

try:
    import torchvision.ops
except ImportError:  # a rehearsal without the peer
    torchvision = None

import roipool
from roipool.bench import PYRAMID_WORKLOADS, WORKLOADS, Candidate, measure
from roipool.bench import _CudaTimer as CudaTimer
from roipool.nn import MultiScaleRoIAlign
from roipool.triton import _launch

_WALK = dict(forward_lanes=512, forward_warps=2, backward="walk")
_LISTS = dict(forward_lanes=512, forward_warps=2, backward="lists")
SETTINGS = {  # forward lanes/warps, backward lanes/warps and way; the first is the default
    "walk 256/1": dict(_WALK, backward_lanes=256, backward_warps=1),
    "walk 2048/4": dict(_WALK, backward_lanes=2048, backward_warps=4),
    "lists 256/1": dict(_LISTS, backward_lanes=256, backward_warps=1),
    "lists 1024/4": dict(_LISTS, backward_lanes=1024, backward_warps=4),
    "lists 2048/4": dict(_LISTS, backward_lanes=2048, backward_warps=4),
    "fwd 2048/4": dict(_WALK, forward_lanes=2048, forward_warps=4, backward_lanes=256, backward_warps=1),
}
REPEAT = 15
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)


def _step(call, mode, leaves):
    """One timed call: ``call()`` under no_grad, or forward+backward into ``leaves``."""
    if mode == "forward":

        def run():
            with torch.no_grad():
                y = call()
            sync()
            return y

        return run
    with torch.no_grad():
        upstream = torch.ones_like(call())

    def run():
        grads = torch.autograd.grad(call(), leaves, upstream)
        sync()
        return grads

    return run


def _with_setting(name, run):
    def timed():
        _launch.TUNING.update(SETTINGS[name])
        return run()

    return timed


def cases():
    """``(label, ours(mode) -> run, peer(mode) -> run or None)`` for each workload and op."""
    w = WORKLOADS["vgg16" if DEVICE == "cuda" else "tiny"]
    x, rois = w.make()
    xt = torch.from_numpy(x).to(DEVICE).requires_grad_(True)
    rt = torch.from_numpy(rois).to(DEVICE)
    for op, extra in (("roi_pool", {}), ("roi_align", {"sampling_ratio": 2, "aligned": True})):
        ours, peer = getattr(roipool, op), torchvision and getattr(torchvision.ops, op)
        yield (
            f"{w.name} {op}",
            lambda mode, f=ours, e=extra: _step(lambda: f(xt, rt, 7, 1 / 16, **e), mode, (xt,)),
            lambda mode, f=peer, e=extra: f and _step(lambda: f(xt, rt, 7, 1 / 16, **e), mode, (xt,)),
        )
    pw = PYRAMID_WORKLOADS["maskrcnn-fpn"]
    if DEVICE == "cpu":
        pw = dataclasses.replace(pw, images=2, channels=4, image_h=96, image_w=128, boxes_per_image=8)
    maps, boxes = pw.make()
    feats = {k: torch.from_numpy(v).to(DEVICE).requires_grad_(True) for k, v in maps.items()}
    bt = [torch.from_numpy(b).to(DEVICE) for b in boxes]
    shapes = [(pw.image_h, pw.image_w)] * pw.images
    leaves = tuple(feats.values())
    for size in pw.output_sizes:
        ours = MultiScaleRoIAlign(list(feats), size, pw.sampling_ratio)
        peer = torchvision and torchvision.ops.MultiScaleRoIAlign(list(feats), size, pw.sampling_ratio)
        yield (
            f"{pw.name if DEVICE == 'cuda' else 'pyramid (small)'} {size}x{size}",
            lambda mode, p=ours: _step(lambda: p(feats, bt, shapes), mode, leaves),
            lambda mode, p=peer: p and _step(lambda: p(feats, bt, shapes), mode, leaves),
        )


def main(path: str) -> int:
    timer = CudaTimer(torch) if DEVICE == "cuda" else None
    report = {
        "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "none (a rehearsal on the CPU)",
        "settings": SETTINGS,
        "repeat": REPEAT,
        "rows": [],
    }
    print(f"{'case':<26} {'mode':<17} " + " ".join(f"{n:>14}" for n in SETTINGS) + f" {'tv':>8}  best/tv")
    for label, ours, peer in cases():
        for mode in ("forward", "forward+backward"):
            runs = {name: _with_setting(name, ours(mode)) for name in SETTINGS}
            # every setting must give the first one's bits
            first = None
            for name, run in runs.items():
                out = run()
                out = out if isinstance(out, tuple) else (out,)
                if first is None:
                    first = out
                elif not all(torch.equal(a, b) for a, b in zip(first, out)):
                    print(f"{label} {mode}: setting {name} differs from {next(iter(SETTINGS))}")
                    return 1
            cands = [Candidate(name, run, True) for name, run in runs.items()]
            if peer(mode) is not None:
                cands.append(Candidate("torchvision", peer(mode)))
            times = measure(cands, REPEAT, timer=timer)
            medians = {name: statistics.median(t) for name, t in times.items()}
            best = min(SETTINGS, key=medians.get)
            report["rows"].append({"case": label, "mode": mode, "median_ms": medians, "times_ms": times})
            cells = " ".join(f"{medians[n]:14.3f}" for n in SETTINGS)
            tv = medians.get("torchvision", float("nan"))
            print(f"{label:<26} {mode:<17} {cells} {tv:8.3f}  {best} {tv / medians[best]:.2f}x", flush=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

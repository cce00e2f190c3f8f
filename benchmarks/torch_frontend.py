"""Time the torch frontend against the NumPy path and torchvision's CPU roi_pool.

The ``vgg16`` workload: feature map 1x512x38x50 float32, 2000 proposals with
sides log-uniform between 16 px and the image side, placed uniformly inside a
600x800 image, 7x7 bins, spatial_scale 1/16. A training step is the forward
that keeps the argmax plus the backward of a random output gradient.

Run (torchvision only for this local comparison, never a dependency):
    PYTHONPATH=src /work/peer-venv/bin/python benchmarks/torch_frontend.py [--repeat 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

import roipool


def vgg16_workload(seed=0, k=2000):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 512, 38, 50)).astype(np.float32)
    img_h, img_w = 600.0, 800.0
    w = np.exp(rng.uniform(np.log(16), np.log(img_w), k))
    h = np.exp(rng.uniform(np.log(16), np.log(img_h), k))
    x1 = rng.uniform(0, img_w - w)
    y1 = rng.uniform(0, img_h - h)
    rois = np.column_stack([np.zeros(k), x1, y1, x1 + w, y1 + h]).astype(np.float32)
    return x, rois


def median_time(fn, repeat, warmup=2):
    """Median wall time of ``fn`` over ``repeat`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def interleaved(fns, repeat, warmup=1):
    """Median wall time of each of ``fns`` (a dict), timed in turn within each round.

    On a shared machine the load drifts; taking the variants in turn inside
    every round exposes them to the same drift, and the median of the per-round
    ratios is steadier than the ratio of medians.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: np.array(ts) for name, ts in times.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--no-torchvision", action="store_true")
    parser.add_argument("--threads", type=int, help="threads for both pools (roipool's Numba pool and torch's)")
    args = parser.parse_args()
    if args.threads:
        roipool.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    x_np, rois_np = vgg16_workload()
    scale = 1 / 16
    grad_np = np.random.default_rng(1).standard_normal((rois_np.shape[0], 512, 7, 7)).astype(np.float32)
    x = torch.from_numpy(x_np)
    rois = torch.from_numpy(rois_np)
    grad = torch.from_numpy(grad_np)

    def numpy_train():
        out, argmax = roipool.roi_pool_with_argmax(x_np, rois_np, 7, scale)
        roipool.roi_pool_backward(grad_np, argmax, rois_np, x_np.shape)

    def numpy_infer():
        roipool.roi_pool(x_np, rois_np, 7, scale)

    def torch_train(fn=roipool.roi_pool):
        xg = x.detach().requires_grad_()
        fn(xg, rois, 7, scale).backward(grad)

    def torch_infer(fn=roipool.roi_pool):
        with torch.no_grad():
            fn(x, rois, 7, scale)

    variants = {
        "numpy_train": numpy_train,
        "torch_train": torch_train,
        "numpy_infer": numpy_infer,
        "torch_infer": torch_infer,
    }
    if not args.no_torchvision:
        from torchvision.ops import roi_pool as tv_roi_pool

        # equal results first: the comparison is between equal outputs and gradients
        xa = x.detach().requires_grad_()
        xb = x.detach().requires_grad_()
        ya, yb = roipool.roi_pool(xa, rois, 7, scale), tv_roi_pool(xb, rois, 7, scale)
        ya.backward(grad)
        yb.backward(grad)
        assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad)
        variants["torchvision_train"] = lambda: torch_train(tv_roi_pool)
        variants["torchvision_infer"] = lambda: torch_infer(tv_roi_pool)
    times = interleaved(variants, args.repeat)
    results = {f"{name}_s": float(np.median(t)) for name, t in times.items()}
    for step in ("train", "infer"):
        results[f"torch_overhead_{step}"] = float(np.median(times[f"torch_{step}"] / times[f"numpy_{step}"]) - 1)
        if not args.no_torchvision:
            results[f"speedup_{step}_vs_torchvision"] = float(
                np.median(times[f"torchvision_{step}"] / times[f"torch_{step}"])
            )
    results["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "roipool_threads": roipool.get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

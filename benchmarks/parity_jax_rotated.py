"""roipool.jax.roi_align_rotated (XLA backend) against the NumPy path and the torch op's box gradient.

Random maps of 1 to 29 cells a side and random rotated boxes of every scale
(sides up to 2.5e6 image pixels, centres far off the map, a fifth of the
angles whole multiples of pi/2), three settings (adaptive aligned, adaptive
legacy clockwise, fixed grid of 2); forward values in float32 and float64,
box gradients in float64 against ``torch.autograd.grad`` through
``roipool.roi_align_rotated``. Prints the worst difference relative to the
largest magnitude (at least 1) per dtype and setting. The adaptive grids of
the largest boxes reach about 7e5 samples per side in the forward cases
(7e3 in the gradient ones, whose sides reach 2.5e4), so the XLA path's
clipping of the sample ranges is what is tested here.

    PYTHONPATH=src python benchmarks/parity_jax_rotated.py [seeds]
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import roipool
import roipool.jax as rj

SETTINGS = [(-1, True, False), (0, False, True), (2, True, True)]
SIZE = (3, 4)


def case(seed, max_log_size):
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(1, 30, 2))
    scale = float(rng.choice([1.0, 0.5, 0.125]))
    k = 40
    size = 10.0 ** rng.uniform(0, max_log_size, k)
    rois = np.column_stack(
        [
            rng.integers(0, 2, k),
            rng.uniform(-1.2, 1.2, k) * size + width / scale / 2,
            rng.uniform(-1.2, 1.2, k) * size + height / scale / 2,
            rng.uniform(0, 2.5, k) * size,
            rng.uniform(0, 2.5, k) * size,
            rng.uniform(-10, 10, k),
        ]
    )
    rois[::5, 5] = np.round(rois[::5, 5] / (np.pi / 2)) * (np.pi / 2)
    return rng.standard_normal((2, 3, height, width)), rois, scale


def relative(got, want):
    return float(np.abs(np.asarray(got) - want).max(initial=0) / max(np.abs(want).max(initial=0), 1))


def main(seeds: int) -> None:
    import torch

    with jax.enable_x64(True):
        for dtype in (np.float32, np.float64):
            for setting in SETTINGS:
                worst = values = 0
                for seed in range(seeds):
                    x, rois, scale = case(seed, 6)
                    x = x.astype(dtype)
                    args = (SIZE, scale, *setting)
                    if setting[0] <= 0:  # the NumPy path refuses adaptive grids over 2**20 a side
                        rois = rois[np.maximum(rois[:, 3], rois[:, 4]) * scale / min(SIZE) < 2**20]
                    want = roipool.roi_align_rotated(x, rois, *args)
                    got = rj.roi_align_rotated(jnp.asarray(x), jnp.asarray(rois), *args, backend="xla")
                    worst, values = max(worst, relative(got, want)), values + want.size
                print(f"forward  {np.dtype(dtype).name:8s} {setting}: {values} values, worst {worst:.2g}")
        for setting in SETTINGS:
            worst = boxes = 0
            for seed in range(seeds):
                x, rois, scale = case(seed, 4)
                args = (SIZE, scale, *setting)
                g = np.random.default_rng(seed).standard_normal((rois.shape[0], 3, *SIZE))
                rt = torch.tensor(rois, requires_grad=True)
                out = roipool.roi_align_rotated(torch.tensor(x), rt, *args)
                want = torch.autograd.grad(out, rt, torch.tensor(g))[0].numpy()
                _, vjp = jax.vjp(lambda r, x=x, args=args: rj.roi_align_rotated(x, r, *args, backend="xla"), rois)
                worst, boxes = max(worst, relative(vjp(jnp.asarray(g))[0], want)), boxes + rois.shape[0]
            print(f"box grad float64  {setting}: {boxes} boxes, worst {worst:.2g}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)

"""roipool.jax.prroi_pool: the XLA and callback backends against the NumPy call, on one small case.

    PYTHONPATH=src python benchmarks/jax_prroi.py [repeat]

2 images, 256 channels, a 32x32 map (an image 8 times larger, spatial_scale
1/8), 64 boxes log-uniform in size from 16 px to the image side, 7x7 bins,
float32. Forward, and forward plus both backwards (the output and the
gradients with respect to the map and the boxes for a random upstream
gradient). The JAX functions are jitted and timed after compiling; the
settings are timed in turn within each round, ``repeat`` rounds (default 9),
and the medians printed in ms, with the compile time of each jitted function.
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import roipool
import roipool.jax as rj

N, C, H, W, K, SIZE, SCALE = 2, 256, 32, 32, 64, (7, 7), 1 / 8


def case(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    side = H / SCALE
    size = np.exp(rng.uniform(np.log(16), np.log(side), (K, 2)))
    corner = rng.uniform(0, side - size)
    rois = np.column_stack([rng.integers(0, N, K), corner, corner + size]).astype(np.float32)
    g = rng.standard_normal((K, C, *SIZE)).astype(np.float32)
    return x, rois, g


def numpy_calls(x, rois, g):
    def forward():
        return roipool.prroi_pool(x, rois, SIZE, SCALE)

    def both():
        return (
            roipool.prroi_pool(x, rois, SIZE, SCALE),
            roipool.prroi_pool_backward(g, rois, x.shape, SIZE, SCALE),
            roipool.prroi_pool_boxes_backward(g, x, rois, SIZE, SCALE),
        )

    return forward, both


def jax_calls(backend, x, rois, g):
    def pool(x, r):
        return rj.prroi_pool(x, r, SIZE, SCALE, backend=backend)

    def train(x, r, g):
        out, vjp = jax.vjp(pool, x, r)
        return (out, *vjp(g))

    args = jnp.asarray(x), jnp.asarray(rois), jnp.asarray(g)
    compiled = {}
    for name, fn, fn_args in [("forward", pool, args[:2]), ("forward+backward", train, args)]:
        start = time.perf_counter()
        jitted = jax.jit(fn)
        jax.block_until_ready(jitted(*fn_args))
        compiled[name] = time.perf_counter() - start
        compiled[name + " call"] = lambda jitted=jitted, fn_args=fn_args: jax.block_until_ready(jitted(*fn_args))
    return compiled


def main(repeat: int) -> None:
    x, rois, g = case()
    forward, both = numpy_calls(x, rois, g)
    calls = {("NumPy", "forward"): forward, ("NumPy", "forward+backward"): both}
    for backend in ("callback", "xla"):
        compiled = jax_calls(backend, x, rois, g)
        for mode in ("forward", "forward+backward"):
            calls[(f"JAX {backend}", mode)] = compiled[mode + " call"]
            print(f"compile {backend} {mode}: {compiled[mode]:.2f} s")
    for fn in calls.values():  # warm-up (page faults, caches)
        fn()
    times = {key: [] for key in calls}
    for _ in range(repeat):
        for key, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    for (who, mode), ts in times.items():
        print(f"{who:13s} {mode:17s} {1e3 * statistics.median(ts):8.2f} ms  (min {1e3 * min(ts):.2f})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 9)

"""roipool.jax.roi_align_rotated: XLA against callback backend, jitted, timed after compiling.

One small, realistic case: 2 images, 256 channels, a 32 x 32 map (stride 8),
64 rotated boxes of 32 to 200 image pixels at any angle, 7 x 7 bins,
``sampling_ratio=2``, float32. Forward, forward + input gradient, and
forward + input and box gradients (each call returns the output too, so
that XLA cannot drop the forward); the NumPy call for scale. Calls of the
variants are interleaved, and each figure is the median of ``repeats`` calls.

    PYTHONPATH=src python benchmarks/jax_rotated.py [repeats]
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

ARGS = ((7, 7), 1 / 8, 2, True, False)


def case(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 256, 32, 32)).astype(np.float32)
    k = 64
    boxes = np.column_stack(
        [
            rng.integers(0, 2, k),
            rng.uniform(0, 256, k),
            rng.uniform(0, 256, k),
            rng.uniform(32, 200, k),
            rng.uniform(32, 200, k),
            rng.uniform(-np.pi, np.pi, k),
        ]
    ).astype(np.float32)
    return x, boxes


def programs(backend):
    def f(x, r):
        return rj.roi_align_rotated(x, r, *ARGS, backend=backend)

    def input_grad(x, r, g):
        out, vjp = jax.vjp(lambda x: f(x, r), x)
        return out, vjp(g)[0]

    def both_grads(x, r, g):
        out, vjp = jax.vjp(f, x, r)
        return (out, *vjp(g))

    return {
        "forward": jax.jit(lambda x, r, g: f(x, r)),
        "forward+input grad": jax.jit(input_grad),
        "forward+input+box grads": jax.jit(both_grads),
    }


def main(repeats: int) -> None:
    x, boxes = case()
    g = np.random.default_rng(1).standard_normal((64, 256, 7, 7)).astype(np.float32)
    args = tuple(map(jnp.asarray, (x, boxes, g)))
    calls = {("numpy", "forward"): lambda: roipool.roi_align_rotated(x, boxes, *ARGS)}
    for backend in ("xla", "callback"):
        for mode, fn in programs(backend).items():
            start = time.perf_counter()
            compiled = fn.lower(*args).compile()
            print(f"compile {backend:8s} {mode:24s} {time.perf_counter() - start:6.2f} s")
            calls[backend, mode] = lambda compiled=compiled: jax.block_until_ready(compiled(*args))
    times = {key: [] for key in calls}
    for call in calls.values():  # warm-up
        call()
    for _ in range(repeats):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
    for (backend, mode), ts in times.items():
        print(f"{backend:8s} {mode:24s} median {1e3 * statistics.median(ts):8.1f} ms  (of {len(ts)})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)

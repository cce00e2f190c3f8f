"""roipool.jax's CPU callback backend against the NumPy call it wraps, in one process, interleaved.

Usage: ``PYTHONPATH=src python benchmarks/jax_callback.py [--vmap] [rounds] [workload ...]``
(defaults: 9 rounds; ``tiny``, ``small-batch``, ``vgg16`` and ``maskrcnn``).

For each workload and op (``roi_align`` with the workload's sampling ratio,
``roi_pool``), three candidates are timed, forward and forward+backward
(output and input gradient for a fixed upstream gradient, as ``jax.vjp``
gives them):

- ``numpy``: the NumPy functions (``roipool.roi_align`` and its backward;
  ``roipool.roi_pool_with_argmax`` and the backward through its argmax);
- ``jax buffer_callback``: ``roipool.jax`` jitted, with the callback backend
  as it ships: the kernels write into XLA's own output buffers
  (``jax.experimental.buffer_callback``, huge pages asked for on them);
- ``jax pure_callback``: the same program traced with ``buffer_callback``
  hidden, the backend's path on a JAX without it (and roipool's before
  2026-11-28): the NumPy result is copied into a new XLA buffer, and
  ``roi_pool``'s backward finds the maxima again from the input.

With ``--vmap`` the workloads' images become the examples of a ``jax.vmap``
(each image with its own boxes; ``small-batch`` is 8 images): the callback as
it ships takes the whole batch in one call (``expand_dims``), ``pure_callback``
runs once per example (``sequential``), and ``numpy`` loops over the examples.

Every round runs each candidate once, in a rotating order, each after the
process's threads have been idle (``bench.measure``, as ``roipool bench``).
The JAX results are checked against the NumPy ones, bit for bit, first.
Prints the CPU and medians (and minima) in ms.
"""

from __future__ import annotations

import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

import roipool
import roipool.jax as rj
from roipool import bench
from roipool.bench.candidates import Candidate
from roipool.bench.workloads import WORKLOADS
from roipool.jax import _ops


def _jitted(op, w, kw, pure: bool, x, r, g, vmap: bool = False):
    """``(forward, step)`` jitted and traced for ``x, r, g`` (a new shape would trace again), with or
    without ``buffer_callback``."""
    kept = _ops._buffer_callback
    if pure:
        _ops._buffer_callback = None  # read while tracing: the programs keep the path they were traced with
    try:
        fn = getattr(rj, op)

        def call(x, r):
            return fn(x, r, w.output_size, w.spatial_scale, backend="callback", **kw)

        def step(x, r, g):
            out, vjp = jax.vjp(lambda x: call(x, r), x)
            return out, vjp(g)[0]

        forward, step = (jax.vmap(call), jax.vmap(step)) if vmap else (call, step)
        forward, step = jax.jit(forward), jax.jit(step)
        jax.block_until_ready((forward(x, r), step(x, r, g)))  # traced now, while the switch holds
        return forward, step
    finally:
        _ops._buffer_callback = kept


def _numpy(op, w, kw, vmap: bool = False):
    fn = getattr(roipool, op)

    def forward(x, r):
        return fn(x, r, w.output_size, w.spatial_scale, **kw)

    def step(x, r, g):
        if op == "roi_pool":  # through the argmax, as the callback does (since 2026-11-28)
            out, argmax = roipool.roi_pool_with_argmax(x, r, w.output_size, w.spatial_scale)
            return out, roipool.roi_pool_backward(g, argmax, r, x.shape)
        out = forward(x, r)
        return out, roipool.roi_align_backward(g, r, x.shape, w.output_size, w.spatial_scale, **kw)

    if vmap:  # one call per example, stacked
        return (
            lambda x, r: np.stack([forward(*a) for a in zip(x, r)]),
            lambda x, r, g: tuple(map(np.stack, zip(*[step(*a) for a in zip(x, r, g)]))),
        )
    return forward, step


def _examples(x, rois):
    """``(x (N, 1, C, H, W), rois (N, K, 5))``: each image with its own boxes (batch index 0), for a
    vmap over the images (every image of the workloads holds as many boxes)."""
    n = x.shape[0]
    order = np.argsort(rois[:, 0], kind="stable")
    per = rois[order].reshape(n, -1, 5).copy()
    per[..., 0] = 0
    return x[:, None], per


def main() -> None:
    argv = sys.argv[1:]
    vmap = "--vmap" in argv
    argv = [a for a in argv if a != "--vmap"]
    rounds = int(argv[0]) if argv else 9
    names = argv[1:] or (["tiny", "small-batch"] if vmap else ["tiny", "small-batch", "vgg16", "maskrcnn"])
    print(f"# {bench.machine()['cpu']}, {os.cpu_count()} cores, load {os.getloadavg()}, jax {jax.__version__}")
    if _ops._buffer_callback is None:
        print("# this JAX has no buffer_callback: both JAX rows take pure_callback")
    for name in names:
        w = WORKLOADS[name]
        x, rois = w.make()
        if vmap:
            x, rois = _examples(x, rois)
        xj, rj_ = jnp.asarray(x), jnp.asarray(rois)
        for op in ["roi_align", "roi_pool"]:
            kw = {"sampling_ratio": w.sampling_ratio, "aligned": w.aligned} if op == "roi_align" else {}
            numpy = _numpy(op, w, kw, vmap)
            g = np.random.default_rng(1).standard_normal(numpy[0](x, rois).shape, np.float32)
            gj = jnp.asarray(g)
            impls = {
                "numpy": numpy,
                "jax buffer_callback": _jitted(op, w, kw, False, xj, rj_, gj, vmap),
                "jax pure_callback": _jitted(op, w, kw, True, xj, rj_, gj, vmap),
            }
            want_out, want_grad = numpy[1](x, rois, g)
            for impl in list(impls)[1:]:
                out, grad = impls[impl][1](xj, rj_, gj)
                assert np.array_equal(np.asarray(out), want_out) and np.array_equal(np.asarray(grad), want_grad), impl
            del want_out, want_grad
            cands = []
            for impl, (forward, step) in impls.items():
                arrays = (x, rois, g) if impl == "numpy" else (xj, rj_, gj)
                cands.append(Candidate(f"{impl} forward", lambda f=forward, a=arrays: jax.block_until_ready(f(*a[:2]))))
                cands.append(
                    Candidate(f"{impl} forward+backward", lambda s=step, a=arrays: jax.block_until_ready(s(*a)))
                )
            times = bench.measure(cands, rounds)
            for impl, ms in times.items():
                print(
                    f"{name + (' vmap' if vmap else ''):17s} {op:10s} {impl:40s} {statistics.median(ms):9.3f} ({min(ms):9.3f}) ms"
                )


if __name__ == "__main__":
    main()

"""``roipool.jax.multi_scale_roi_align`` (callback backend, jitted) against ``roipool.nn.MultiScaleRoIAlign``.

Usage: ``PYTHONPATH=src python benchmarks/jax_pyramid.py [rounds]`` (default 7).

One image of 800 x 1088 with an FPN's P2 to P5 (strides 4 to 32, 256
channels, float32), 512 boxes with sides log-uniform from 16 to 800 px, 7 x 7
bins, ``sampling_ratio=2``: the forward, and the forward with the levels'
gradients for a fixed upstream gradient. Both run roipool's CPU kernels; the
outputs are checked equal first. Medians of interleaved rounds after an idle
wait (``bench.measure``, as ``roipool bench``), ms.
"""

from __future__ import annotations

import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

import roipool.jax as rj
from _fpn_scene import BOXES, HEIGHT, WIDTH, fpn_scene  # beside this script
from roipool import bench
from roipool.bench.candidates import Candidate
from roipool.nn import MultiScaleRoIAlign


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    print(f"# {bench.machine()['cpu']}, {os.cpu_count()} cores, load {os.getloadavg()}, jax {jax.__version__}")
    rng = np.random.default_rng(0)
    height, width, k = HEIGHT, WIDTH, BOXES
    features, rows = fpn_scene(rng)
    boxes = [rows]
    shapes = [(height, width)]
    g = rng.standard_normal((k, 256, 7, 7), np.float32)

    layer = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2)
    maps = dict(zip(layer.featmap_names, map(torch.from_numpy, features)))
    leaves = {name: m.clone().requires_grad_() for name, m in maps.items()}
    torch_boxes, torch_g = [torch.from_numpy(b) for b in boxes], torch.from_numpy(g)

    def torch_step():
        for leaf in leaves.values():
            leaf.grad = None  # as a training loop's zero_grad: each step's gradients are new tensors
        out = layer(leaves, torch_boxes, shapes)
        out.backward(torch_g)
        return out

    def pooled(f, b):
        return rj.multi_scale_roi_align(f, b, shapes, 7, 2, backend="callback")

    def step(f, b, g):
        out, vjp = jax.vjp(lambda f: pooled(f, b), f)
        return out, vjp(g)

    forward, step = jax.jit(pooled), jax.jit(step)
    jf, jb, jg = [jnp.asarray(f) for f in features], [jnp.asarray(b) for b in boxes], jnp.asarray(g)
    assert np.array_equal(np.asarray(forward(jf, jb)), layer(maps, torch_boxes, shapes).numpy())
    cands = [
        Candidate("torch MultiScaleRoIAlign forward", lambda: layer(maps, torch_boxes, shapes)),
        Candidate("jax multi_scale_roi_align forward", lambda: jax.block_until_ready(forward(jf, jb))),
        Candidate("torch MultiScaleRoIAlign forward+backward", torch_step),
        Candidate("jax multi_scale_roi_align forward+backward", lambda: jax.block_until_ready(step(jf, jb, jg))),
    ]
    for name, ms in bench.measure(cands, rounds).items():
        print(f"{name:45s} {statistics.median(ms):8.1f} ({min(ms):8.1f}) ms")


if __name__ == "__main__":
    main()

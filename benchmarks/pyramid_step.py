"""A training step of ``roipool.nn.MultiScaleRoIAlign``: the levels' rows put in place level by level
or as one autograd step.

Usage: ``PYTHONPATH=src python benchmarks/pyramid_step.py [rounds] [output_size] [--compile]``
(defaults 11, 7; ``--compile``: the layer under ``torch.compile(fullgraph=True)``, both routes).

One 800 x 1088 image with an FPN's P2 to P5 (strides 4 to 32, 256 channels,
float32) that require a gradient, 512 boxes with sides log-uniform from 16 to
800 px, ``sampling_ratio=2``: forward and backward of a fixed upstream
gradient, the levels' gradients cleared before each step as a training loop
does. "level by level" is the route scripted and ``jit.trace``d calls take
(``result[index] = pooled`` per level, torchvision's way); "one step" is the
route of eager and compiled calls (``nn._LevelRows``). The levels' gradients are checked equal first,
bit for bit. Medians (minima) of interleaved rounds after an idle wait
(``bench.measure``), ms.
"""

from __future__ import annotations

import os
import statistics
import sys

import numpy as np
import torch

import roipool.nn as rnn
from _fpn_scene import BOXES, HEIGHT, WIDTH, fpn_scene  # beside this script
from roipool import bench
from roipool.bench.candidates import Candidate


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--compile"]
    rounds = int(args[0]) if args else 11
    size = int(args[1]) if len(args) > 1 else 7
    compiled = "--compile" in sys.argv
    print(f"# {bench.machine()['cpu']}, {os.cpu_count()} cores, load {os.getloadavg()}, torch {torch.__version__}")
    rng = np.random.default_rng(0)
    height, width, k = HEIGHT, WIDTH, BOXES
    features, rows = fpn_scene(rng)
    boxes = [torch.from_numpy(rows)]
    upstream = torch.from_numpy(rng.standard_normal((k, 256, size, size), np.float32))
    layer = rnn.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], size, 2)
    leaves = {name: torch.from_numpy(f).requires_grad_() for name, f in zip(layer.featmap_names, features)}
    one_step = rnn._rows_in_one_step
    layer(leaves, boxes, [(height, width)])  # sets the scales before any compiling
    # the route is read from the module when traced: one graph for each (Dynamo guards on the function)
    call = torch.compile(layer, fullgraph=True) if compiled else layer

    def step(way):
        def run():
            rnn._rows_in_one_step = one_step if way == "one step" else (lambda *args: False)
            for leaf in leaves.values():
                leaf.grad = None
            call(leaves, boxes, [(height, width)]).backward(upstream)
            return [leaf.grad for leaf in leaves.values()]

        return run

    ways = ("level by level", "one step")
    first, second = (step(way)() for way in ways)
    assert all(torch.equal(a, b) for a, b in zip(first, second)), "the two routes' gradients differ"
    label = f"{size}x{size} {'compiled ' if compiled else ''}step"
    cands = [Candidate(f"{label}, {way}", step(way)) for way in ways]
    for name, ms in bench.measure(cands, rounds).items():
        print(f"{name:40s} {statistics.median(ms):8.1f} ({min(ms):8.1f}) ms")


if __name__ == "__main__":
    main()

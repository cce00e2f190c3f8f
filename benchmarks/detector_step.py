"""torchvision's Mask R-CNN (ResNet-50 FPN) on the CPU with its own RoI poolers and with roipool's.

Usage: ``PYTHONPATH=src python benchmarks/detector_step.py [rounds] [min_size] [images]``
(defaults 5, 800, 1), in a venv with torchvision (the peer venv, ``docs/benchmarks.md``).

One model with random weights (seeded), called on the same random images and
targets with ``box_roi_pool`` and ``mask_roi_pool`` swapped between
torchvision's ``MultiScaleRoIAlign`` and ``roipool.nn.MultiScaleRoIAlign``
(7 x 7 and 14 x 14, ``sampling_ratio=2``): a training step (forward, the
losses' sum, backward) and an inference call, timed interleaved after an idle
wait (``bench.measure``), medians and minima in ms. The poolers' own share is
the profiler's time in the ops whose names hold ``roi_align`` (forward and
backward kernels) and in the level-writing ops around them, one profiled
training step each. Before timing, the two poolers' outputs on the model's
proposals are checked to agree (within 1e-6 of the largest value: roi_align
agrees with torchvision's to float rounding).
"""

from __future__ import annotations

import os
import statistics
import sys

import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.ops import MultiScaleRoIAlign as TorchvisionPooler

import roipool.nn
from roipool import bench
from roipool.bench.candidates import Candidate

POOLERS = {
    "torchvision": (TorchvisionPooler(["0", "1", "2", "3"], 7, 2), TorchvisionPooler(["0", "1", "2", "3"], 14, 2)),
    "roipool": (
        roipool.nn.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),
        roipool.nn.MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2),
    ),
}
# the profiler's names of the pooling work: the kernels, and the writes of each level's rows (and their backward)
POOLING = ("roi_align", "index_put", "IndexPutBackward", "LevelRows")


def scene(min_size: int, images: int):
    """Random images of ``min_size`` x ``4/3 min_size`` and targets of 8 boxes each, with masks."""
    g = torch.Generator().manual_seed(1)
    height, width = min_size, min_size * 4 // 3
    pictures, targets = [], []
    for _ in range(images):
        pictures.append(torch.rand((3, height, width), generator=g))
        corner = torch.rand((8, 2), generator=g) * torch.tensor([width * 0.7, height * 0.7])
        side = 32 + torch.rand((8, 2), generator=g) * torch.tensor([width * 0.3, height * 0.3])
        boxes = torch.cat([corner, corner + side], 1)
        masks = torch.zeros((8, height, width), dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.round().int().tolist()):
            m[y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.randint(1, 91, (8,), generator=g), "masks": masks})
    return pictures, targets


def use(model, name: str) -> None:
    model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool = POOLERS[name]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    min_size = int(sys.argv[2]) if len(sys.argv) > 2 else 800
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    print(f"# {bench.machine()['cpu']}, {os.cpu_count()} cores, load {os.getloadavg()}, torch {torch.__version__}")
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=min_size, max_size=min_size * 4 // 3)
    pictures, targets = scene(min_size, count)

    # the same proposals through both poolers: equal outputs
    model.eval()
    with torch.no_grad():
        batch, _ = model.transform(pictures)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
    for index in range(2):
        want, got = (POOLERS[name][index](features, proposals, batch.image_sizes) for name in POOLERS)
        # roi_align agrees with torchvision's to float rounding (docs/semantics.md), not bit for bit
        scale = float(want.abs().max())
        worst = float((want - got).abs().max())
        assert worst <= 1e-6 * scale, f"the poolers differ by {worst} (largest value {scale})"
    print(f"# {sum(len(p) for p in proposals)} proposals at inference; poolers within {worst / scale:.1e} relative")

    def step(name):
        def run():
            use(model, name)
            model.train()
            model.zero_grad(set_to_none=True)
            losses = model(pictures, targets)
            sum(losses.values()).backward()

        return run

    def infer(name):
        def run():
            use(model, name)
            model.eval()
            with torch.no_grad():
                return model(pictures)

        return run

    for name in POOLERS:
        step(name)()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(name)()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        pooling = sum(e.self_cpu_time_total for e in events if any(word in e.key for word in POOLING))
        print(
            f"# {name}: pooling {pooling / 1e3:.1f} ms of {total / 1e3:.1f} ms profiled ({100 * pooling / total:.1f}%)"
        )
    cands = [
        Candidate(f"{name} {what}", make(name))
        for what, make in (("step", step), ("inference", infer))
        for name in POOLERS
    ]
    for impl, ms in bench.measure(cands, rounds).items():
        print(f"{impl:30s} {statistics.median(ms):9.1f} ({min(ms):9.1f}) ms")


if __name__ == "__main__":
    main()

"""Fast R-CNN's claim, measured: shared features against per-proposal R-CNN on the same model.

Shared (Fast R-CNN): one backbone pass over the image, RoI pooling of every
proposal from that feature map, the head on all pooled RoIs at once.

Per proposal (R-CNN style): every proposal is cropped from the image and
warped (bilinear) to ``output_size * STRIDE`` pixels square, so the same
backbone turns each crop into exactly the ``output_size x output_size`` grid
the head expects; crops go through backbone and head in batches of
``crop_batch``. Same weights, dtype (float32), threads, memory format
(channels-last by default: oneDNN's convolutions run several times faster
on it for both paths, and roipool pools a channels-last map without a copy)
and no_grad.

The reported ``speedup`` leaves the crop-and-warp time out of the baseline
(which favours the baseline); ``speedup_with_warp`` counts it, as R-CNN pays it.
"""

from __future__ import annotations

import statistics
import time

import torch

import roipool

from . import data as D
from .model import STRIDE, FastRCNN, multiply_adds
from .proposals import dense_proposals


def warp_crops(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``image (3, H, W)``, ``boxes (K, 4)`` -> crops ``(K, 3, size, size)`` sampled bilinearly."""
    _, height, width = image.shape
    t = (torch.arange(size, dtype=image.dtype) + 0.5) / size
    xs = boxes[:, 0:1] + t * (boxes[:, 2:3] - boxes[:, 0:1])  # (K, size) pixel centres
    ys = boxes[:, 1:2] + t * (boxes[:, 3:4] - boxes[:, 1:2])
    gx = (2 * xs / width - 1)[:, None, :].expand(-1, size, -1)
    gy = (2 * ys / height - 1)[:, :, None].expand(-1, -1, size)
    grid = torch.stack([gx, gy], dim=-1)
    src = image[None].expand(len(boxes), -1, -1, -1)
    return torch.nn.functional.grid_sample(src, grid, mode="bilinear", align_corners=False)


def _interleaved(fns: dict, repeat: int) -> dict:
    """Median seconds of each function over ``repeat`` rounds, calling each once per round.

    Rounds interleave the functions so that load from other processes on a
    shared machine falls on all of them alike. One warm-up call each first.
    """
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


@torch.no_grad()
def measure(
    model: FastRCNN | None = None,
    proposals: int = 2000,
    image_size: int = 256,
    svd_rank: int = 32,
    crop_batch: int = 250,
    repeat: int = 5,
    seed: int = 0,
    channels_last: bool = True,
    threads: int | None = None,
) -> dict:
    """Time both paths on one generated ``image_size`` image with ``proposals`` sliding windows.

    ``model``: a trained model, or None for a freshly initialised one of the
    default architecture (timings do not depend on the weights). ``svd_rank``:
    compress fc6 and fc7 by truncated SVD to this rank in both paths (0: no).
    ``threads``: torch's and roipool's threads for both paths (None: as they are).
    """
    if threads:
        torch.set_num_threads(threads)
        roipool.set_num_threads(threads)
    model = (model or FastRCNN()).eval()
    if svd_rank:
        model.compress_head(svd_rank, svd_rank)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    image = torch.from_numpy(D.make_sample(seed, D.TEST, 0, size=image_size).image)
    boxes = torch.from_numpy(dense_proposals(image_size, image_size, proposals))
    rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
    crop_size = model.output_size * STRIDE

    def shared_backbone():
        return model.backbone(image[None].contiguous(memory_format=layout))

    features = shared_backbone()

    def shared_pool():
        return model.pool(features, rois)

    pooled = shared_pool()

    def shared_head():
        return model.head(pooled)

    def shared():
        return model.head(model.pool(shared_backbone(), rois))

    def crops():
        return warp_crops(image, boxes, crop_size).contiguous(memory_format=layout)

    warped = crops()

    def per_proposal():
        outs = []
        for i in range(0, len(warped), crop_batch):
            f = model.backbone(warped[i : i + crop_batch])
            outs.append(model.head(f)[0])
        return torch.cat(outs)

    # The two paths compute the same kind of thing: one score row per proposal.
    assert per_proposal().shape == shared()[0].shape
    assert model.backbone(warped[:1]).shape[-2:] == (model.output_size, model.output_size)

    if threads:
        # Starting Numba's OpenMP pool (the first pooling call above) can
        # reset OpenMP's thread count, which torch shares: set it again.
        torch.set_num_threads(threads)
        roipool.set_num_threads(threads)
    t = _interleaved(
        {
            "shared": shared,
            "per_proposal": per_proposal,
            "warp": crops,
            "backbone": shared_backbone,
            "pool": shared_pool,
            "head": shared_head,
        },
        repeat,
    )
    t_shared, t_per, t_warp = t["shared"], t["per_proposal"], t["warp"]
    parts = {f"{k}_ms": t[k] * 1e3 for k in ("backbone", "pool", "head")}
    macs = multiply_adds(model, image_size, image_size, proposals)
    crop_macs = multiply_adds(model, crop_size, crop_size, 1)["backbone"] * proposals
    return {
        "proposals": proposals,
        "image_size": image_size,
        "pooler": model.pool.kind,
        "pool_impl": f"roipool.nn.{type(model.pool.layer).__name__}",
        "svd_rank": svd_rank,
        "crop_size": crop_size,
        "crop_batch": crop_batch,
        "memory_format": "channels_last" if channels_last else "contiguous",
        "torch_threads": torch.get_num_threads(),
        "roipool_threads": roipool.get_num_threads(),
        "shared_ms": t_shared * 1e3,
        "shared_parts": parts,
        "per_proposal_ms": t_per * 1e3,
        "warp_ms": t_warp * 1e3,
        "speedup": t_per / t_shared,
        "speedup_with_warp": (t_per + t_warp) / t_shared,
        "gmacs": {
            "shared_backbone": macs["backbone"] / 1e9,
            "per_proposal_backbone": crop_macs / 1e9,
            "head": macs["head"] / 1e9,
        },
    }


@torch.no_grad()
def compare_detectors(rpn_model: FastRCNN, windows_model: FastRCNN, images: int = 20, repeat: int = 5, seed: int = 1,
                      threads: int | None = None) -> dict:  # fmt: skip
    """Whole detection per image (``evaluate.detect``) of an RPN and a sliding-window model, interleaved.

    Both run on the same ``images`` test images of the RPN model's data set:
    backbone, proposals (the RPN's 300, or all the windows), RoI pooling, head,
    per-class NMS. Returns each one's median milliseconds per image and
    ``ratio`` = windows / rpn.
    """
    from .evaluate import detect

    if rpn_model.rpn is None or windows_model.rpn is not None:
        raise ValueError("--detectors takes an RPN model first, then a sliding-window model")
    if rpn_model.num_classes != windows_model.num_classes:
        raise ValueError("the two models were trained for different numbers of classes")
    if threads:
        torch.set_num_threads(threads)
        roipool.set_num_threads(threads)
    ds = D.get(getattr(rpn_model, "dataset", "hard"))
    pictures = [torch.from_numpy(s.image) for s in ds.make_set(seed, D.TEST, images)]
    counts = {}

    def runner(name, model):
        model.eval()

        def run():
            if threads:
                # Numba's OpenMP pool, started by the first pooling call, can
                # reset the thread count that torch shares: set it every round.
                torch.set_num_threads(threads)
                roipool.set_num_threads(threads)
            for image in pictures:
                _, _, _, (props, _) = detect(model, image, return_proposals=True)
                counts[name] = len(props)

        return run

    t = _interleaved({"rpn": runner("rpn", rpn_model), "windows": runner("windows", windows_model)}, repeat)
    return {
        "dataset": ds.name,
        "images": images,
        "repeat": repeat,
        "torch_threads": torch.get_num_threads(),
        "rpn": {"ms": t["rpn"] * 1e3 / images, "proposals": counts["rpn"]},
        "windows": {"ms": t["windows"] * 1e3 / images, "proposals": counts["windows"]},
        "ratio": t["windows"] / t["rpn"],
    }

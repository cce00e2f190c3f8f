"""Training: Fast R-CNN's RoI sampling and multi-task loss, optionally data-parallel over gloo.

Each step takes ``batch_images`` generated images and ``rois_per_image`` RoIs
from each (Fast R-CNN's hierarchical sampling): a quarter foreground (IoU >= 0.5
with a ground-truth box, the ground-truth boxes themselves included), the rest
background (IoU in [0.1, 0.5)). The loss is the log loss over classes plus
background, plus smooth L1 on the true class's box deltas for foreground RoIs,
averaged over all sampled RoIs.

``nproc > 1`` re-launches this module through ``torch.distributed.run``; each
worker trains on its share of each batch with DistributedDataParallel over
gloo, and rank 0 writes the outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import boxes as B
from . import data as D
from .model import FastRCNN
from .proposals import dense_proposals


@dataclass
class TrainConfig:
    epochs: int = 16
    images_per_epoch: int = 320
    batch_images: int = 4
    rois_per_image: int = 64
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou: tuple = (0.1, 0.5)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    val_images: int = 100
    model: dict = field(default_factory=lambda: dict(FastRCNN().config))


def sample_rois(proposals, gt_boxes, gt_labels, config: TrainConfig, generator: torch.Generator):
    """RoIs ``(R, 4)``, labels ``(R,)`` and regression targets ``(R, 4)`` for one training image."""
    candidates = torch.cat([proposals, gt_boxes])
    if len(gt_boxes) == 0:
        labels = torch.zeros(len(candidates), dtype=torch.int64)
        pick = torch.randperm(len(candidates), generator=generator)[: config.rois_per_image]
        return candidates[pick], labels[pick], torch.zeros(len(pick), 4)
    iou = B.box_iou(candidates, gt_boxes)
    best, which = iou.max(dim=1)
    fg = torch.nonzero(best >= config.fg_iou).flatten()
    bg = torch.nonzero((best >= config.bg_iou[0]) & (best < config.bg_iou[1])).flatten()
    num_fg = min(int(round(config.fg_fraction * config.rois_per_image)), len(fg))
    fg = fg[torch.randperm(len(fg), generator=generator)[:num_fg]]
    bg = bg[torch.randperm(len(bg), generator=generator)[: config.rois_per_image - num_fg]]
    keep = torch.cat([fg, bg])
    labels = gt_labels[which[keep]].clone()
    labels[num_fg:] = 0
    targets = B.encode(candidates[keep], gt_boxes[which[keep]])
    return candidates[keep], labels, targets


def fast_rcnn_loss(logits, deltas, labels, targets):
    """Log loss over classes plus smooth L1 (beta 1) on the true class's deltas for foreground RoIs."""
    cls_loss = F.cross_entropy(logits, labels)
    fg = torch.nonzero(labels > 0).flatten()
    if len(fg) == 0:
        return cls_loss, deltas.sum() * 0
    cols = 4 * (labels[fg, None] - 1) + torch.arange(4)
    box_loss = F.smooth_l1_loss(deltas[fg[:, None], cols], targets[fg], beta=1.0, reduction="sum") / len(labels)
    return cls_loss, box_loss


def _batch(config: TrainConfig, epoch: int, step: int, rank: int, world: int, proposals, generator):
    """This rank's images and sampled RoIs of one step (the whole batch is split across ranks)."""
    first = epoch * config.images_per_epoch + step * config.batch_images
    indices = list(range(first, first + config.batch_images))[rank::world]
    images, rois, labels, targets = [], [], [], []
    for i, index in enumerate(indices):
        s = D.make_sample(config.seed, D.TRAIN, index)
        r, lab, tgt = sample_rois(proposals, torch.from_numpy(s.boxes), torch.from_numpy(s.labels), config, generator)
        images.append(torch.from_numpy(s.image))
        rois.append(torch.cat([torch.full((len(r), 1), float(i)), r], dim=1))
        labels.append(lab)
        targets.append(tgt)
    return torch.stack(images), torch.cat(rois), torch.cat(labels), torch.cat(targets)


def save(model: FastRCNN, out: Path, config: TrainConfig) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"model": model.config, "train": asdict(config)}, indent=2) + "\n")


def train(config: TrainConfig, out, progress: bool = True) -> dict:
    """Train (one process, or this worker of a torch.distributed.run launch) and write ``out``."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    if distributed:
        torch.distributed.init_process_group("gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        # Workers share the machine's cores: one thread each.
        torch.set_num_threads(1)
        import roipool

        roipool.set_num_threads(1)
    torch.manual_seed(config.seed)  # same initial weights on every rank
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    model = FastRCNN(**config.model)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    steps_per_epoch = config.images_per_epoch // config.batch_images
    total = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=total, pct_start=0.15)
    proposals = torch.from_numpy(dense_proposals(D.IMAGE_SIZE, D.IMAGE_SIZE))
    history = []
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="train", unit="step", dynamic_ncols=True)
    start = time.perf_counter()
    model.train()
    for epoch in range(config.epochs):
        for step in range(steps_per_epoch):
            images, rois, labels, targets = _batch(config, epoch, step, rank, world, proposals, generator)
            logits, deltas = net(images, rois)
            cls_loss, box_loss = fast_rcnn_loss(logits, deltas, labels, targets)
            loss = cls_loss + box_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            history.append(loss.item())
            if bar is not None:
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", cls=f"{cls_loss.item():.3f}",
                                box=f"{box_loss.item():.3f}")  # fmt: skip
                bar.update()
    train_seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    metrics = None
    if rank == 0:
        out = Path(out)
        save(model, out, config)
        val = D.make_set(config.seed, D.VALIDATION, config.val_images)
        result = evaluate_model(model, val, progress)
        metrics = {
            "map50": result["map50"],
            "ap50": result["ap50"],
            "train_seconds": round(train_seconds, 2),
            "steps": total,
            "images_seen": total * config.batch_images,
            "nproc": world,
            "validation_images": config.val_images,
            "loss_first": float(np.mean(history[: max(1, len(history) // 20)])),
            "loss_last": float(np.mean(history[-max(1, len(history) // 20) :])),
            "torch_threads": torch.get_num_threads(),
        }
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return metrics


def evaluate_model(model, samples, progress):
    from .evaluate import evaluate

    return evaluate(model, samples, progress=progress)


def launch(config: TrainConfig, out, nproc: int, progress: bool = True) -> dict:
    """Train with ``nproc`` processes (DistributedDataParallel, gloo, CPU) via ``torch.distributed.run``."""
    if config.batch_images % nproc:
        raise ValueError(f"batch_images ({config.batch_images}) must be divisible by nproc ({nproc})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "train_config.json"
    config_path.write_text(json.dumps(asdict(config)))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "roipool.fastrcnn.train", "--config", str(config_path), "--out", str(out),
    ]  # fmt: skip
    if not progress:
        cmd.append("--no-progress")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # The workers import roipool the way this process did.
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    subprocess.run(cmd, check=True, env=env)
    config_path.unlink()
    return json.loads((out / "metrics.json").read_text())


def _worker_main(argv=None) -> None:
    p = argparse.ArgumentParser(description="one worker of a distributed Fast R-CNN training")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    raw = json.loads(Path(args.config).read_text())
    raw["bg_iou"] = tuple(raw["bg_iou"])
    train(TrainConfig(**raw), args.out, progress=not args.no_progress)


if __name__ == "__main__":
    _worker_main()

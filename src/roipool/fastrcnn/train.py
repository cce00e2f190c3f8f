"""Training: the RPN and Fast R-CNN trained together, optionally data-parallel over gloo.

Each step takes ``batch_images`` generated images through the backbone once.
With ``proposals="rpn"`` the RPN's loss (``rpn.rpn_loss``) is computed on that
feature map and its proposals (``rpn.propose``, detached: approximate joint
training, proposals are constants for the RoI head) feed the RoI sampling; with
``"windows"`` the sliding windows do. The RoI head then takes
``rois_per_image`` RoIs from each image (Fast R-CNN's hierarchical sampling): a
quarter foreground (IoU >= 0.5 with a ground-truth box, the ground-truth boxes
themselves included), the rest background (IoU in [0.1, 0.5)). Its loss is the
log loss over classes plus background, plus smooth L1 on the true class's box
deltas for foreground RoIs, averaged over all sampled RoIs. The total loss is
the sum of the four terms.

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
from . import rpn as R
from .model import CHECKPOINT_FORMAT, RPN_TRAIN_PRE_NMS, RPN_TRAIN_TOP_N, FastRCNN
from .proposals import HARD_WINDOW_ASPECTS, HARD_WINDOW_COUNT, HARD_WINDOW_SIZES


def model_config(dataset: str = D.DEFAULT_DATASET, proposals: str = "rpn", pooler: str = "roi_pool") -> dict:
    """The architecture for a data set, proposal method and pooler (``FastRCNN(**config)``)."""
    ds = D.get(dataset)
    extra = {}
    if proposals == "windows" and dataset == "hard":
        extra = dict(window_sizes=HARD_WINDOW_SIZES, window_aspects=HARD_WINDOW_ASPECTS, window_count=HARD_WINDOW_COUNT)
    return dict(FastRCNN(num_classes=len(ds.classes), pooler=pooler, proposals=proposals, **extra).config)


# Epochs of the default training on each data set: 24 on the hard set reach its
# mAP@0.5 goal of 0.85 within 10 minutes on two quiet cores (docs/fastrcnn.md).
DEFAULT_EPOCHS = {"hard": 24, "easy": 8}


@dataclass
class TrainConfig:
    dataset: str = D.DEFAULT_DATASET
    epochs: int = DEFAULT_EPOCHS[D.DEFAULT_DATASET]
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
    model: dict = field(default_factory=model_config)


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


class TrainingStep(torch.nn.Module):
    """One joint step's losses; a module, so that DistributedDataParallel can wrap it.

    ``forward(images (N, 3, H, W), gt_boxes, gt_labels)`` (N tensors each) ->
    ``{"rpn_cls", "rpn_box", "cls", "box"}`` scalar losses (the RPN's are 0
    for sliding windows).
    """

    def __init__(self, model: FastRCNN, config: TrainConfig, generator: torch.Generator):
        super().__init__()
        self.model, self.config, self.generator = model, config, generator

    def forward(self, images, gt_boxes, gt_labels):
        model = self.model
        height, width = images.shape[-2:]
        features = model.backbone(images)
        zero = features.sum() * 0
        rpn_cls = rpn_box = zero
        if model.rpn is not None:
            logits, deltas = model.rpn(features)
            anchors = model.anchors(features)
            rpn_cls, rpn_box = R.rpn_loss(logits, deltas, anchors, gt_boxes, self.generator)
            proposals = [p for p, _ in R.propose(logits.detach(), deltas.detach(), anchors, height, width,
                                                 RPN_TRAIN_PRE_NMS, RPN_TRAIN_TOP_N)]  # fmt: skip
        else:
            proposals = [model.windows(height, width)] * len(images)
        rois, labels, targets = [], [], []
        for i, (props, gt, gt_lab) in enumerate(zip(proposals, gt_boxes, gt_labels, strict=True)):
            r, lab, tgt = sample_rois(props, gt, gt_lab, self.config, self.generator)
            rois.append(torch.cat([torch.full((len(r), 1), float(i)), r], dim=1))
            labels.append(lab)
            targets.append(tgt)
        cls_logits, box_deltas = model.head(model.pool(features, torch.cat(rois)))
        cls, box = fast_rcnn_loss(cls_logits, box_deltas, torch.cat(labels), torch.cat(targets))
        return {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "cls": cls, "box": box}


def _batch(config: TrainConfig, epoch: int, step: int, rank: int, world: int):
    """This rank's images and ground truth of one step (the whole batch is split across ranks)."""
    ds = D.get(config.dataset)
    first = epoch * config.images_per_epoch + step * config.batch_images
    samples = [ds.make_sample(config.seed, D.TRAIN, i) for i in range(first, first + config.batch_images)[rank::world]]
    images = torch.stack([torch.from_numpy(s.image) for s in samples])
    return images, [torch.from_numpy(s.boxes) for s in samples], [torch.from_numpy(s.labels) for s in samples]


def save(model: FastRCNN, out: Path, config: TrainConfig) -> None:
    """Write ``model.safetensors`` and ``config.json`` in ``out``, each to a temporary name first, then renamed.

    An interrupted save leaves at most a ``*.tmp`` file, never a half-written
    model under its real name.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    config_text = (
        json.dumps({"format": CHECKPOINT_FORMAT, "model": model.config, "train": asdict(config)}, indent=2) + "\n"
    )
    tmp_model, tmp_config = out / "model.safetensors.tmp", out / "config.json.tmp"
    save_file(state, str(tmp_model))
    tmp_config.write_text(config_text)
    os.replace(tmp_model, out / "model.safetensors")
    os.replace(tmp_config, out / "config.json")


def check_out(out) -> Path:
    """``--out`` must be a folder or not exist yet: refuse a file before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    return out


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
    D.get(config.dataset)  # an unknown name fails here, before any work
    out = check_out(out)
    torch.manual_seed(config.seed)  # same initial weights on every rank
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    model = FastRCNN(**config.model)
    step_module = TrainingStep(model, config, generator)
    net = torch.nn.parallel.DistributedDataParallel(step_module) if distributed else step_module
    steps_per_epoch = config.images_per_epoch // config.batch_images
    total = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=total, pct_start=0.15)
    history = []
    parts_history = []
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="train", unit="step", dynamic_ncols=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.train()
    for epoch in range(config.epochs):
        for step in range(steps_per_epoch):
            losses = net(*_batch(config, epoch, step, rank, world))
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            history.append(loss.item())
            parts_history.append([v.item() for v in losses.values()])
            if bar is not None:
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}",
                                **{k: f"{v.item():.3f}" for k, v in losses.items()})  # fmt: skip
                bar.update()
    train_seconds = time.perf_counter() - start
    # CPU time of this process (all its threads): on a busy machine a fairer
    # estimate of the time a quiet one would take than the wall clock.
    train_cpu_seconds = time.process_time() - cpu_start
    if bar is not None:
        bar.close()
    metrics = None
    if rank == 0:
        save(model, out, config)
        val = D.get(config.dataset).make_set(config.seed, D.VALIDATION, config.val_images)
        result = evaluate_model(model, val, D.get(config.dataset).classes, progress)
        n = max(1, len(history) // 20)
        first_parts, last_parts = np.mean(parts_history[:n], axis=0), np.mean(parts_history[-n:], axis=0)
        metrics = {
            "dataset": config.dataset,
            "proposals": model.config["proposals"],
            "pooler": model.config["pooler"],
            "map50": result["map50"],
            "map": result["map"],
            "ap50": result["ap50"],
            "train_seconds": round(train_seconds, 2),
            "train_cpu_seconds": round(train_cpu_seconds, 2),
            "steps": total,
            "images_seen": total * config.batch_images,
            "nproc": world,
            "validation_images": config.val_images,
            "loss_first": float(np.mean(history[:n])),
            "loss_last": float(np.mean(history[-n:])),
            "loss_parts_first": dict(zip(("rpn_cls", "rpn_box", "cls", "box"), map(float, first_parts), strict=True)),
            "loss_parts_last": dict(zip(("rpn_cls", "rpn_box", "cls", "box"), map(float, last_parts), strict=True)),
            "torch_threads": torch.get_num_threads(),
        }
        (out / "metrics.json.tmp").write_text(json.dumps(metrics, indent=2) + "\n")
        os.replace(out / "metrics.json.tmp", out / "metrics.json")
    if distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return metrics


def evaluate_model(model, samples, classes, progress):
    from .evaluate import evaluate

    return evaluate(model, samples, classes, progress=progress)


def launch(config: TrainConfig, out, nproc: int, progress: bool = True) -> dict:
    """Train with ``nproc`` processes (DistributedDataParallel, gloo, CPU) via ``torch.distributed.run``."""
    if config.batch_images % nproc:
        raise ValueError(f"batch_images ({config.batch_images}) must be divisible by nproc ({nproc})")
    import tempfile

    out = check_out(out)
    D.get(config.dataset)
    # The workers' config goes to a temporary folder: nothing is written to
    # ``out`` until training has run (rank 0 writes it at the end).
    tmp = Path(tempfile.mkdtemp(prefix="roipool-train-"))
    config_path = tmp / "train_config.json"
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
    try:
        subprocess.run(cmd, check=True, env=env)
    finally:
        config_path.unlink()
        tmp.rmdir()
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

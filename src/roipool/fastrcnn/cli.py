"""``roipool fast-rcnn {train,eval,detect,speed}``: the argparse wiring and the commands' bodies."""

from __future__ import annotations

import json
import sys

DATASETS = ("hard", "easy")  # data.DATASETS, named here so that --help needs no numpy
PROPOSALS = ("rpn", "windows")  # model.PROPOSALS, named here so that --help needs no torch


def _positive(text: str) -> int:
    import argparse

    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_parser(sub) -> None:
    """Add the ``fast-rcnn`` command group to the main parser's subparsers."""
    group = sub.add_parser("fast-rcnn", help="Faster/Fast R-CNN on generated shapes (needs the fastrcnn extra)")
    cmds = group.add_subparsers(dest="fast_rcnn_command", required=True)

    p = cmds.add_parser("train", help="train from scratch (RPN and head together) and write the model and metrics.json")
    p.add_argument("--out", required=True, help="output folder (model.safetensors, config.json, metrics.json)")
    p.add_argument("--dataset", choices=DATASETS, default="hard", help="generated set (default: hard)")
    p.add_argument("--proposals", choices=PROPOSALS, default="rpn",
                   help="rpn: a Region Proposal Network trained jointly; windows: dense sliding windows")  # fmt: skip
    p.add_argument("--epochs", type=_positive, default=None,
                   help="epochs of generated images (default: 24 on hard, 8 on easy)")  # fmt: skip
    p.add_argument("--images-per-epoch", type=_positive, default=None, help="fresh images per epoch (default: 320)")
    p.add_argument("--seed", type=int, default=0, help="data and initialisation seed")
    p.add_argument("--nproc", type=_positive, default=1, help="processes (DistributedDataParallel over gloo, CPU)")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch and roipool threads of a one-process run (default: as set; 1 helps on a busy machine)")  # fmt: skip
    # RoIAlign by default: +0.08 mAP@0.5 and +0.18 mAP@[0.5:0.95] over RoI max pooling on the hard set
    p.add_argument("--pooler", choices=["roi_pool", "roi_align"], default="roi_align",
                   help="RoI pooling layer (default: roi_align)")  # fmt: skip
    p.add_argument("--val-images", type=_positive, default=None, help="validation images for the mAPs (default: 100)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = cmds.add_parser("eval", help="VOC mAP@0.5 and COCO mAP@[0.5:0.95] on a fresh generated set")
    p.add_argument("--model", required=True, help="folder written by train")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="generated set (default: the model's)")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated test set")
    p.add_argument("--images", type=_positive, default=200, help="test images")
    p.add_argument("--top-n", type=_positive, default=None, help="RPN proposals per image (default: 300)")
    p.add_argument("--proposal-recall", action="store_true",
                   help="also the recall of ground truth at IoU 0.5 and 0.7 at 50..2000 proposals, "
                        "for the model's proposals and for sliding windows")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_eval)

    p = cmds.add_parser("detect", help="draw proposals and detections on generated test images")
    p.add_argument("--model", required=True, help="folder written by train")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="generated set (default: the model's)")
    p.add_argument("--seed", type=int, default=3, help="seed of the generated image(s)")
    p.add_argument(
        "--images", type=_positive, default=3, help="images side by side (a proposals and a detections panel each)"
    )
    p.add_argument("--min-score", type=float, default=0.5, help="draw detections scoring at least this")
    p.add_argument("--top-proposals", type=_positive, default=30, help="proposals drawn per image")
    p.set_defaults(func=_detect)

    p = cmds.add_parser("speed", help="shared features against per-proposal R-CNN on the same model")
    p.add_argument("--proposals", type=int, default=2000, help="proposals on the image")
    p.add_argument("--image-size", type=int, default=256, help="square image side in pixels")
    p.add_argument("--model", default=None, help="trained model folder (default: the architecture, fresh weights)")
    p.add_argument("--svd-rank", type=int, default=32, help="truncated-SVD rank of fc6/fc7 (0: full head)")
    p.add_argument("--repeat", type=int, default=5, help="timed rounds (medians reported)")
    p.add_argument("--crop-batch", type=int, default=250, help="crops per backbone call in the per-proposal path")
    p.add_argument("--threads", type=int, default=None, help="threads for torch and roipool (default: as set)")
    p.add_argument("--nchw", action="store_true", help="contiguous NCHW tensors instead of channels-last")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--detectors", nargs=2, metavar=("RPN_MODEL", "WINDOWS_MODEL"), default=None,
                   help="instead: time the whole detection per image (backbone, proposals, pooling, head, NMS) "
                        "of two trained models on the same test images")  # fmt: skip
    p.add_argument("--images", type=_positive, default=20, help="test images for --detectors")
    p.set_defaults(func=_speed)


def _fail(message: str) -> int:
    print(f"roipool fast-rcnn: error: {message}", file=sys.stderr)
    return 2


def _train(args) -> int:
    from .train import DEFAULT_EPOCHS, TrainConfig, check_out, launch, model_config, train

    config = TrainConfig(
        seed=args.seed, dataset=args.dataset, model=model_config(args.dataset, args.proposals, args.pooler)
    )
    config.epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS[args.dataset]
    if args.images_per_epoch is not None:
        config.images_per_epoch = args.images_per_epoch
    if args.val_images is not None:
        config.val_images = args.val_images
    try:
        check_out(args.out)
    except ValueError as e:
        return _fail(str(e))
    if args.nproc > 1:
        metrics = launch(config, args.out, args.nproc, progress=not args.no_progress)
    else:
        if args.threads:
            import torch

            import roipool

            torch.set_num_threads(args.threads)
            roipool.set_num_threads(args.threads)
        metrics = train(config, args.out, progress=not args.no_progress)
    print(f"map50 {metrics['map50']:.4f}  map {metrics['map']:.4f}  train_seconds {metrics['train_seconds']:.1f}  "
          f"-> {args.out}")  # fmt: skip
    return 0


def _load(path):
    from .evaluate import ModelError, load

    try:
        return load(path), None
    except ModelError as e:
        return None, _fail(str(e))


def _eval(args) -> int:
    from . import data as D
    from .evaluate import evaluate, proposal_recall
    from .model import FastRCNN
    from .train import model_config

    model, failed = _load(args.model)
    if model is None:
        return failed
    ds = D.get(args.dataset or model.dataset)
    if len(ds.classes) != model.num_classes:
        return _fail(f"the model has {model.num_classes} classes, the {ds.name!r} set {len(ds.classes)}")
    samples = ds.make_set(args.seed, D.TEST, args.images)
    result = evaluate(model, samples, ds.classes, progress=not args.json, top_n=args.top_n)
    result.update(dataset=ds.name, seed=args.seed, images=args.images, proposals=model.config["proposals"])
    if args.proposal_recall:
        windows = FastRCNN(**model_config(ds.name, "windows"))
        result["recall"] = {model.config["proposals"]: proposal_recall(model, samples)}
        if model.rpn is not None:
            result["recall"]["windows"] = proposal_recall(windows, samples)
    if args.json:
        print(json.dumps(result))
        return 0
    for name in ds.classes:
        print(f"{name:>10}: AP@0.5 {result['ap50'][name]:.4f}  AP@[0.5:0.95] {result['ap'][name]:.4f}")
    print(f"mAP@0.5: {result['map50']:.4f}  mAP@[0.5:0.95]: {result['map']:.4f}  mAP@0.75: {result['map75']:.4f}  "
          f"({args.images} '{ds.name}' images, seed {args.seed}, {model.config['proposals']} proposals)")  # fmt: skip
    for kind, table in result.get("recall", {}).items():
        cells = "  ".join(f"{k}: {r[0.5]:.3f}/{r[0.7]:.3f}" for k, r in table.items())
        print(f"recall@IoU0.5/0.7, {kind:>7}: {cells}")
    return 0


def _detect(args) -> int:
    from .evaluate import ModelError
    from .figures import detections_figure

    try:
        path = detections_figure(args.model, args.out, seed=args.seed, images=args.images, min_score=args.min_score,
                                 top_proposals=args.top_proposals, dataset=args.dataset)  # fmt: skip
    except ModelError as e:
        return _fail(str(e))
    print(path)
    return 0


def _speed(args) -> int:
    from .speed import compare_detectors, measure

    if args.detectors:
        models = []
        for path in args.detectors:
            model, failed = _load(path)
            if model is None:
                return failed
            models.append(model)
        try:
            r = compare_detectors(*models, images=args.images, repeat=args.repeat, threads=args.threads)
        except ValueError as e:
            return _fail(str(e))
        if args.json:
            print(json.dumps(r))
            return 0
        print(f"whole detection per image ({r['images']} '{r['dataset']}' test images, {r['torch_threads']} threads, "
              f"medians of {r['repeat']} rounds):")  # fmt: skip
        for name in ("rpn", "windows"):
            print(f"  {name:>7} ({r[name]['proposals']} proposals): {r[name]['ms']:.1f} ms")
        print(f"  windows / rpn: {r['ratio']:.2f}x")
        return 0
    model = None
    if args.model:
        model, failed = _load(args.model)
        if model is None:
            return failed
    r = measure(model, args.proposals, args.image_size, args.svd_rank, args.crop_batch, args.repeat,
                channels_last=not args.nchw, threads=args.threads)  # fmt: skip
    if args.json:
        print(json.dumps(r))
        return 0
    p = r["shared_parts"]
    print(
        f"{r['proposals']} proposals on a {r['image_size']}x{r['image_size']} image "
        f"(float32 {r['memory_format']}, {r['torch_threads']} torch threads, {r['roipool_threads']} roipool threads; "
        f"fc6/fc7 SVD rank {r['svd_rank'] or 'full'})"
    )
    print(
        f"  shared features (Fast R-CNN): {r['shared_ms']:9.1f} ms  "
        f"(backbone {p['backbone_ms']:.1f}, {r['pooler']} {p['pool_ms']:.1f}, head {p['head_ms']:.1f})"
    )
    print(
        f"  per proposal (R-CNN style):   {r['per_proposal_ms']:9.1f} ms  "
        f"({r['crop_size']}x{r['crop_size']} crops in batches of {r['crop_batch']}; warping {r['warp_ms']:.1f} ms more)"
    )
    print(f"  speedup: {r['speedup']:.1f}x  ({r['speedup_with_warp']:.1f}x counting the warping)")
    return 0

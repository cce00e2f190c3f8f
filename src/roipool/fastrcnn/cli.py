"""``roipool fast-rcnn {train,eval,detect,speed}``: the argparse wiring and the commands' bodies."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    """Add the ``fast-rcnn`` command group to the main parser's subparsers."""
    group = sub.add_parser("fast-rcnn", help="a small Fast R-CNN on generated shapes (needs the fastrcnn extra)")
    cmds = group.add_subparsers(dest="fast_rcnn_command", required=True)

    p = cmds.add_parser("train", help="train from scratch and write the model and metrics.json")
    p.add_argument("--out", required=True, help="output folder (model.safetensors, config.json, metrics.json)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of generated images (default: 16)")
    p.add_argument("--images-per-epoch", type=int, default=None, help="fresh images per epoch (default: 320)")
    p.add_argument("--seed", type=int, default=0, help="data and initialisation seed")
    p.add_argument("--nproc", type=int, default=1, help="processes (DistributedDataParallel over gloo, CPU)")
    p.add_argument("--pooler", choices=["roi_pool", "roi_align"], default="roi_pool", help="RoI pooling layer")
    p.add_argument("--val-images", type=int, default=None, help="validation images for map50 (default: 100)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = cmds.add_parser("eval", help="mAP@0.5 on a fresh generated set")
    p.add_argument("--model", required=True, help="folder written by train")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated test set")
    p.add_argument("--images", type=int, default=200, help="test images")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_eval)

    p = cmds.add_parser("detect", help="draw detections on a generated image")
    p.add_argument("--model", required=True, help="folder written by train")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--seed", type=int, default=3, help="seed of the generated image(s)")
    p.add_argument("--images", type=int, default=4, help="images side by side")
    p.add_argument("--min-score", type=float, default=0.5, help="draw detections scoring at least this")
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
    p.set_defaults(func=_speed)


def _train(args) -> int:
    from .train import TrainConfig, launch, train

    config = TrainConfig(seed=args.seed)
    if args.epochs is not None:
        config.epochs = args.epochs
    if args.images_per_epoch is not None:
        config.images_per_epoch = args.images_per_epoch
    if args.val_images is not None:
        config.val_images = args.val_images
    config.model["pooler"] = args.pooler
    if args.nproc > 1:
        metrics = launch(config, args.out, args.nproc, progress=not args.no_progress)
    else:
        metrics = train(config, args.out, progress=not args.no_progress)
    print(f"map50 {metrics['map50']:.4f}  train_seconds {metrics['train_seconds']:.1f}  -> {args.out}")
    return 0


def _eval(args) -> int:
    from . import data as D
    from .evaluate import evaluate, load

    model = load(args.model)
    result = evaluate(model, D.make_set(args.seed, D.TEST, args.images), progress=not args.json)
    result.update(seed=args.seed, images=args.images)
    if args.json:
        print(json.dumps(result))
    else:
        for name, ap in result["ap50"].items():
            print(f"AP@0.5 {name:>10}: {ap:.4f}")
        print(f"mAP@0.5: {result['map50']:.4f} ({args.images} images, seed {args.seed})")
    return 0


def _detect(args) -> int:
    from .. import viz

    path = viz.detections_figure(args.model, args.out, seed=args.seed, images=args.images, min_score=args.min_score)
    print(path)
    return 0


def _speed(args) -> int:
    from .speed import measure

    model = None
    if args.model:
        from .evaluate import load

        model = load(args.model)
    r = measure(model, args.proposals, args.image_size, args.svd_rank, args.crop_batch, args.repeat,
                channels_last=not args.nchw, threads=args.threads)  # fmt: skip
    if args.json:
        print(json.dumps(r))
        return 0
    p = r["shared_parts"]
    print(f"{r['proposals']} proposals on a {r['image_size']}x{r['image_size']} image "
          f"(float32 {r['memory_format']}, {r['torch_threads']} torch threads, {r['roipool_threads']} roipool threads; "
          f"fc6/fc7 SVD rank {r['svd_rank'] or 'full'})")
    print(f"  shared features (Fast R-CNN): {r['shared_ms']:9.1f} ms  "
          f"(backbone {p['backbone_ms']:.1f}, {r['pooler']} {p['pool_ms']:.1f}, head {p['head_ms']:.1f})")
    print(f"  per proposal (R-CNN style):   {r['per_proposal_ms']:9.1f} ms  "
          f"({r['crop_size']}x{r['crop_size']} crops in batches of {r['crop_batch']}; warping {r['warp_ms']:.1f} ms more)")
    print(f"  speedup: {r['speedup']:.1f}x  ({r['speedup_with_warp']:.1f}x counting the warping)")
    return 0


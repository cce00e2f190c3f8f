"""The ``roipool`` command: ``demo``, ``bench`` and ``fast-rcnn``."""

from __future__ import annotations

import argparse
import sys

#: The optional packages each extra brings (pyproject.toml), and the extra each command needs.
EXTRA_PACKAGES = {
    "viz": {"matplotlib"},
    "torch": {"torch"},
    "fastrcnn": {"torch", "safetensors", "tqdm", "matplotlib"},
}


def _demo(args) -> int:
    from . import demo

    demo.main(out_dir=args.out)
    return 0


def _bench(args) -> int:
    from . import bench

    return bench.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roipool", description="Exact, fast RoI pooling.")
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"roipool {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="walk through RoI pooling on a worked example, and draw it")
    p.add_argument("--out", default="roipool-demo", help="folder for the pictures (default: roipool-demo/)")
    p.set_defaults(func=_demo, extra="viz")
    p = sub.add_parser("bench", help="time the ops against the installed peers")
    p.add_argument("--workload", action="append", help="workload name (repeatable; default: all)")
    p.add_argument("--repeat", type=int, default=7, help="timed repeats per measurement (median reported)")
    p.add_argument(
        "--calls",
        type=int,
        default=1,
        help="calls back to back per timing, their mean reported (default 1: one call after the process was idle)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    p.add_argument(
        "--jax", action="store_true", help="also time roipool.jax on vgg16 and small-batch (XLA compiles for minutes)"
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="feature maps in channels-last memory (a channels_last tensor, an NHWC-strided array)",
    )
    p.set_defaults(func=_bench, extra="torch")
    from .fastrcnn.cli import add_parser as add_fast_rcnn

    add_fast_rcnn(sub)
    sub.choices["fast-rcnn"].set_defaults(extra="fastrcnn")
    return parser


def missing_extra(exc: ModuleNotFoundError, extra: str | None) -> str | None:
    """The one-line message for a command whose optional ``extra`` is not installed, or None if ``exc`` is another error."""
    module = (exc.name or "").partition(".")[0]
    if extra is None or module not in EXTRA_PACKAGES.get(extra, ()):
        return None
    return f"roipool: this command needs {module}, which is not installed; pip install 'roipool[{extra}]'"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:
        message = missing_extra(exc, getattr(args, "extra", None))
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

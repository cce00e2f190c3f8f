"""Plug the Triton launchers into the torch custom ops as their CUDA kernels.

``roipool._torch`` defines ``roipool::<op>`` with CPU and fake kernels and,
when a CUDA tensor arrives, imports this package (its ``BACKEND_MODULES``),
whose import calls :func:`register`. Each op's schema argument names are
matched to the launcher's keyword arguments, so an op is registered only when
the two agree; :data:`REGISTERED` lists the ops that got a CUDA kernel and
:data:`SKIPPED` why the others did not.

Memory format: the Triton kernels read and write NCHW. As on the CPU, a
channels-last ``input`` gives channels-last outputs, and a backward op's
``channels_last`` argument (the forward input's format) gives a channels-last
gradient: here through one transposing copy of each 4-D result.
"""

from __future__ import annotations

import inspect

import torch

from .._torch._library import channels_last, in_format
from . import prroi_pool, ps_roi, roi_align, roi_align_rotated, roi_pool

NAMESPACE = "roipool"


def _roi_pool_output(**kwargs):
    return roi_pool.roi_pool_forward(**kwargs, with_argmax=False)[0]


def _roi_pool_with_argmax(**kwargs):
    return roi_pool.roi_pool_forward(**kwargs, with_argmax=True)


# op name -> (launcher, number of tensors it returns)
LAUNCHERS = {
    "roi_pool": (_roi_pool_output, 1, roi_pool.roi_pool_forward),
    "roi_pool_with_argmax": (_roi_pool_with_argmax, 2, roi_pool.roi_pool_forward),
    "roi_pool_backward": (roi_pool.roi_pool_backward, 1, roi_pool.roi_pool_backward),
    "roi_align": (roi_align.roi_align_forward, 1, roi_align.roi_align_forward),
    "roi_align_backward": (roi_align.roi_align_backward, 1, roi_align.roi_align_backward),
    "roi_align_boxes_backward": (roi_align.roi_align_boxes_backward, 1, roi_align.roi_align_boxes_backward),
    "ps_roi_pool": (ps_roi.ps_roi_pool_forward, 1, ps_roi.ps_roi_pool_forward),
    "ps_roi_pool_backward": (ps_roi.ps_roi_pool_backward, 1, ps_roi.ps_roi_pool_backward),
    "ps_roi_align": (ps_roi.ps_roi_align_forward, 1, ps_roi.ps_roi_align_forward),
    "ps_roi_align_backward": (ps_roi.ps_roi_align_backward, 1, ps_roi.ps_roi_align_backward),
    "ps_roi_align_boxes_backward": (ps_roi.ps_roi_align_boxes_backward, 1, ps_roi.ps_roi_align_boxes_backward),
    "roi_align_rotated": (roi_align_rotated.roi_align_rotated_forward, 1, roi_align_rotated.roi_align_rotated_forward),
    "roi_align_rotated_backward": (
        roi_align_rotated.roi_align_rotated_backward,
        1,
        roi_align_rotated.roi_align_rotated_backward,
    ),
    "roi_align_rotated_box_backward": (
        roi_align_rotated.roi_align_rotated_box_backward,
        1,
        roi_align_rotated.roi_align_rotated_box_backward,
    ),
    "prroi_pool": (prroi_pool.prroi_pool_forward, 1, prroi_pool.prroi_pool_forward),
    "prroi_pool_backward": (prroi_pool.prroi_pool_backward, 1, prroi_pool.prroi_pool_backward),
    "prroi_pool_boxes_backward": (prroi_pool.prroi_pool_boxes_backward, 1, prroi_pool.prroi_pool_boxes_backward),
}

REGISTERED: list[str] = []
SKIPPED: dict[str, str] = {}


def cuda_kernel(name: str, schema: torch.FunctionSchema):
    """The CUDA kernel for op ``name``, or the reason there is none for this schema."""
    if name not in LAUNCHERS:
        return None, "no Triton launcher"
    launcher, outputs, signature_of = LAUNCHERS[name]
    names = [a.name for a in schema.arguments]
    accepted = set(inspect.signature(signature_of).parameters) | {"channels_last"}
    missing = [n for n in names if n not in accepted]
    if missing:
        return None, f"schema arguments {missing} unknown to {signature_of.__name__}"
    if len(schema.returns) != outputs:
        return None, f"schema returns {len(schema.returns)} tensors, the launcher {outputs}"

    def kernel(*args):
        kwargs = dict(zip(names, args))
        follow = kwargs.pop("channels_last", None)
        if follow is None:  # a forward: the outputs follow the input
            follow = "input" in kwargs and channels_last(kwargs["input"])
        result = launcher(**kwargs)
        if isinstance(result, tuple):
            return tuple(in_format(t, follow) for t in result)
        return in_format(result, follow)

    kernel.__name__ = f"{name}_triton"
    return kernel, None


def register() -> None:
    """Register a CUDA kernel for every ``roipool::`` op whose schema the launchers match."""
    try:
        from .._torch import ps_roi, roi_align, roi_align_rotated, roi_pool  # noqa: F401  (define the ops)
    except ImportError:  # a tree without the torch frontend
        return
    from .._torch import prroi_pool as _prroi_ops  # noqa: F401  (defines the roipool::prroi_pool* ops)

    namespace = getattr(torch.ops, NAMESPACE)
    for name in LAUNCHERS:
        qualname = f"{NAMESPACE}::{name}"
        if name in REGISTERED:
            continue
        if not hasattr(namespace, name):
            SKIPPED[name] = "op not defined"
            continue
        if torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA"):
            SKIPPED[name] = "a CUDA kernel is already registered"
            continue
        kernel, reason = cuda_kernel(name, getattr(namespace, name).default._schema)
        if kernel is None:
            SKIPPED[name] = reason
            continue
        torch.library.register_kernel(qualname, "cuda", kernel)
        REGISTERED.append(name)
        SKIPPED.pop(name, None)

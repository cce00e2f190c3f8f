"""Triton kernels for the RoI ops (CUDA; CPU tensors under ``TRITON_INTERPRET=1``).

Importing this package imports torch and triton (``import roipool`` never
does) and registers the launchers as the CUDA kernels of the ``roipool::``
custom ops (``_register``). The launchers also take CPU tensors under
``TRITON_INTERPRET=1``, which is how the tests run without a GPU.
``docs/gpu.md`` describes the kernel design.
"""

from __future__ import annotations

from .prroi_pool import prroi_pool_backward, prroi_pool_boxes_backward, prroi_pool_forward
from .ps_roi import ps_roi_align_backward, ps_roi_align_forward, ps_roi_pool_backward, ps_roi_pool_forward
from .roi_align import roi_align_backward, roi_align_forward
from .roi_pool import roi_pool_backward, roi_pool_forward

__all__ = [
    "roi_pool_forward",
    "roi_pool_backward",
    "roi_align_forward",
    "roi_align_backward",
    "ps_roi_pool_forward",
    "ps_roi_pool_backward",
    "ps_roi_align_forward",
    "ps_roi_align_backward",
    "prroi_pool_forward",
    "prroi_pool_backward",
    "prroi_pool_boxes_backward",
]

from . import _register  # noqa: E402

_register.register()

"""Slow, readable NumPy versions of the ops: the test oracle.

Written as plain loops that follow the textbook description line by line,
independently of the fast kernels (which share ``cpu`` geometry code), so that the
tests compare two separate readings of ``docs/semantics.md``. Inputs are
assumed valid; these functions do no checking.

One module per op family; every public name is importable from here
(``roipool.reference.roi_align``).
"""

from ._common import bilinear_taps, c_round
from .prroi_pool import hat_integral, prroi_bins, prroi_pool, prroi_pool_backward, prroi_pool_boxes_backward
from .ps_roi import (
    ps_roi_align,
    ps_roi_align_backward,
    ps_roi_align_boxes_backward,
    ps_roi_pool,
    ps_roi_pool_backward,
)
from .roi_align import (
    roi_align,
    roi_align_backward,
    roi_align_boxes_backward,
    roi_align_geometry,
    roi_align_samples,
)
from .roi_align_rotated import (
    roi_align_rotated,
    roi_align_rotated_backward,
    roi_align_rotated_box_grad,
    roi_align_rotated_geometry,
    roi_align_rotated_samples,
)
from .roi_pool import roi_pool, roi_pool_backward

__all__ = [
    "bilinear_taps",
    "c_round",
    "hat_integral",
    "prroi_bins",
    "prroi_pool",
    "prroi_pool_backward",
    "prroi_pool_boxes_backward",
    "ps_roi_align",
    "ps_roi_align_backward",
    "ps_roi_align_boxes_backward",
    "ps_roi_pool",
    "ps_roi_pool_backward",
    "roi_align",
    "roi_align_backward",
    "roi_align_boxes_backward",
    "roi_align_geometry",
    "roi_align_samples",
    "roi_align_rotated",
    "roi_align_rotated_backward",
    "roi_align_rotated_box_grad",
    "roi_align_rotated_geometry",
    "roi_align_rotated_samples",
    "roi_pool",
    "roi_pool_backward",
]

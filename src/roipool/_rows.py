"""Compiled passes over box rows, for ``_checks``: one pass instead of a dozen NumPy calls.

A small call spent more time in its NumPy checks than in its kernel, and 3 to
8 times more after the process had been idle (``docs/benchmarks.md``). This
module imports Numba; ``_checks`` imports it on first use, so that importing
``roipool`` or ``roipool.jax`` does not.
"""

from __future__ import annotations

import numba
import numpy as np

# What :func:`rois_rows` found wrong with a row (0: nothing).
BATCH_NOT_WHOLE, BATCH_OUT_OF_RANGE, COORD_NOT_FINITE = 1, 2, 3


@numba.njit(cache=True, nogil=True)
def rois_rows(rows, num_images, out):
    """``out (K, 5)`` <- ``rows (K, 5)`` converted to ``out``'s dtype, checked row by row; returns
    ``(k, problem)`` for the first bad row (``BATCH_NOT_WHOLE``, ``BATCH_OUT_OF_RANGE``,
    ``COORD_NOT_FINITE``, tested in that order), or ``(-1, 0)``.

    The batch index is tested in ``rows``' own dtype (a float64 1.000000001 is
    not whole, though it rounds to float32 1.0), the coordinates after the
    conversion (a float64 1e300 overflows float32).
    """
    for k in range(rows.shape[0]):
        b = rows[k, 0]
        if not (np.isfinite(b) and b == np.floor(b)):
            return k, BATCH_NOT_WHOLE
        if not 0 <= b < num_images:
            return k, BATCH_OUT_OF_RANGE
        out[k, 0] = b
        for j in range(1, 5):
            out[k, j] = rows[k, j]
            if not np.isfinite(out[k, j]):
                return k, COORD_NOT_FINITE
    return -1, 0


@numba.njit(cache=True, nogil=True)
def first_overflowing_box(rois, scale, offset):
    """The first RoI whose scaled corners ``rois[k, 1:5] * scale - offset`` (``scale``, ``offset``
    in ``rois``' dtype) or their extents are not finite, else -1."""
    for k in range(rois.shape[0]):
        x0 = rois[k, 1] * scale - offset
        y0 = rois[k, 2] * scale - offset
        x1 = rois[k, 3] * scale - offset
        y1 = rois[k, 4] * scale - offset
        # an extent is finite only if both its corners are
        if not (np.isfinite(x1 - x0) and np.isfinite(y1 - y0)):
            return k
    return -1

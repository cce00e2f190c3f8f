"""The single definition of RoI max-pooling geometry used by the kernels.

Box corners are scaled in the input's floating type and rounded half away from
zero (C's ``round``); the RoI spans ``max(end - start + 1, 1)`` cells; bin ``p``
of ``P`` covers ``[floor(p * size / P), ceil((p + 1) * size / P))`` offset by
the RoI's first cell and clipped to the map. ``docs/semantics.md`` gives the
worked example. ``reference.py`` restates these rules independently, on
purpose, so that the tests compare two readings of the definition.
"""

from __future__ import annotations

import math

import numba
import numpy as np


# Rounded corners are clamped to +-2**30 so that integer geometry cannot
# overflow; any such corner already lies far outside every feature map.
COORD_LIMIT = 2.0**30


@numba.njit(cache=True, nogil=True)
def round_half_away(v):
    """C's ``round`` (halves go away from zero; NumPy's ``round`` goes to even), clamped."""
    a = np.floor(abs(v))
    # abs(v) - floor(abs(v)) is exact in binary floating point, so the test is exact too.
    if abs(v) - a >= 0.5:
        a += 1
    a = min(a, COORD_LIMIT)
    return int(a) if v >= 0 else -int(a)


@numba.njit(cache=True, nogil=True)
def roi_pool_bins(rois, spatial_scale, pooled_h, pooled_w, height, width):
    """Bin edges of every RoI.

    ``rois`` is ``(K, 5)`` in the input's dtype, ``spatial_scale`` a scalar of the
    same dtype. Returns ``batch (K,)``, ``hbins (K, pooled_h, 2)`` and
    ``wbins (K, pooled_w, 2)`` (int32 ``[start, end)`` pairs, clipped to the map;
    ``end <= start`` means the bin is empty), and ``cost (K,)``, the number of
    input cells the RoI's bins read (for load balancing).
    """
    k_total = rois.shape[0]
    batch = np.empty(k_total, np.int32)
    hbins = np.empty((k_total, pooled_h, 2), np.int32)
    wbins = np.empty((k_total, pooled_w, 2), np.int32)
    cost = np.empty(k_total, np.int64)
    for k in range(k_total):
        batch[k] = int(rois[k, 0])
        x1 = round_half_away(rois[k, 1] * spatial_scale)
        y1 = round_half_away(rois[k, 2] * spatial_scale)
        x2 = round_half_away(rois[k, 3] * spatial_scale)
        y2 = round_half_away(rois[k, 4] * spatial_scale)
        rows = _bin_edges(y1, y2, pooled_h, height, hbins[k], rois.dtype)
        cols = _bin_edges(x1, x2, pooled_w, width, wbins[k], rois.dtype)
        cost[k] = rows * cols + pooled_h * pooled_w
    return batch, hbins, wbins, cost


@numba.njit(cache=True, nogil=True)
def _bin_edges(start, end, pooled, limit, out, dtype):
    """Fill ``out (pooled, 2)`` with clipped bin edges; return the cells they span."""
    extent = max(end - start + 1, 1)
    # bin size in the input's floating type, as the reference implementations do
    size = dtype.type(extent) / dtype.type(pooled)
    total = 0
    for p in range(pooled):
        lo = int(math.floor(dtype.type(p) * size)) + start
        hi = int(math.ceil(dtype.type(p + 1) * size)) + start
        lo = min(max(lo, 0), limit)
        hi = min(max(hi, 0), limit)
        out[p, 0] = lo
        out[p, 1] = hi
        total += max(hi - lo, 0)
    return total

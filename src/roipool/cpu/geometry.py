"""The single definition of RoI max-pooling geometry used by the kernels.

Box corners are scaled in the input's floating type and rounded half away from
zero (C's ``round``); the RoI spans ``max(end - start + 1, 1)`` cells; bin ``p``
of ``P`` covers ``[floor(p * size / P), ceil((p + 1) * size / P))`` offset by
the RoI's first cell and clipped to the map. ``docs/semantics.md`` gives the
worked example. ``roipool.reference`` restates these rules independently, on
purpose, so that the tests compare two readings of the definition.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._simd import ZERO

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


@numba.njit(cache=True, nogil=True, inline="always")
def rounded_box(rois, k, spatial_scale):
    """Corners ``(x1, y1, x2, y2)`` of RoI ``k`` on the feature map: scaled, then rounded by :func:`round_half_away`.

    The box rule of ``roi_pool`` and ``ps_roi_pool`` (they differ only in
    whether the end cell is inside, which the callers decide).
    """
    x1 = round_half_away(rois[k, 1] * spatial_scale)
    y1 = round_half_away(rois[k, 2] * spatial_scale)
    x2 = round_half_away(rois[k, 3] * spatial_scale)
    y2 = round_half_away(rois[k, 4] * spatial_scale)
    return x1, y1, x2, y2


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
        x1, y1, x2, y2 = rounded_box(rois, k, spatial_scale)
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


# ---- roi_align: sampling grid and bilinear taps -------------------------------

# torchvision keeps the samples per bin side in a C int; adaptive grids are
# capped there so that huge boxes cannot overflow the count.
GRID_LIMIT = 2**31 - 1

# Below this many samples per bin side every sample is visited; above it a
# binary search skips the samples that lie more than a cell outside the map.
_WINDOW_MIN_GRID = 32


@numba.njit(cache=True, nogil=True, fastmath=False)
def roi_align_extent(rois, k, spatial_scale, offset):
    """``(x0, y0, roi_w, roi_h)`` of RoI ``k``: its scaled start and extent, before the legacy
    one-cell rule, for the taps and the box gradient alike.

    It and the other helpers here that the box gradient's kernel (compiled with
    ``fastmath``) calls too say ``fastmath=False`` outright: Numba compiles a callee that
    leaves it unset with its first caller's ``fastmath`` and keeps that one compiled copy
    for every later caller, so that kernel would otherwise fuse these operations into
    multiply-adds, for itself and, compiled first, for the forward's taps too: a sample a
    rounding below a whole cell would land on it and take the slope of the other piece
    (found by differential fuzzing against the reference; ``tests/test_fastmath.py``)."""
    x0 = rois[k, 1] * spatial_scale - offset
    y0 = rois[k, 2] * spatial_scale - offset
    roi_w = (rois[k, 3] * spatial_scale - offset) - x0
    roi_h = (rois[k, 4] * spatial_scale - offset) - y0
    return x0, y0, roi_w, roi_h


@numba.njit(cache=True, nogil=True)
def roi_align_taps(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, height, width):
    """Separable bilinear taps of every RoIAlign bin.

    ``rois (K, 5)`` in the compute dtype ``T``, ``spatial_scale`` a ``T`` scalar.
    A bin's average of bilinear samples is a weighted sum of input cells whose
    weight is the product of a row weight and a column weight (the bilinear
    weight is ``hy * hx`` and the sample grid is a product of row and column
    positions), so each bin is described by two short lists:

    - ``hptr (K, pooled_h + 1)`` int64: the taps of row bin ``ph`` of RoI
      ``k`` are ``hidx[hptr[k, ph]:hptr[k, ph + 1]]`` (int32 rows, ascending)
      with weights ``hwt`` (``T``, already divided by the samples per side);
    - ``wptr (K, pooled_w + 1)``, ``widx``, ``wwt`` likewise for columns.

    Also returns ``batch (K,)`` int32, ``cost (K,)`` int64, the number of
    (row, column) taps the RoI reads, for load balancing, and ``overflow``: -1,
    or the first RoI whose scaled corners or extent are not finite in ``T``
    (then nothing else is computed: the caller refuses the boxes, as
    ``_checks.scaled_boxes_finite`` would, without a compiled call of its own). The sample
    rules are those of ``docs/semantics.md`` (roi_align); ``roipool.reference`` restates
    them per sample. Coordinates must be finite in ``T`` (the frontend checks).
    """
    k_total = rois.shape[0]
    t = rois.dtype.type
    offset = t(0.5) if aligned else t(0.0)
    batch = np.empty(k_total, np.int32)
    cost = np.empty(k_total, np.int64)
    hptr = np.empty((k_total, pooled_h + 1), np.int64)
    wptr = np.empty((k_total, pooled_w + 1), np.int64)
    starts = np.empty((k_total, 2), rois.dtype)
    bins = np.empty((k_total, 2), rois.dtype)
    grids = np.empty((k_total, 2), np.int64)
    # pass 1: geometry and an upper bound on the taps of each RoI
    hcap = 0
    wcap = 0
    for k in range(k_total):
        batch[k] = int(rois[k, 0])
        x0, y0, roi_w, roi_h = roi_align_extent(rois, k, spatial_scale, offset)
        if not (np.isfinite(roi_w) and np.isfinite(roi_h)):  # an extent is finite only if both its corners are
            empty_taps = np.empty(0, np.int32)
            empty_weights = np.empty(0, rois.dtype)
            return batch, hptr, empty_taps, empty_weights, wptr, empty_taps, empty_weights, cost, k
        if not aligned:
            # legacy rule: an extent below one cell (or negative) counts as one cell
            roi_w = max(roi_w, t(1.0))
            roi_h = max(roi_h, t(1.0))
        starts[k, 0] = y0
        starts[k, 1] = x0
        bins[k, 0] = roi_h / t(pooled_h)
        bins[k, 1] = roi_w / t(pooled_w)
        grids[k, 0] = _grid(sampling_ratio, bins[k, 0])
        grids[k, 1] = _grid(sampling_ratio, bins[k, 1])
        hcap += pooled_h * min(2 * grids[k, 0], height)
        wcap += pooled_w * min(2 * grids[k, 1], width)
    hidx = np.empty(hcap, np.int32)
    hwt = np.empty(hcap, rois.dtype)
    widx = np.empty(wcap, np.int32)
    wwt = np.empty(wcap, rois.dtype)
    scratch = np.zeros(max(height, width), rois.dtype)
    # pass 2: the taps themselves
    hpos = wpos = ZERO  # a plain int64, not the literal 0: one compiled _axis_taps
    for k in range(k_total):
        hpos = _axis_taps(starts[k, 0], bins[k, 0], grids[k, 0], height, hptr[k], hidx, hwt, hpos, scratch, rois.dtype)
        wpos = _axis_taps(starts[k, 1], bins[k, 1], grids[k, 1], width, wptr[k], widx, wwt, wpos, scratch, rois.dtype)
        cost[k] = (hptr[k, pooled_h] - hptr[k, 0]) * (wptr[k, pooled_w] - wptr[k, 0]) + pooled_h * pooled_w
    return batch, hptr, hidx, hwt, wptr, widx, wwt, cost, -1


@numba.njit(cache=True, nogil=True, fastmath=False)
def _grid(sampling_ratio, bin_size):
    """Samples per bin side: ``sampling_ratio`` if positive, else ``ceil(bin_size)``
    (no samples for a zero or negative extent), capped at ``GRID_LIMIT``."""
    if sampling_ratio > 0:
        return sampling_ratio
    g = np.ceil(bin_size)
    if g <= 0:
        return 0
    return int(min(g, GRID_LIMIT))


@numba.njit(cache=True, nogil=True, fastmath=False)
def _sample_position(base, bin_size, grid, i, dtype):
    t = dtype.type
    return base + (t(i) + t(0.5)) * bin_size / t(grid)


@numba.njit(cache=True, nogil=True, fastmath=False)
def _window(base, bin_size, grid, size, dtype):
    """Sample indices ``[i0, i1)`` that hold every sample lying in ``[-1, size]``.

    Positions move monotonically with the sample index (every rounding step is
    monotone): up for a positive bin size, down for a negative one (an
    inverted box with ``aligned=True``), so the window is found by bisection.
    """
    if grid <= _WINDOW_MIN_GRID or bin_size == 0:
        return 0, grid
    rising = bin_size > 0
    # first index past the samples before the map (rising) or after it (falling)
    lo, hi = 0, grid
    while lo < hi:
        mid = (lo + hi) // 2
        y = _sample_position(base, bin_size, grid, mid, dtype)
        if (y >= -1) if rising else (y <= size):
            hi = mid
        else:
            lo = mid + 1
    first = lo
    hi = grid
    while lo < hi:
        mid = (lo + hi) // 2
        y = _sample_position(base, bin_size, grid, mid, dtype)
        if (y > size) if rising else (y < -1):
            hi = mid
        else:
            lo = mid + 1
    return first, lo


@numba.njit(cache=True, nogil=True, inline="always", fastmath=False)
def bilinear_corners(y, size, dtype):
    """Bilinear corners of a sample at ``y`` on an axis of ``size`` cells: ``(low, high, frac)``.

    ``y`` must already lie in ``[-1, size]`` (a sample further out reads 0 and
    the callers skip it). ``y`` is clamped at 0; at the far edge both corners
    are ``size - 1``. ``frac = y - low`` in ``dtype``: the weight of ``high``,
    ``1 - frac`` that of ``low``. The one definition for the align and the
    position-sensitive align taps.
    """
    t = dtype.type
    if y <= 0:
        y = t(0.0)
    low = int(y)
    if low >= size - 1:
        low = size - 1
        high = low
        y = t(low)
    else:
        high = low + 1
    return low, high, y - t(low)


@numba.njit(cache=True, nogil=True)
def _axis_taps(start, bin_size, grid, size, ptr, idx, wt, pos, scratch, dtype):
    """Taps of each bin along one axis, appended at ``pos``; returns the new ``pos``.

    ``scratch`` is a zeroed ``T`` array of at least ``size``; it is zero again on return.
    """
    t = dtype.type
    pooled = ptr.shape[0] - 1
    inv_grid = t(1.0) / t(max(grid, 1))
    if size == 0:
        grid = 0  # an empty map has nothing to sample
    for p in range(pooled):
        ptr[p] = pos
        base = start + t(p) * bin_size
        i0, i1 = _window(base, bin_size, grid, size, dtype)
        repeat = t(1.0)
        if bin_size == 0 and i1 > i0:
            # every sample of the bin sits at the same point: visit it once
            repeat = t(i1 - i0)
            i1 = i0 + 1
        lo = size
        hi = -1
        for i in range(i0, i1):
            y = _sample_position(base, bin_size, grid, i, dtype)
            if not (y >= -1 and y <= size):
                continue  # more than a cell outside the map: the sample reads 0
            low, high, frac = bilinear_corners(y, size, dtype)
            scratch[low] += (t(1.0) - frac) * repeat
            scratch[high] += frac * repeat
            lo = min(lo, low)
            hi = max(hi, high)
        for r in range(lo, hi + 1):
            w = scratch[r]
            if w != 0:
                idx[pos] = r
                wt[pos] = w * inv_grid
                pos += 1
                scratch[r] = 0
    ptr[pooled] = pos
    return pos

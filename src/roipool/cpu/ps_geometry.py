"""Position-sensitive RoI geometry: the single definition used by the PS kernels.

Both ``ps_roi_pool`` and ``ps_roi_align`` average a *separable* weighting of
the feature map over each bin: the value of bin ``(ph, pw)`` is
``sum_r sum_c wy[r] * wx[c] * x[r, c]``, where ``wy`` depends only on the RoI
and ``ph`` and ``wx`` only on the RoI and ``pw``. This module computes those
per-axis weights ("taps") once per RoI and bin; the kernels in
``cpu/ps_roi.py`` only multiply and add.

Taps of one axis are returned as three arrays: ``first (K, P)`` the first
cell of each bin's window, ``count (K, P)`` the number of cells in it (0 for
an empty bin) and ``weight (K, P, span)`` the weights of those cells
(entries past ``count`` are unused).

ps_roi_pool (torchvision's rules): corners are scaled in the input's type and
rounded half away from zero; the RoI spans ``max(end - start, 1)`` cells (no
``+ 1``, unlike roi_pool); with ``size = extent / P`` bin ``p`` covers
``[floor(p * size), ceil((p + 1) * size))`` offset by the start and
clipped to ``[0, limit - 1]`` -- so the last row and column of the map are
never read, exactly as torchvision's forward does. Weights are 1; the
kernel divides the sum by the bin's area.

ps_roi_align: corners are ``c * spatial_scale - 0.5`` (no rounding, no
minimum size); a bin of size ``extent / P`` takes ``g`` samples per axis
(``sampling_ratio`` if positive, else ``max(ceil(extent / P), 1)``) at
``bin_start + (i + 0.5) * bin_size / g``; each sample is interpolated
bilinearly (torchvision's clamping rules) and the weights are divided by
``g`` so that the bin value is the sample mean. ``roipool.reference`` restates all
of this sample by sample, independently, for the tests.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._simd import FALSE, TRUE
from .geometry import bilinear_corners, rounded_box


def align_coord_limit(dtype) -> float:
    """Scaled ps_roi_align corners are clamped to +-(largest finite / 8) of the
    compute dtype, so that extents, bin sizes and bin starts stay finite and
    no NaN can arise. Only boxes far outside any map are affected."""
    return float(np.finfo(dtype).max) / 8


@numba.njit(cache=True, nogil=True)
def ps_roi_pool_taps(rois, spatial_scale, pooled_h, pooled_w, height, width):
    """Taps of every RoI for ``ps_roi_pool``.

    ``rois (K, 5)`` and ``spatial_scale`` in the compute dtype. Returns
    ``batch (K,)``, row taps ``(first, count, weight)`` of shapes ``(K, PH)``,
    ``(K, PH)``, ``(K, PH, span_h)``, column taps likewise, and ``cost (K,)``
    (cells read, for load balancing).
    """
    k_total = rois.shape[0]
    batch = np.empty(k_total, np.int64)
    y_first = np.empty((k_total, pooled_h), np.int64)
    y_count = np.empty((k_total, pooled_h), np.int64)
    x_first = np.empty((k_total, pooled_w), np.int64)
    x_count = np.empty((k_total, pooled_w), np.int64)
    for k in range(k_total):
        batch[k] = int(rois[k, 0])
        x1, y1, x2, y2 = rounded_box(rois, k, spatial_scale)
        _pool_axis(y1, y2, pooled_h, height, y_first[k], y_count[k], rois.dtype)
        _pool_axis(x1, x2, pooled_w, width, x_first[k], x_count[k], rois.dtype)
    y_weight = np.ones((k_total, pooled_h, max(1, _max_or_zero(y_count))), rois.dtype)
    x_weight = np.ones((k_total, pooled_w, max(1, _max_or_zero(x_count))), rois.dtype)
    cost = _cost(y_count, x_count)
    return batch, y_first, y_count, y_weight, x_first, x_count, x_weight, cost


@numba.njit(cache=True, nogil=True, inline="always")
def _pool_axis(start, end, pooled, limit, first, count, dtype):
    extent = max(end - start, 1)
    size = dtype.type(extent) / dtype.type(pooled)
    last = limit - 1  # torchvision's forward clips to the last index, not past it
    for p in range(pooled):
        lo = int(math.floor(dtype.type(p) * size)) + start
        hi = int(math.ceil(dtype.type(p + 1) * size)) + start
        lo = min(max(lo, 0), last)
        hi = min(max(hi, 0), last)
        first[p] = lo
        count[p] = max(hi - lo, 0)


@numba.njit(cache=True, nogil=True)
def ps_roi_align_taps(rois, spatial_scale, pooled_h, pooled_w, height, width, sampling_ratio, coord_limit):
    """Taps of every RoI for ``ps_roi_align``; returns as :func:`ps_roi_pool_taps`.

    ``coord_limit`` is :func:`align_coord_limit` of the compute dtype.
    Weights already include the ``1 / g`` of each axis, so a bin's value is
    the plain weighted sum (no further division).
    """
    k_total = rois.shape[0]
    dtype = rois.dtype
    batch = np.empty(k_total, np.int64)
    # per RoI and axis (y, x): corner start, bin size (both in the compute
    # dtype, stored exactly in float64) and samples per bin
    geo = np.empty((k_total, 2, 3), np.float64)
    y_first = np.empty((k_total, pooled_h), np.int64)
    y_count = np.empty((k_total, pooled_h), np.int64)
    x_first = np.empty((k_total, pooled_w), np.int64)
    x_count = np.empty((k_total, pooled_w), np.int64)
    # Two passes, one for the cells each bin touches and one, once the widest is known, for the
    # weights; both axes and both passes share one inlined _align_bin (four inlined sites took
    # 1.5 s more of first-call compile, and a call per RoI and axis made the taps 7% slower).
    y_weight = x_weight = np.empty((0, 0, 0), np.float64)
    for fill in range(2):
        if fill:  # weights are summed in float64, then rounded once to the compute dtype
            y_weight = np.zeros((k_total, pooled_h, max(1, _max_or_zero(y_count))), np.float64)
            x_weight = np.zeros((k_total, pooled_w, max(1, _max_or_zero(x_count))), np.float64)
        for k in range(k_total):
            if not fill:
                batch[k] = int(rois[k, 0])
                _align_axis(
                    rois[k, 2], rois[k, 4], spatial_scale, pooled_h, sampling_ratio, coord_limit, dtype, geo[k, 0]
                )
                _align_axis(
                    rois[k, 1], rois[k, 3], spatial_scale, pooled_w, sampling_ratio, coord_limit, dtype, geo[k, 1]
                )
            for axis in range(2):
                first, count, weight, limit = (
                    (y_first, y_count, y_weight, height) if axis == 0 else (x_first, x_count, x_weight, width)
                )
                start, bin_size, g = _axis(geo[k, axis], dtype)
                for p in range(first.shape[1]):
                    lo, n = _align_bin(start, bin_size, g, p, limit, dtype, first[k, p] if fill else 0, weight, k)
                    if not fill:
                        first[k, p] = lo
                        count[k, p] = n
    cost = _cost(y_count, x_count)
    return (batch, y_first, y_count, y_weight.astype(dtype), x_first, x_count, x_weight.astype(dtype), cost)


@numba.njit(cache=True, nogil=True, inline="always")
def _axis(geo, dtype):
    """``(start, bin_size, g)`` of an axis stored by :func:`_align_axis`: the first two in ``dtype``."""
    return dtype.type(geo[0]), dtype.type(geo[1]), geo[2]


@numba.njit(cache=True, nogil=True, inline="always")
def _align_axis(c1, c2, spatial_scale, pooled, sampling_ratio, coord_limit, dtype, out):
    """``out[:] = (start, bin_size, g)`` of one axis; arithmetic in ``dtype``."""
    T = dtype.type
    limit = T(coord_limit)
    start = min(max(c1 * spatial_scale, -limit), limit) - T(0.5)
    end = min(max(c2 * spatial_scale, -limit), limit) - T(0.5)
    extent = end - start
    bin_size = extent / T(pooled)
    if sampling_ratio > 0:
        g = float(sampling_ratio)
    else:
        # At least one sample. torchvision's ceil(extent / P) is 0 for extent
        # in (-P, 0] and its average is then 0 / 0 = NaN.
        g = max(float(np.ceil(extent / T(pooled))), 1.0)
    out[0] = start
    out[1] = bin_size
    out[2] = g


@numba.njit(cache=True, nogil=True, inline="always", fastmath=False)
def _align_bin(start, bin_size, g, p, limit, dtype, first, weight, k):
    """Cells ``(first, count)`` that the samples of bin ``p`` touch, on an axis of ``(start,
    bin_size, g)`` (:func:`_align_axis`; ``start`` and ``bin_size`` in ``dtype``).

    With a non-empty ``weight`` (float64 ``(K, P, span)``, read at ``[k, p]`` from ``first``)
    also add each sample's bilinear weights divided by ``g``. Samples are placed and clamped in
    ``dtype`` exactly as the reference does; only those that land in ``[-1, limit]`` are visited
    (:func:`sample_window`), and past ``RUN_MIN_GRID`` samples a side a run of them at one
    position once (:func:`_align_runs`), so a huge box costs no more than the map it covers.
    Inlined: out of line, a call per bin made the ``rfcn`` taps a fifth slower (1.65 against
    1.35 ms on one thread) for 1.3 s less of first-call compile.
    """
    T = dtype.type
    bin_start = T(p) * bin_size + start
    i, end, runs = sample_window(bin_start, bin_size, g, limit, dtype)
    fill = weight.shape[0] > 0
    # an empty bin's one sample is worth all g of them
    inv_g = 1.0 if bin_size == 0 else 1.0 / g
    lo, hi = limit, -1  # the lowest and highest cell touched
    if not runs:
        for j in range(int(end - i)):
            y = sample_position(bin_start, bin_size, g, i + j, dtype)
            lo, hi = _add_sample(y, limit, dtype, first, weight, k, p, fill, inv_g, lo, hi)
    else:
        lo, hi = _align_runs(bin_start, bin_size, g, i, end, limit, dtype, first, weight, k, p, fill, inv_g)
    if hi < lo:
        return 0, 0
    return lo, hi - lo + 1


@numba.njit(cache=True, nogil=True, fastmath=False)
def _align_runs(bin_start, bin_size, g, i, end, limit, dtype, first, weight, k, p, fill, inv_g):
    """:func:`_align_bin`'s samples ``[i, end)`` by runs at one position, each counting for all its
    samples: the cells ``(lo, hi)`` touched."""
    lo, hi = limit, -1
    while i < end:
        y = sample_position(bin_start, bin_size, g, i, dtype)
        after = next_sample(bin_start, bin_size, g, i, y, end, True, dtype)
        lo, hi = _add_sample(y, limit, dtype, first, weight, k, p, fill, inv_g * samples_between(i, after, g), lo, hi)
        i = after
    return lo, hi


@numba.njit(cache=True, nogil=True, inline="always", fastmath=False)
def _add_sample(y, limit, dtype, first, weight, k, p, fill, share, lo, hi):
    """One sample (or run) of :func:`_align_bin` at ``y``, worth ``share`` of the bin: the cells
    ``(lo, hi)`` touched so far, widened to its own."""
    if not (y >= -1 and y <= limit):
        return lo, hi
    low, high, frac = bilinear_corners(y, limit, dtype)
    if fill:
        weight[k, p, low - first] += float(dtype.type(1) - frac) * share
        weight[k, p, high - first] += float(frac) * share
    return min(lo, low), max(hi, high)


# Up to this many samples per bin side every sample is visited; past it only those that land on
# the map (sample_window), and past RUN_MIN_GRID a run of samples at one position once
# (roipool.triton._common has the same two thresholds).
WINDOW_MIN_GRID = 32
RUN_MIN_GRID = 1024


@numba.njit(cache=True, nogil=True, inline="always", fastmath=False)
def sample_position(bin_start, bin_size, g, i, dtype):
    """Sample ``i`` (a whole float64) of a bin of ``g`` samples from ``bin_start`` (both in ``dtype``):
    ``bin_start + (i + 0.5) * bin_size / g``, with ``i + 0.5`` rounded once, from float64."""
    T = dtype.type
    return bin_start + (T(i + 0.5) * bin_size) / T(g)


@numba.njit(cache=True, nogil=True, inline="always", fastmath=False)
def _following(i):
    """The next whole float64 after ``i``: ``i + 1``, or past ``2**53`` the next float64."""
    after = i + 1.0
    return after if after > i else np.nextafter(i, np.inf)


@numba.njit(cache=True, nogil=True, inline="always", fastmath=False)
def _rounded_up(v):
    """How far below the whole float64 ``v`` the first int it stands for lies: 0 below ``2**53``.
    Past it each whole float64 stands for the ints that round to it, from half its spacing below
    it (that tie only where it rounds to ``v``: ties go to the even one)."""
    if v <= 2.0**53:
        return 0.0
    spacing = v - np.nextafter(v, -np.inf)
    odd = (v / (np.nextafter(v, np.inf) - v)) % 2.0 == 1.0  # then the tie goes to the even one below
    return spacing * 0.5 - (1.0 if odd else 0.0)


@numba.njit(cache=True, nogil=True, fastmath=False)
def first_sample(v, g):
    """The first of the sample indices (the ints ``0 <= i < g``) that the whole float64 ``v`` stands
    for. Sample ``i`` sits where ``float64(i)`` does (``i + 0.5`` is rounded from float64, as the
    reference computes it from a Python int), so past ``2**53`` each whole float64 index stands for
    the ints that round to it. ``v`` itself below ``2**53``; past it to float64 rounding."""
    return min(v - _rounded_up(v), g)


@numba.njit(cache=True, nogil=True, fastmath=False)
def samples_between(i, after, g):
    """How many sample indices (ints ``0 <= i < g``) the whole float64s in ``[i, after)`` stand for
    (:func:`first_sample`): ``after - i`` below ``2**53``, past it exact but for the float64
    rounding of the count (``after`` and ``i`` are close: their difference is exact)."""
    if after <= 2.0**53:
        return min(after, g) - min(i, g)
    # after stands for ints from g on (none of them samples): after - _rounded_up(after) >= g,
    # compared without rounding that difference back to after
    if after - g >= _rounded_up(after):
        return (g - i) + _rounded_up(i)
    return (after - i) - (_rounded_up(after) - _rounded_up(i))


@numba.njit(cache=True, nogil=True, fastmath=False)
def _first_beyond(bin_start, bin_size, g, lo, hi, bound, strict, dtype):
    """The first sample index in ``[lo, hi)`` (whole float64s) whose position lies beyond
    ``bound``, else ``hi``: ``s * y > bound`` (``strict``) or ``s * y >= bound``, ``s`` the sign
    of ``bin_size``. Every rounding step of :func:`sample_position` is monotone, so positions
    rise with the index for a positive bin size and fall for a negative one: bisection finds
    it, in one halving per bit of the range (64 for ``2**64`` samples, about a thousand for the
    largest float64 grids)."""
    s = 1.0 if bin_size > 0 else -1.0
    while lo < hi:
        mid = np.floor(lo + (hi - lo) * 0.5)
        if mid >= hi:  # hi is lo's next float64
            mid = lo
        y = s * sample_position(bin_start, bin_size, g, mid, dtype)
        if (y > bound) if strict else (y >= bound):
            hi = mid
        else:
            lo = _following(mid)
    return lo


@numba.njit(cache=True, nogil=True, inline="always", fastmath=False)
def sample_window(bin_start, bin_size, g, limit, dtype):
    """``(first, end, runs)``: the samples of a bin to visit, ``[first, end)`` (whole float64s,
    each past ``2**53`` standing for the ints that round to it: :func:`first_sample`), and whether
    to visit them by runs (:func:`next_sample`).

    Up to ``WINDOW_MIN_GRID`` samples a side, the whole grid; past it exactly the samples that
    lie in ``[-1, limit]`` (the others add nothing), found by bisection. For an empty bin
    (``bin_size == 0``: every sample at ``bin_start``) the first sample only, which the
    callers weigh as all ``g``. ``runs`` is true past ``RUN_MIN_GRID`` samples a side where
    samples can round to one position.
    """
    if bin_size == 0:
        return 0.0, 1.0, False
    if g <= WINDOW_MIN_GRID:
        return 0.0, g, False
    first, end = _window(bin_start, bin_size, g, limit, dtype)
    # A computed position is within 2.5 eps (|bin_start| + |bin_size|) of the exact one (five
    # roundings of at most half an eps each), so two samples a step apart can round together
    # only if the step is below twice that; runs are looked for below 8 eps (...), a margin.
    # That is float32 boxes of about 2**24 cells and more, or float32 grids of about 2**20 a
    # side; elsewhere each sample is its own run, visited without looking for one.
    T = dtype.type
    eps = float(np.nextafter(T(1), T(2)) - T(1))
    runs = g > RUN_MIN_GRID and abs(bin_size) <= g * 8.0 * eps * (abs(bin_start) + abs(bin_size))
    return first, end, runs


@numba.njit(cache=True, nogil=True, fastmath=False)
def _window(bin_start, bin_size, g, limit, dtype):
    """:func:`sample_window`'s ``[first, end)`` past ``WINDOW_MIN_GRID`` samples a side."""
    # the float64 indices of ints 0 to g - 1 (past 2**53 the last may round up to g or beyond)
    last = g if g <= 2.0**53 else np.nextafter(g - 1.0, np.inf)
    rising = bin_size > 0
    first = _first_beyond(bin_start, bin_size, g, 0.0, last, -1.0 if rising else -float(limit), FALSE, dtype)
    end = _first_beyond(bin_start, bin_size, g, first, last, float(limit) if rising else 1.0, TRUE, dtype)
    return first, end


@numba.njit(cache=True, nogil=True, inline="always", fastmath=False)
def next_sample(bin_start, bin_size, g, i, y, end, runs, dtype):
    """The sample after ``i`` in ``[i, end)``: ``i + 1``, or with ``runs`` the first whose position
    differs from ``y``, sample ``i``'s (:func:`sample_position`; else ``end``). The
    ``samples_between(i, next_sample(...), g)`` samples from ``i`` lie at ``y``: 1 but where a
    huge box rounds positions together (float32 past about ``2**24`` cells)."""
    after = _following(i)
    if not runs or after >= end:
        return min(after, end)
    return _run_end(bin_start, bin_size, g, y, after, end, dtype)


@numba.njit(cache=True, nogil=True, fastmath=False)
def _run_end(bin_start, bin_size, g, y, after, end, dtype):
    """:func:`next_sample` with runs, from ``after``, the sample after the one at ``y``, below ``end``."""
    s = 1.0 if bin_size > 0 else -1.0
    here = s * y
    # most samples lie apart from the next one: bisect only where one does not
    if s * sample_position(bin_start, bin_size, g, after, dtype) <= here:
        return _first_beyond(bin_start, bin_size, g, after, end, here, TRUE, dtype)
    return after


@numba.njit(cache=True, nogil=True)
def _max_or_zero(a):
    """The largest element of the 2-D ``a``, 0 if it has none (a loop: ``a.max()`` compiles in 0.5 s)."""
    top = 0
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            top = max(top, a[i, j])
    return top


@numba.njit(cache=True, nogil=True)
def _cost(y_count, x_count):
    k_total, pooled_h = y_count.shape
    pooled_w = x_count.shape[1]
    cost = np.empty(k_total, np.int64)
    for k in range(k_total):
        rows = 0
        cols = 0
        for p in range(pooled_h):
            rows += y_count[k, p]
        for p in range(pooled_w):
            cols += x_count[k, p]
        cost[k] = rows * cols + pooled_h * pooled_w
    return cost

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
def ps_roi_align_taps(rois, spatial_scale, pooled_h, pooled_w, height, width, sampling_ratio, coord_limit, eps):
    """Taps of every RoI for ``ps_roi_align``; returns as :func:`ps_roi_pool_taps`.

    ``coord_limit`` is :func:`align_coord_limit` and ``eps`` the machine
    epsilon, both of the compute dtype.
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
    no_weights = np.empty(0, np.float64)
    for k in range(k_total):
        batch[k] = int(rois[k, 0])
        _align_axis(rois[k, 2], rois[k, 4], spatial_scale, pooled_h, sampling_ratio, coord_limit, dtype, geo[k, 0])
        _align_axis(rois[k, 1], rois[k, 3], spatial_scale, pooled_w, sampling_ratio, coord_limit, dtype, geo[k, 1])
        for p in range(pooled_h):
            y_first[k, p], y_count[k, p] = _align_bin(geo[k, 0], p, height, dtype, eps, 0, no_weights)
        for p in range(pooled_w):
            x_first[k, p], x_count[k, p] = _align_bin(geo[k, 1], p, width, dtype, eps, 0, no_weights)
    # weights are summed in float64, then rounded once to the compute dtype
    y_weight = np.zeros((k_total, pooled_h, max(1, _max_or_zero(y_count))), np.float64)
    x_weight = np.zeros((k_total, pooled_w, max(1, _max_or_zero(x_count))), np.float64)
    for k in range(k_total):
        for p in range(pooled_h):
            _align_bin(geo[k, 0], p, height, dtype, eps, y_first[k, p], y_weight[k, p])
        for p in range(pooled_w):
            _align_bin(geo[k, 1], p, width, dtype, eps, x_first[k, p], x_weight[k, p])
    cost = _cost(y_count, x_count)
    return (batch, y_first, y_count, y_weight.astype(dtype), x_first, x_count, x_weight.astype(dtype), cost)


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


@numba.njit(cache=True, nogil=True, inline="always")
def _align_bin(geo, p, limit, dtype, eps, first, weight):
    """Cells ``(first, count)`` that the samples of bin ``p`` touch.

    With a non-empty ``weight`` (float64, indexed from ``first``) also add
    each sample's bilinear weights divided by ``g``. Samples are placed and
    clamped in ``dtype`` exactly as the reference does; only samples that can
    land in ``[-1, limit]`` are visited, so a huge box costs no more than the
    map it covers.
    """
    T = dtype.type
    start = T(geo[0])
    bin_size = T(geo[1])
    g = geo[2]
    g_t = T(g)
    bin_start = T(p) * bin_size + start
    i0, n = _sample_range(float(bin_start), float(bin_size), g, limit, eps)
    fill = weight.shape[0] > 0
    inv_g = 1.0 / g
    if bin_size == 0:
        # all g samples coincide: visit one, worth all of them
        n = 1
        inv_g = 1.0
    lo = limit
    hi = -1
    for j in range(n):
        y = bin_start + (T(i0 + j + 0.5) * bin_size) / g_t
        if not (y >= -1 and y <= limit):
            continue  # off the map: adds 0 but still counts in g
        low, high, frac = bilinear_corners(y, limit, dtype)
        lo = min(lo, low)
        hi = max(hi, high)
        if fill:
            weight[low - first] += float(T(1) - frac) * inv_g
            weight[high - first] += float(frac) * inv_g
    if hi < lo:
        return 0, 0
    return lo, hi - lo + 1


@numba.njit(cache=True, nogil=True, inline="always")
def _sample_range(bin_start, bin_size, g, limit, eps):
    """First sample index and how many to visit so as to cover every in-map sample."""
    if g <= 64 + 4 * limit:
        return 0.0, int(g)
    step = bin_size / g
    if step == 0.0:
        return 0.0, 1  # every sample is at bin_start (see _align_bin)
    # a margin for the rounding of positions computed in the compute dtype
    margin = 2.0 + min(4.0 * eps * (abs(bin_start) + abs(bin_size) + limit + 1.0) / abs(step), 1e6)
    t_lo = (-1.0 - bin_start) / step - 0.5
    t_hi = (limit - bin_start) / step - 0.5
    if step < 0:
        t_lo, t_hi = t_hi, t_lo
    i0 = max(0.0, np.floor(t_lo - margin))
    i1 = min(g - 1.0, np.ceil(t_hi + margin))
    if i1 < i0:
        return 0.0, 0
    n = min(i1 - i0 + 1.0, np.floor((limit + 1.0) / abs(step)) + 2.0 * margin + 4.0)
    return i0, int(n)


@numba.njit(cache=True, nogil=True)
def _max_or_zero(a):
    return a.max() if a.size else 0


@numba.njit(cache=True, nogil=True)
def _cost(y_count, x_count):
    k_total, pooled_h = y_count.shape
    pooled_w = x_count.shape[1]
    cost = np.empty(k_total, np.int64)
    for k in range(k_total):
        cost[k] = y_count[k].sum() * x_count[k].sum() + pooled_h * pooled_w
    return cost

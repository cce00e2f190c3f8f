"""Slow, readable NumPy versions of the ops: the test oracle.

Written as plain loops that follow the textbook description line by line,
independently of the fast kernels (which share ``_geometry``), so that the
tests compare two separate readings of ``docs/semantics.md``. Inputs are
assumed valid; these functions do no checking.
"""

from __future__ import annotations

import math

import numpy as np


def c_round(v):
    """Round half away from zero, as C's ``round`` does (clamped to +-2**30)."""
    # Written out with the exact fractional part: floor(|v| + 0.5) would round
    # 0.49999997 up, since the addition itself rounds.
    a = math.floor(abs(v))
    if abs(v) - a >= 0.5:
        a += 1
    a = min(a, 2**30)
    return a if v >= 0 else -a


def roi_pool(input, rois, pooled_h, pooled_w, spatial_scale):
    """RoI max pooling. Returns ``(output, argmax)``.

    ``input (N, C, H, W)``; ``rois (K, 5)`` rows ``[n, x1, y1, x2, y2]`` of the
    input's dtype; ``output (K, C, pooled_h, pooled_w)`` of the input's dtype;
    ``argmax`` the flat ``h * W + w`` of each maximum, -1 for an empty bin.
    """
    dtype = input.dtype.type
    _, channels, height, width = input.shape
    num_rois = rois.shape[0]
    output = np.zeros((num_rois, channels, pooled_h, pooled_w), input.dtype)
    argmax = np.full((num_rois, channels, pooled_h, pooled_w), -1, np.int32)
    scale = dtype(spatial_scale)
    for k in range(num_rois):
        n = int(rois[k, 0])
        # scale in the input's type, then round half away from zero
        x1 = c_round(dtype(rois[k, 1]) * scale)
        y1 = c_round(dtype(rois[k, 2]) * scale)
        x2 = c_round(dtype(rois[k, 3]) * scale)
        y2 = c_round(dtype(rois[k, 4]) * scale)
        # inclusive end; a box whose end is before its start becomes one cell
        roi_h = max(y2 - y1 + 1, 1)
        roi_w = max(x2 - x1 + 1, 1)
        bin_h = dtype(roi_h) / dtype(pooled_h)
        bin_w = dtype(roi_w) / dtype(pooled_w)
        for ph in range(pooled_h):
            hstart = min(max(math.floor(dtype(ph) * bin_h) + y1, 0), height)
            hend = min(max(math.ceil(dtype(ph + 1) * bin_h) + y1, 0), height)
            for pw in range(pooled_w):
                wstart = min(max(math.floor(dtype(pw) * bin_w) + x1, 0), width)
                wend = min(max(math.ceil(dtype(pw + 1) * bin_w) + x1, 0), width)
                if hend <= hstart or wend <= wstart:
                    continue  # empty bin: output 0, argmax -1
                for c in range(channels):
                    best = None
                    best_index = -1
                    for h in range(hstart, hend):
                        for w in range(wstart, wend):
                            value = input[n, c, h, w]
                            if best is None or _beats(value, best):
                                best = value
                                best_index = h * width + w
                    output[k, c, ph, pw] = best
                    argmax[k, c, ph, pw] = best_index
    return output, argmax


def _beats(value, best) -> bool:
    """Strictly greater wins; the first NaN wins and is kept."""
    if math.isnan(best):
        return False
    return math.isnan(value) or value > best


def roi_pool_backward(grad_output, argmax, rois, input_shape):
    """Gradient of :func:`roi_pool` with respect to its input."""
    grad_input = np.zeros(input_shape, grad_output.dtype)
    num_rois, channels, pooled_h, pooled_w = grad_output.shape
    width = input_shape[3]
    for k in range(num_rois):
        n = int(rois[k, 0])
        for c in range(channels):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    index = argmax[k, c, ph, pw]
                    if index >= 0:
                        grad_input[n, c, index // width, index % width] += grad_output[k, c, ph, pw]
    return grad_input


# ---- position-sensitive pooling (R-FCN): ps_roi_pool, ps_roi_align ----
#
# Output channel c, bin (ph, pw) reads input channel (c * pooled_h + ph) * pooled_w + pw.


def ps_roi_pool(input, rois, pooled_h, pooled_w, spatial_scale):
    """Position-sensitive average pooling. ``output (K, C / (pooled_h * pooled_w), pooled_h, pooled_w)``.

    Corners are rounded half away from zero; the RoI spans ``max(end - start, 1)``
    cells; bin edges are floor/ceil of multiples of the bin size, offset by the
    start and clipped to ``[0, size - 1]`` (the last row and column are never
    read, as in torchvision); a bin is the mean of its cells, 0 if empty.
    """
    _, channels, height, width = input.shape
    num_rois = rois.shape[0]
    channels_out = channels // (pooled_h * pooled_w)
    output = np.zeros((num_rois, channels_out, pooled_h, pooled_w), input.dtype)
    for k in range(num_rois):
        n = int(rois[k, 0])
        for c in range(channels_out):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    hstart, hend, wstart, wend = _ps_pool_bin(input.dtype.type, rois[k], spatial_scale, ph, pw,
                                                              pooled_h, pooled_w, height, width)
                    if hend <= hstart or wend <= wstart:
                        continue
                    channel = (c * pooled_h + ph) * pooled_w + pw
                    total = input.dtype.type(0)
                    for h in range(hstart, hend):
                        for w in range(wstart, wend):
                            total += input[n, channel, h, w]
                    output[k, c, ph, pw] = total / input.dtype.type((hend - hstart) * (wend - wstart))
    return output


def _ps_pool_bin(dtype, roi, spatial_scale, ph, pw, pooled_h, pooled_w, height, width):
    """``(hstart, hend, wstart, wend)`` of one ps_roi_pool bin."""
    scale = dtype(spatial_scale)

    def corner(value):
        v = float(dtype(value) * scale)  # may overflow to +-inf; c_round clamps anyway
        return c_round(min(max(v, -(2.0**31)), 2.0**31))

    x1, y1, x2, y2 = corner(roi[1]), corner(roi[2]), corner(roi[3]), corner(roi[4])
    bin_h = dtype(max(y2 - y1, 1)) / dtype(pooled_h)
    bin_w = dtype(max(x2 - x1, 1)) / dtype(pooled_w)
    hstart = min(max(math.floor(dtype(ph) * bin_h) + y1, 0), height - 1)
    hend = min(max(math.ceil(dtype(ph + 1) * bin_h) + y1, 0), height - 1)
    wstart = min(max(math.floor(dtype(pw) * bin_w) + x1, 0), width - 1)
    wend = min(max(math.ceil(dtype(pw + 1) * bin_w) + x1, 0), width - 1)
    return hstart, hend, wstart, wend


def ps_roi_pool_backward(grad_output, rois, input_shape, spatial_scale):
    """Gradient of :func:`ps_roi_pool`: each output's gradient, divided by its bin's area, to every cell of the bin."""
    grad_input = np.zeros(input_shape, grad_output.dtype)
    num_rois, channels_out, pooled_h, pooled_w = grad_output.shape
    height, width = input_shape[2], input_shape[3]
    for k in range(num_rois):
        n = int(rois[k, 0])
        for c in range(channels_out):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    hstart, hend, wstart, wend = _ps_pool_bin(grad_output.dtype.type, rois[k], spatial_scale, ph, pw,
                                                              pooled_h, pooled_w, height, width)
                    if hend <= hstart or wend <= wstart:
                        continue
                    channel = (c * pooled_h + ph) * pooled_w + pw
                    share = grad_output[k, c, ph, pw] / grad_output.dtype.type((hend - hstart) * (wend - wstart))
                    for h in range(hstart, hend):
                        for w in range(wstart, wend):
                            grad_input[n, channel, h, w] += share
    return grad_input


def ps_roi_align(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio):
    """Position-sensitive RoIAlign: each bin is the mean of bilinear samples on a regular grid.

    Corners are ``c * spatial_scale - 0.5`` (no rounding, no minimum size). A
    bin has ``g_h x g_w`` samples, ``g = sampling_ratio`` if positive, else
    ``max(ceil(extent / pooled), 1)``, at ``bin_start + (i + 0.5) * bin_size / g``.
    A sample outside ``[-1, size]`` reads 0 but still counts.
    """
    _, channels, height, width = input.shape
    num_rois = rois.shape[0]
    channels_out = channels // (pooled_h * pooled_w)
    output = np.zeros((num_rois, channels_out, pooled_h, pooled_w), input.dtype)
    for k in range(num_rois):
        n = int(rois[k, 0])
        for c in range(channels_out):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    channel = (c * pooled_h + ph) * pooled_w + pw
                    total = 0.0
                    samples = _ps_align_samples(input.dtype.type, rois[k], spatial_scale, ph, pw,
                                                pooled_h, pooled_w, sampling_ratio)
                    for y, x in samples:
                        for h, w, weight in bilinear_taps(y, x, height, width):
                            total += float(weight) * float(input[n, channel, h, w])
                    output[k, c, ph, pw] = total / len(samples)
    return output


def _ps_align_samples(dtype, roi, spatial_scale, ph, pw, pooled_h, pooled_w, sampling_ratio):
    """Sample points ``(y, x)`` of one bin, computed in ``dtype``."""
    scale = dtype(spatial_scale)
    limit = dtype(np.finfo(dtype).max / 8)  # keeps every extent finite

    def corner(value):
        return min(max(dtype(value) * scale, -limit), limit) - dtype(0.5)

    x1, y1, x2, y2 = corner(roi[1]), corner(roi[2]), corner(roi[3]), corner(roi[4])
    bin_h = (y2 - y1) / dtype(pooled_h)
    bin_w = (x2 - x1) / dtype(pooled_w)
    if sampling_ratio > 0:
        grid_h = grid_w = sampling_ratio
    else:
        grid_h = max(math.ceil((y2 - y1) / dtype(pooled_h)), 1)
        grid_w = max(math.ceil((x2 - x1) / dtype(pooled_w)), 1)
    hstart = dtype(ph) * bin_h + y1
    wstart = dtype(pw) * bin_w + x1
    return [
        (hstart + dtype(iy + 0.5) * bin_h / dtype(grid_h), wstart + dtype(ix + 0.5) * bin_w / dtype(grid_w))
        for iy in range(grid_h)
        for ix in range(grid_w)
    ]


def ps_roi_align_backward(grad_output, rois, input_shape, spatial_scale, sampling_ratio):
    """Gradient of :func:`ps_roi_align`: each sample passes ``grad * weight / samples`` to its four cells."""
    grad_input = np.zeros(input_shape, np.float64)
    num_rois, channels_out, pooled_h, pooled_w = grad_output.shape
    height, width = input_shape[2], input_shape[3]
    dtype = grad_output.dtype.type
    for k in range(num_rois):
        n = int(rois[k, 0])
        for c in range(channels_out):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    channel = (c * pooled_h + ph) * pooled_w + pw
                    samples = _ps_align_samples(dtype, rois[k], spatial_scale, ph, pw,
                                                pooled_h, pooled_w, sampling_ratio)
                    share = float(grad_output[k, c, ph, pw]) / len(samples)
                    for y, x in samples:
                        for h, w, weight in bilinear_taps(y, x, height, width):
                            grad_input[n, channel, h, w] += share * float(weight)
    return grad_input.astype(grad_output.dtype)


# ---- roi_align -------------------------------------------------------------


def roi_align_geometry(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, dtype):
    """Start corner, bin sizes and samples per bin side of one RoI, in ``dtype`` arithmetic.

    ``roi`` is ``[n, x1, y1, x2, y2]``. Returns ``(y0, x0, bin_h, bin_w, grid_h, grid_w)``.
    """
    t = np.dtype(dtype).type
    scale = t(spatial_scale)
    offset = t(0.5) if aligned else t(0.0)
    x0 = t(roi[1]) * scale - offset
    y0 = t(roi[2]) * scale - offset
    x1 = t(roi[3]) * scale - offset
    y1 = t(roi[4]) * scale - offset
    roi_w = t(x1 - x0)
    roi_h = t(y1 - y0)
    if not aligned:
        # legacy rule: a box smaller than one cell is read as one cell
        roi_w = max(roi_w, t(1))
        roi_h = max(roi_h, t(1))
    bin_h = t(roi_h / t(pooled_h))
    bin_w = t(roi_w / t(pooled_w))
    if sampling_ratio > 0:
        grid_h = grid_w = sampling_ratio
    else:
        # adaptive: about one sample per cell; a zero or negative extent gives none
        grid_h = max(math.ceil(t(roi_h / t(pooled_h))), 0)
        grid_w = max(math.ceil(t(roi_w / t(pooled_w))), 0)
    return y0, x0, bin_h, bin_w, grid_h, grid_w


def bilinear_taps(y, x, height, width):
    """The four ``(row, col, weight)`` taps of a bilinear sample at ``(y, x)``.

    A sample more than one cell outside the map (``y < -1``, ``y > H``,
    ``x < -1`` or ``x > W``) reads nothing (empty list). Otherwise a
    coordinate ``<= 0`` reads as 0 and one at or past the last cell reads the
    last cell, so samples within a cell of the border take the border's value.
    """
    t = type(y)
    if y < -1 or y > height or x < -1 or x > width:
        return []
    if y <= 0:
        y = t(0)
    if x <= 0:
        x = t(0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = t(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = t(x_low)
    else:
        x_high = x_low + 1
    ly = t(y - t(y_low))
    lx = t(x - t(x_low))
    hy = t(t(1) - ly)
    hx = t(t(1) - lx)
    return [
        (y_low, x_low, t(hy * hx)),
        (y_low, x_high, t(hy * lx)),
        (y_high, x_low, t(ly * hx)),
        (y_high, x_high, t(ly * lx)),
    ]


def roi_align_samples(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, height, width, dtype):
    """For every bin ``(ph, pw)``: the list of its bilinear taps, and the sample count.

    Sample ``(iy, ix)`` of bin ``(ph, pw)`` sits at
    ``y = y0 + ph * bin_h + (iy + 0.5) * bin_h / grid_h`` (and likewise ``x``).
    """
    t = np.dtype(dtype).type
    y0, x0, bin_h, bin_w, grid_h, grid_w = roi_align_geometry(
        roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, dtype
    )
    count = max(grid_h * grid_w, 1)
    bins = {}
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            taps = []
            for iy in range(grid_h):
                y = t(t(y0 + t(ph) * bin_h) + t(t(iy + 0.5) * bin_h) / t(grid_h))
                for ix in range(grid_w):
                    x = t(t(x0 + t(pw) * bin_w) + t(t(ix + 0.5) * bin_w) / t(grid_w))
                    taps.extend(bilinear_taps(y, x, height, width))
            bins[ph, pw] = taps
    return bins, count


def roi_align(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    """RoIAlign: the average of bilinear samples on a regular grid in each bin.

    ``input (N, C, H, W)``; ``rois (K, 5)`` rows ``[n, x1, y1, x2, y2]``.
    Returns ``(K, C, pooled_h, pooled_w)`` of the input's dtype, computed in
    that dtype (one sample at a time, as torchvision's CPU kernel does).
    """
    t = input.dtype.type
    _, channels, height, width = input.shape
    output = np.zeros((rois.shape[0], channels, pooled_h, pooled_w), input.dtype)
    for k in range(rois.shape[0]):
        n = int(rois[k, 0])
        bins, count = roi_align_samples(
            rois[k], spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, height, width, input.dtype
        )
        for (ph, pw), taps in bins.items():
            for c in range(channels):
                total = t(0)
                for row, col, weight in taps:
                    total = t(total + t(weight * input[n, c, row, col]))
                output[k, c, ph, pw] = t(total / t(count))
    return output


def roi_align_backward(grad_output, rois, input_shape, spatial_scale, sampling_ratio, aligned):
    """Gradient of :func:`roi_align` with respect to its input: each output's
    gradient, divided by the sample count, goes back to every tap by its weight."""
    t = grad_output.dtype.type
    grad_input = np.zeros(input_shape, grad_output.dtype)
    num_rois, channels, pooled_h, pooled_w = grad_output.shape
    height, width = input_shape[2], input_shape[3]
    for k in range(num_rois):
        n = int(rois[k, 0])
        bins, count = roi_align_samples(
            rois[k], spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, height, width, grad_output.dtype
        )
        for (ph, pw), taps in bins.items():
            for c in range(channels):
                g = grad_output[k, c, ph, pw]
                for row, col, weight in taps:
                    grad_input[n, c, row, col] += t(g * weight / t(count))
    return grad_input

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
                        for h, w, weight in _bilinear_taps(input.dtype.type, y, x, height, width):
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


def _bilinear_taps(dtype, y, x, height, width):
    """``[(h, w, weight), ...]`` of a bilinear sample; empty if it lies outside ``[-1, size]``."""
    if not (-1 <= y <= height and -1 <= x <= width):
        return []
    y = max(y, dtype(0))
    x = max(x, dtype(0))
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = dtype(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = dtype(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - dtype(y_low), x - dtype(x_low)
    hy, hx = dtype(1) - ly, dtype(1) - lx
    return [(y_low, x_low, hy * hx), (y_low, x_high, hy * lx), (y_high, x_low, ly * hx), (y_high, x_high, ly * lx)]


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
                        for h, w, weight in _bilinear_taps(dtype, y, x, height, width):
                            grad_input[n, channel, h, w] += share * float(weight)
    return grad_input.astype(grad_output.dtype)

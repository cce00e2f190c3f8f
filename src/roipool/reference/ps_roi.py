"""Position-sensitive pooling (R-FCN): ps_roi_pool and ps_roi_align, as plain loops."""

from __future__ import annotations

import math

import numpy as np

from ._common import bilinear_taps, c_round
from .roi_align import bilinear_position_grad


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
                    hstart, hend, wstart, wend = _ps_pool_bin(
                        input.dtype.type, rois[k], spatial_scale, ph, pw, pooled_h, pooled_w, height, width
                    )
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
                    hstart, hend, wstart, wend = _ps_pool_bin(
                        grad_output.dtype.type, rois[k], spatial_scale, ph, pw, pooled_h, pooled_w, height, width
                    )
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
                    samples = _ps_align_samples(
                        input.dtype.type, rois[k], spatial_scale, ph, pw, pooled_h, pooled_w, sampling_ratio
                    )
                    for y, x in samples:
                        for h, w, weight in bilinear_taps(y, x, height, width):
                            total += float(weight) * float(input[n, channel, h, w])
                    output[k, c, ph, pw] = total / len(samples)
    return output


def _ps_align_samples(dtype, roi, spatial_scale, ph, pw, pooled_h, pooled_w, sampling_ratio):
    """Sample points ``(y, x)`` of one bin, computed in ``dtype``."""
    y1, x1, bin_h, bin_w, grid_h, grid_w = _ps_align_grid(dtype, roi, spatial_scale, pooled_h, pooled_w, sampling_ratio)
    hstart = dtype(ph) * bin_h + y1
    wstart = dtype(pw) * bin_w + x1
    return [
        (hstart + dtype(iy + 0.5) * bin_h / dtype(grid_h), wstart + dtype(ix + 0.5) * bin_w / dtype(grid_w))
        for iy in range(grid_h)
        for ix in range(grid_w)
    ]


def _ps_align_grid(dtype, roi, spatial_scale, pooled_h, pooled_w, sampling_ratio):
    """``(y1, x1, bin_h, bin_w, grid_h, grid_w)`` of one box: its scaled corners, in ``dtype``."""
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
    return y1, x1, bin_h, bin_w, grid_h, grid_w


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
                    samples = _ps_align_samples(
                        dtype, rois[k], spatial_scale, ph, pw, pooled_h, pooled_w, sampling_ratio
                    )
                    share = float(grad_output[k, c, ph, pw]) / len(samples)
                    for y, x in samples:
                        for h, w, weight in bilinear_taps(y, x, height, width):
                            grad_input[n, channel, h, w] += share * float(weight)
    return grad_input.astype(grad_output.dtype)


def ps_roi_align_boxes_backward(input, grad_output, rois, spatial_scale, sampling_ratio):
    """Gradient of :func:`ps_roi_align` with respect to ``rois (K, 5)``: ``(K, 5)`` float64, column 0 zero.

    ``input (N, C, H, W)``, ``grad_output (K, C / (PH * PW), PH, PW)``. Sample
    ``(iy, ix)`` of bin ``(ph, pw)`` sits at ``y = y1' + a * (y2' - y1')``, with
    the corners ``y1' = y1 * s - 0.5`` and ``a = (ph + (iy + 0.5) / grid_h) / PH``,
    so ``dy/dy1 = s * (1 - a)`` and ``dy/dy2 = s * a`` (``x`` likewise); a
    corner held at the coordinate limit (``|c * s| >= max / 8``) does not move.
    Each sample moves along the slope of its bilinear piece
    (:func:`bilinear_position_grad`) on the bin's own input channel
    ``(c * PH + ph) * PW + pw``. The grid is held fixed (an adaptive one is
    piecewise constant in the box size). Positions in the input's dtype, as
    the forward places them; sums in float64.
    """
    t = input.dtype.type
    _, _, height, width = input.shape
    num_rois, channels_out, pooled_h, pooled_w = grad_output.shape
    grad_rois = np.zeros((num_rois, 5), np.float64)
    limit = t(np.finfo(input.dtype).max / 8)
    scale = t(spatial_scale)
    for k in range(num_rois):
        n = int(rois[k, 0])
        # d corner / d coordinate: the scale, or 0 where the corner is clamped
        moves = [float(scale) if -limit < t(rois[k, j]) * scale < limit else 0.0 for j in range(5)]
        y1, x1, bin_h, bin_w, grid_h, grid_w = _ps_align_grid(
            t, rois[k], spatial_scale, pooled_h, pooled_w, sampling_ratio
        )
        count = grid_h * grid_w
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                hstart = t(ph) * bin_h + y1
                wstart = t(pw) * bin_w + x1
                for iy in range(grid_h):
                    y = hstart + t(iy + 0.5) * bin_h / t(grid_h)
                    a_y = (ph + (iy + 0.5) / grid_h) / pooled_h
                    for ix in range(grid_w):
                        x = wstart + t(ix + 0.5) * bin_w / t(grid_w)
                        a_x = (pw + (ix + 0.5) / grid_w) / pooled_w
                        gy = gx = 0.0
                        for c in range(channels_out):
                            channel = (c * pooled_h + ph) * pooled_w + pw
                            _, dy, dx = bilinear_position_grad(y, x, height, width, input[n, channel])
                            g = float(grad_output[k, c, ph, pw]) / count
                            gy += g * dy
                            gx += g * dx
                        grad_rois[k, 1] += gx * (1 - a_x) * moves[1]
                        grad_rois[k, 3] += gx * a_x * moves[3]
                        grad_rois[k, 2] += gy * (1 - a_y) * moves[2]
                        grad_rois[k, 4] += gy * a_y * moves[4]
    return grad_rois

"""RoIAlign (Mask R-CNN), forward and backward, as plain loops."""

from __future__ import annotations

import math

import numpy as np

from ._common import bilinear_taps


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


def roi_align_samples(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, height, width, dtype):
    """For every bin ``(ph, pw)``: the list of its bilinear taps, and the sample count.

    Sample ``(iy, ix)`` of bin ``(ph, pw)`` sits at
    ``y = y0 + ph * bin_h + (iy + 0.5) * bin_h / grid_h`` (and likewise ``x``), in ``dtype``,
    ``iy`` rounded to it before 0.5 is added (torchvision's float32 rounding; past ``2**24``
    samples a side in float32 it differs from rounding ``iy + 0.5`` once).
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
                y = t(t(y0 + t(ph) * bin_h) + t(t(t(iy) + t(0.5)) * bin_h) / t(grid_h))
                for ix in range(grid_w):
                    x = t(t(x0 + t(pw) * bin_w) + t(t(t(ix) + t(0.5)) * bin_w) / t(grid_w))
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


def bilinear_position_grad(y, x, height, width, plane):
    """``(value, d value / dy, d value / dx)`` of the bilinear sample of ``plane (H, W)`` at ``(y, x)``.

    The derivative of :func:`bilinear_taps`'s interpolant, piece by piece: a
    sample outside ``[-1, H] x [-1, W]`` reads 0 and so has derivative 0; a
    coordinate ``<= 0`` or at or past the last cell is clamped, so the
    derivative along that axis is 0; elsewhere it is the slope of the linear
    piece the sample lies in (``y_low = floor(y)``: at a whole-cell
    coordinate the piece to its right). Computed in float64.
    """
    if y < -1 or y > height or x < -1 or x > width:
        return 0.0, 0.0, 0.0
    fy = fx = 1.0  # whether the coordinate is free (not clamped) along the axis
    if y <= 0:
        y, fy = type(y)(0), 0.0
    if x <= 0:
        x, fx = type(x)(0), 0.0
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y, fy = type(y)(y_low), 0.0
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x, fx = type(x)(x_low), 0.0
    else:
        x_high = x_low + 1
    ly, lx = float(y) - y_low, float(x) - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    v00, v01 = float(plane[y_low, x_low]), float(plane[y_low, x_high])
    v10, v11 = float(plane[y_high, x_low]), float(plane[y_high, x_high])
    value = hy * hx * v00 + hy * lx * v01 + ly * hx * v10 + ly * lx * v11
    dy = fy * (hx * (v10 - v00) + lx * (v11 - v01))
    dx = fx * (hy * (v01 - v00) + ly * (v11 - v10))
    return value, dy, dx


def roi_align_boxes_backward(input, grad_output, rois, spatial_scale, sampling_ratio, aligned):
    """Gradient of :func:`roi_align` with respect to ``rois (K, 5)``: ``(K, 5)`` float64, column 0 zero.

    ``input (N, C, H, W)``, ``grad_output (K, C, PH, PW)``. Sample ``(iy, ix)``
    of bin ``(ph, pw)`` sits at ``y = y1 * s - off + a * roi_h`` with
    ``a = (ph + (iy + 0.5) / grid_h) / PH`` and ``roi_h = (y2 - y1) * s``, so
    ``dy/dy1 = s * (1 - a)`` and ``dy/dy2 = s * a`` (likewise ``x``). With
    ``aligned=False`` an extent below one cell is read as one cell: there
    ``roi_h`` does not depend on the box, and ``dy/dy1 = s``, ``dy/dy2 = 0``.
    The grid size and sample count are held fixed (the adaptive grid is
    piecewise constant in the box size). Sample positions and clamping
    decisions are computed in the input's dtype, as the forward does; the
    derivative is summed in float64.
    """
    t = input.dtype.type
    _, channels, height, width = input.shape
    num_rois, _, pooled_h, pooled_w = grad_output.shape
    grad_rois = np.zeros((num_rois, 5), np.float64)
    for k in range(num_rois):
        n = int(rois[k, 0])
        y0, x0, bin_h, bin_w, grid_h, grid_w = roi_align_geometry(
            rois[k], spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, input.dtype
        )
        count = max(grid_h * grid_w, 1)
        scale = float(t(spatial_scale))
        # whether the extent follows the box (False where the legacy one-cell minimum holds)
        free_h = aligned or float(t(t(rois[k, 4]) * t(spatial_scale)) - t(t(rois[k, 2]) * t(spatial_scale))) >= 1
        free_w = aligned or float(t(t(rois[k, 3]) * t(spatial_scale)) - t(t(rois[k, 1]) * t(spatial_scale))) >= 1
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                for iy in range(grid_h):
                    y = t(t(y0 + t(ph) * bin_h) + t(t(t(iy) + t(0.5)) * bin_h) / t(grid_h))
                    a_y = (ph + (iy + 0.5) / grid_h) / pooled_h
                    for ix in range(grid_w):
                        x = t(t(x0 + t(pw) * bin_w) + t(t(t(ix) + t(0.5)) * bin_w) / t(grid_w))
                        a_x = (pw + (ix + 0.5) / grid_w) / pooled_w
                        gy = gx = 0.0
                        for c in range(channels):
                            _, dy, dx = bilinear_position_grad(y, x, height, width, input[n, c])
                            g = float(grad_output[k, c, ph, pw]) / count
                            gy += g * dy
                            gx += g * dx
                        if free_w:
                            grad_rois[k, 1] += gx * scale * (1 - a_x)
                            grad_rois[k, 3] += gx * scale * a_x
                        else:
                            grad_rois[k, 1] += gx * scale
                        if free_h:
                            grad_rois[k, 2] += gy * scale * (1 - a_y)
                            grad_rois[k, 4] += gy * scale * a_y
                        else:
                            grad_rois[k, 2] += gy * scale
    return grad_rois

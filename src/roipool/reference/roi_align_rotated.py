"""Rotated RoIAlign (mmcv/mmrotate ``roi_align_rotated``), forward and backward, as plain loops.

Boxes are ``[batch_index, cx, cy, w, h, angle]`` (angle in radians). The
sampling grid of an axis-aligned RoIAlign is laid out in the box's own frame
(centred on the box), rotated by the angle about the centre, and each sample
is a bilinear read of the map (``bilinear_taps``). See ``docs/semantics.md``.
"""

from __future__ import annotations

import math

import numpy as np

from ._common import bilinear_taps


def roi_align_rotated_geometry(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise, dtype):
    """The frame of one rotated RoI, in ``dtype`` arithmetic.

    Returns ``(cy, cx, roi_h, roi_w, cos, sin, grid_h, grid_w)``: the scaled
    centre (shifted by half a cell when ``aligned``), the scaled size (at least
    one cell when not ``aligned``), the cosine and sine of the angle (negated
    when ``clockwise``) and the samples per bin side.
    """
    t = np.dtype(dtype).type
    scale = t(spatial_scale)
    offset = t(0.5) if aligned else t(0.0)
    cx = t(t(roi[1]) * scale - offset)
    cy = t(t(roi[2]) * scale - offset)
    roi_w = t(t(roi[3]) * scale)
    roi_h = t(t(roi[4]) * scale)
    theta = t(roi[5])
    if clockwise:
        theta = -theta
    if not aligned:
        # legacy rule, as in roi_align: a box smaller than one cell is read as one cell
        roi_w = max(roi_w, t(1))
        roi_h = max(roi_h, t(1))
    if sampling_ratio > 0:
        grid_h = grid_w = sampling_ratio
    else:
        grid_h = max(math.ceil(t(roi_h / t(pooled_h))), 0)
        grid_w = max(math.ceil(t(roi_w / t(pooled_w))), 0)
    return cy, cx, roi_h, roi_w, t(np.cos(theta)), t(np.sin(theta)), grid_h, grid_w


def roi_align_rotated_samples(
    roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise, height, width, dtype
):
    """For every bin ``(ph, pw)``: its samples as a list of ``(y, x, taps)``, and the sample count.

    In the box frame, sample ``(iy, ix)`` of bin ``(ph, pw)`` sits at
    ``v = -roi_h / 2 + ph * bin_h + (iy + 0.5) * bin_h / grid_h`` (and ``u``
    likewise along the width); on the map it is at
    ``y = v * cos - u * sin + cy``, ``x = v * sin + u * cos + cx``.
    """
    t = np.dtype(dtype).type
    cy, cx, roi_h, roi_w, cos, sin, grid_h, grid_w = roi_align_rotated_geometry(
        roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise, dtype
    )
    bin_h = t(roi_h / t(pooled_h))
    bin_w = t(roi_w / t(pooled_w))
    start_h = t(-roi_h / t(2))
    start_w = t(-roi_w / t(2))
    count = max(grid_h * grid_w, 1)
    bins = {}
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            samples = []
            for iy in range(grid_h):
                v = t(t(start_h + t(ph) * bin_h) + t(t(iy + 0.5) * bin_h) / t(grid_h))
                for ix in range(grid_w):
                    u = t(t(start_w + t(pw) * bin_w) + t(t(ix + 0.5) * bin_w) / t(grid_w))
                    y = t(t(t(v * cos) - t(u * sin)) + cy)
                    x = t(t(t(v * sin) + t(u * cos)) + cx)
                    samples.append((y, x, bilinear_taps(y, x, height, width)))
            bins[ph, pw] = samples
    return bins, count


def roi_align_rotated(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, clockwise):
    """Rotated RoIAlign: the average of the bilinear samples of each bin.

    ``input (N, C, H, W)``; ``rois (K, 6)`` rows ``[n, cx, cy, w, h, angle]``.
    Returns ``(K, C, pooled_h, pooled_w)`` of the input's dtype, computed in
    that dtype: each sample's four taps are summed, then the samples.
    """
    t = input.dtype.type
    _, channels, height, width = input.shape
    output = np.zeros((rois.shape[0], channels, pooled_h, pooled_w), input.dtype)
    for k in range(rois.shape[0]):
        n = int(rois[k, 0])
        bins, count = roi_align_rotated_samples(
            rois[k], spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise, height, width, input.dtype
        )
        for (ph, pw), samples in bins.items():
            for c in range(channels):
                total = t(0)
                for _, _, taps in samples:
                    value = t(0)
                    for row, col, weight in taps:
                        value = t(value + t(weight * input[n, c, row, col]))
                    total = t(total + value)
                output[k, c, ph, pw] = t(total / t(count))
    return output


def roi_align_rotated_backward(grad_output, rois, input_shape, spatial_scale, sampling_ratio, aligned, clockwise):
    """Gradient of :func:`roi_align_rotated` with respect to its input: each output's
    gradient, divided by the sample count, goes back to every tap by its weight."""
    t = grad_output.dtype.type
    grad_input = np.zeros(input_shape, grad_output.dtype)
    num_rois, channels, pooled_h, pooled_w = grad_output.shape
    height, width = input_shape[2], input_shape[3]
    for k in range(num_rois):
        n = int(rois[k, 0])
        bins, count = roi_align_rotated_samples(
            rois[k],
            spatial_scale,
            pooled_h,
            pooled_w,
            sampling_ratio,
            aligned,
            clockwise,
            height,
            width,
            grad_output.dtype,
        )
        for (ph, pw), samples in bins.items():
            for c in range(channels):
                g = t(grad_output[k, c, ph, pw] / t(count))
                for _, _, taps in samples:
                    for row, col, weight in taps:
                        grad_input[n, c, row, col] += t(g * weight)
    return grad_input


def roi_align_rotated_box_grad(input, rois, grad_output, spatial_scale, sampling_ratio, aligned, clockwise):
    """Gradient of :func:`roi_align_rotated` with respect to ``rois[:, 1:]`` (cx, cy, w, h, angle), float64.

    Each sample moves with the box: ``dy/dcy = dx/dcx = spatial_scale``,
    ``dy/dh = scale * fv * cos``, ``dx/dh = scale * fv * sin``, ``dy/dw =
    -scale * fu * sin``, ``dx/dw = scale * fu * cos`` (``fv = v / roi_h``,
    ``fu = u / roi_w``, fixed fractions of the box), ``dy/dangle = -(v * sin +
    u * cos)``, ``dx/dangle = v * cos - u * sin`` (negated when ``clockwise``);
    the value changes at the bilinear interpolant's slope, zero where a
    coordinate is clamped to the border or the sample is off the map. The
    grid size is held fixed, and a size clamped to one cell (not ``aligned``)
    has no derivative.
    """
    x = np.asarray(input, np.float64)
    _, channels, height, width = x.shape
    num_rois, _, pooled_h, pooled_w = grad_output.shape
    grad = np.zeros((num_rois, 5))
    for k in range(num_rois):
        n = int(rois[k, 0])
        roi = np.asarray(rois[k], np.float64)
        cy, cx, roi_h, roi_w, cos, sin, grid_h, grid_w = roi_align_rotated_geometry(
            roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise, np.float64
        )
        w_free = aligned or roi[3] * spatial_scale > 1
        h_free = aligned or roi[4] * spatial_scale > 1
        sign = -1.0 if clockwise else 1.0
        count = max(grid_h * grid_w, 1)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                for iy in range(grid_h):
                    fv = -0.5 + (ph + (iy + 0.5) / grid_h) / pooled_h
                    for ix in range(grid_w):
                        fu = -0.5 + (pw + (ix + 0.5) / grid_w) / pooled_w
                        v, u = fv * roi_h, fu * roi_w
                        y = v * cos - u * sin + cy
                        xx = v * sin + u * cos + cx
                        dy, dx = _slopes(x[n], y, xx, height, width)
                        g = grad_output[k, :, ph, pw] / count
                        gy = float(np.dot(g, dy))
                        gx = float(np.dot(g, dx))
                        grad[k, 0] += gx * spatial_scale
                        grad[k, 1] += gy * spatial_scale
                        if w_free:
                            grad[k, 2] += spatial_scale * fu * (-gy * sin + gx * cos)
                        if h_free:
                            grad[k, 3] += spatial_scale * fv * (gy * cos + gx * sin)
                        grad[k, 4] += sign * (gy * -(v * sin + u * cos) + gx * (v * cos - u * sin))
    return grad


def _slopes(image, y, x, height, width):
    """``(d value / dy, d value / dx)`` per channel of the bilinear sample at ``(y, x)``."""
    zero = np.zeros(image.shape[0])
    if y < -1 or y > height or x < -1 or x > width:
        return zero, zero
    y_fixed = y <= 0 or y >= height - 1
    x_fixed = x <= 0 or x >= width - 1
    y = min(max(y, 0.0), height - 1.0)
    x = min(max(x, 0.0), width - 1.0)
    y0, x0 = min(int(y), max(height - 2, 0)), min(int(x), max(width - 2, 0))
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    ly, lx = y - y0, x - x0
    a, b, c, d = image[:, y0, x0], image[:, y0, x1], image[:, y1, x0], image[:, y1, x1]
    dy = zero if y_fixed else (1 - lx) * (c - a) + lx * (d - b)
    dx = zero if x_fixed else (1 - ly) * (b - a) + ly * (d - c)
    return dy, dx

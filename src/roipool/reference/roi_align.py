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

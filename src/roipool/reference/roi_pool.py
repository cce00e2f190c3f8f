"""RoI max pooling (Fast R-CNN), forward with argmax and backward, as plain loops."""

from __future__ import annotations

import math

import numpy as np

from ._common import c_round


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

"""Precise RoI Pooling (IoU-Net), forward and both backwards, as plain loops in float64.

The feature map is read as a continuous function: the bilinear interpolant
of the map extended by zeros, ``F(y, x) = sum over cells (i, j) of
input[i, j] * hat(y - i) * hat(x - j)`` with ``hat(u) = max(0, 1 - |u|)``
(cell centres at integer coordinates; ``F`` falls linearly to 0 between the
border cells and one cell past them). A bin's value is the integral of ``F``
over the bin divided by the bin's area. See ``docs/semantics.md``
(prroi_pool).

Everything here is computed in float64 (whatever the input's dtype) from the
textbook formulas: the integral of ``hat`` over an interval, and the box
gradient from line integrals along the bin's edges. The fast kernels use a
different, per-tap derivative form, so the tests compare two derivations.
"""

from __future__ import annotations

import math

import numpy as np


def hat_integral(a, b, i):
    """``integral from a to b of hat(t - i) dt`` for ``a <= b``, piece by piece.

    On each piece where ``hat`` is linear the integral is the piece's length
    times ``hat`` at its midpoint (exact for a linear function, and free of the
    cancellation of a difference of squares when the piece is short).
    """
    total = 0.0
    for lo, hi in ((i - 1.0, float(i)), (float(i), i + 1.0)):
        s, e = max(a, lo), min(b, hi)
        if e > s:
            total += (e - s) * hat(0.5 * (s + e) - i)
    return total


def hat(u):
    return max(0.0, 1.0 - abs(u))


def prroi_bins(roi, spatial_scale, pooled_h, pooled_w, dtype):
    """Bin edges of one RoI, in ``dtype`` arithmetic as the kernels do, returned as floats.

    ``roi`` is ``[n, x1, y1, x2, y2]``. Returns ``(ys, xs, bin_h, bin_w)``:
    ``ys[ph] = (start, end)`` of row bin ``ph`` (likewise ``xs``). Corners are
    ``x * spatial_scale`` (no half-cell shift, no rounding); the extent is
    ``max(x2' - x1', 0)``; bin ``p`` starts at ``x1' + p * bin_w`` and ends one
    ``bin_w`` later.
    """
    t = np.dtype(dtype).type
    scale = t(spatial_scale)
    x1, y1, x2, y2 = (t(t(roi[i]) * scale) for i in (1, 2, 3, 4))
    bin_h = t(max(t(y2 - y1), t(0)) / t(pooled_h))
    bin_w = t(max(t(x2 - x1), t(0)) / t(pooled_w))
    ys = []
    for ph in range(pooled_h):
        start = t(y1 + t(bin_h * t(ph)))
        ys.append((float(start), float(t(start + bin_h))))
    xs = []
    for pw in range(pooled_w):
        start = t(x1 + t(bin_w * t(pw)))
        xs.append((float(start), float(t(start + bin_w))))
    return ys, xs, float(bin_h), float(bin_w)


def _cells(a, b, size):
    """Cells whose hat function overlaps ``[a, b]``, within the map."""
    lo = max(math.floor(a), 0) if a > -2 else 0
    hi = min(math.ceil(b), size - 1) if b < size + 1 else size - 1
    return range(lo, hi + 1)


def axis_mean(a, b, i):
    """Mean of ``hat(t - i)`` over ``[a, b]``; ``hat(a - i)`` (the limit) when ``b == a``."""
    return hat_integral(a, b, i) / (b - a) if b > a else hat(a - i)


def _bin_mean(image, ys, ye, xs, xe):
    """Mean of ``F`` over ``[ys, ye] x [xs, xe]`` (the bin's actual edges) for one channel ``image (H, W)``."""
    height, width = image.shape
    total = 0.0
    for i in _cells(ys, ye, height):
        wy = axis_mean(ys, ye, i)
        for j in _cells(xs, xe, width):
            total += float(image[i, j]) * wy * axis_mean(xs, xe, j)
    return total


def prroi_pool(input, rois, pooled_h, pooled_w, spatial_scale):
    """Precise RoI pooling. ``input (N, C, H, W)``; ``rois (K, 5)`` rows ``[n, x1, y1, x2, y2]``.

    Returns ``(K, C, pooled_h, pooled_w)`` in the input's dtype (computed in
    float64). A box of zero width or height gives 0. The mean is taken over
    the bin's edges as computed (``end - start``, which may differ from
    ``bin_h`` by a rounding); a bin whose end rounds to its start takes the
    value at its start.
    """
    _, channels, _, _ = input.shape
    out = np.zeros((rois.shape[0], channels, pooled_h, pooled_w), np.float64)
    for k in range(rois.shape[0]):
        n = int(rois[k, 0])
        ys, xs, bin_h, bin_w = prroi_bins(rois[k], spatial_scale, pooled_h, pooled_w, input.dtype)
        if bin_h <= 0 or bin_w <= 0:
            continue
        for ph, (y0, y1) in enumerate(ys):
            for pw, (x0, x1) in enumerate(xs):
                for c in range(channels):
                    out[k, c, ph, pw] = _bin_mean(input[n, c], y0, y1, x0, x1)
    return out.astype(input.dtype)


def prroi_pool_backward(grad_output, rois, input_shape, spatial_scale):
    """Gradient with respect to ``input``: each output's gradient goes to cell ``(i, j)``
    with weight ``axis_mean(rows) * axis_mean(columns)``, the cell's share of the bin's mean."""
    num_rois, channels, pooled_h, pooled_w = grad_output.shape
    height, width = input_shape[2], input_shape[3]
    grad_input = np.zeros(input_shape, np.float64)
    for k in range(num_rois):
        n = int(rois[k, 0])
        ys, xs, bin_h, bin_w = prroi_bins(rois[k], spatial_scale, pooled_h, pooled_w, grad_output.dtype)
        if bin_h <= 0 or bin_w <= 0:
            continue
        for ph, (y0, y1) in enumerate(ys):
            for pw, (x0, x1) in enumerate(xs):
                for i in _cells(y0, y1, height):
                    for j in _cells(x0, x1, width):
                        w = axis_mean(y0, y1, i) * axis_mean(x0, x1, j)
                        grad_input[n, :, i, j] += grad_output[k, :, ph, pw].astype(np.float64) * w
    return grad_input.astype(grad_output.dtype)


def _row_line_integral(image, y, xs, xe):
    """``integral over x in [xs, xe] of F(y, x)``: along a horizontal bin edge."""
    height, width = image.shape
    total = 0.0
    for i in _cells(y, y, height):
        for j in _cells(xs, xe, width):
            total += float(image[i, j]) * hat(y - i) * hat_integral(xs, xe, j)
    return total


def prroi_pool_boxes_backward(grad_output, input, rois, spatial_scale):
    """Gradient with respect to the box coordinates: ``(K, 5)``, column 0 (batch index) zero.

    For a bin ``[ys, ye] x [xs, xe]`` of value
    ``v``: moving its bottom edge ``ye`` adds the line integral of ``F`` along
    that edge, so ``dv/dye = (L(ye) / bin_w - v) / bin_h`` with ``L(y)`` the
    integral of ``F(y, x)`` over ``[xs, xe]``; ``dv/dys = (v - L(ys) / bin_w) / bin_h``,
    and likewise for the columns (with the lengths of the bin's edges as
    computed, which may differ from ``bin_h`` by a rounding). The bin edges follow the box corners:
    ``ys = y1' + ph * (y2' - y1') / pooled_h`` and ``ye = ys + bin_h`` with
    ``y' = y * spatial_scale``. A RoI of zero width or height has zero gradient.
    """
    num_rois, channels, pooled_h, pooled_w = grad_output.shape
    grad = np.zeros((num_rois, 5), np.float64)
    s = float(spatial_scale)
    for k in range(num_rois):
        n = int(rois[k, 0])
        ys, xs, bin_h, bin_w = prroi_bins(rois[k], spatial_scale, pooled_h, pooled_w, np.float64)
        if bin_h <= 0 or bin_w <= 0:
            continue
        for ph, (y0, y1) in enumerate(ys):
            for pw, (x0, x1) in enumerate(xs):
                # The mean over the bin's actual edges: y1 - y0 may differ from bin_h
                # by a rounding, which would swamp the derivative of a tiny bin.
                h, w = y1 - y0, x1 - x0
                if h <= 0 or w <= 0:
                    continue  # a bin below the spacing of floats: this form does not apply (the kernels take the limit)
                for c in range(channels):
                    image = input[n, c]
                    v = _bin_mean(image, y0, y1, x0, x1)
                    g = float(grad_output[k, c, ph, pw])
                    d_ys = (v - _row_line_integral(image, y0, x0, x1) / w) / h
                    d_ye = (_row_line_integral(image, y1, x0, x1) / w - v) / h
                    d_xs = (v - _row_line_integral(image.T, x0, y0, y1) / h) / w
                    d_xe = (_row_line_integral(image.T, x1, y0, y1) / h - v) / w
                    # d ys / d y1' = 1 - ph / PH, d ye / d y1' = 1 - (ph + 1) / PH, ...
                    grad[k, 1] += g * s * (d_xs * (1 - pw / pooled_w) + d_xe * (1 - (pw + 1) / pooled_w))
                    grad[k, 2] += g * s * (d_ys * (1 - ph / pooled_h) + d_ye * (1 - (ph + 1) / pooled_h))
                    grad[k, 3] += g * s * (d_xs * (pw / pooled_w) + d_xe * ((pw + 1) / pooled_w))
                    grad[k, 4] += g * s * (d_ys * (ph / pooled_h) + d_ye * ((ph + 1) / pooled_h))
    return grad

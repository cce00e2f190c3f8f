"""Position-sensitive RoI pooling on the CPU (ps_roi_pool and ps_roi_align).

Both ops share these kernels: a bin's value is ``sum_r sum_c wy[r] wx[c] x[r, c]``
over the separable taps computed by ``_ps_geometry`` (weights 1 and a
division by the bin's area for ps_roi_pool; bilinear sample weights for
ps_roi_align).

Layout: bin ``b = ph * PW + pw`` of output channel ``c`` reads input
channel ``c * PH * PW + b``. The feature map is therefore copied *bin-major,
channels-last*, ``(B, N, H, W, C_out)`` with ``B = PH * PW``: for a fixed bin
the ``C_out`` channels it reads are contiguous, and the innermost loop runs
over them and vectorises. Results ``(K, C_out, B)`` reshape to
``(K, C_out, PH, PW)``.

Forward: runs of RoIs (balanced by cost) in parallel. Backward: tasks are
(bin, channel range) pairs; a task owns the slab ``grad[b, :, :, :, c0:c1]``
it writes and visits RoIs in ascending order, so there are no atomics and
the result does not depend on the thread count.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True, nogil=True)
def forward(x, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, bounds, out):
    """``out (K, C_out, B)`` <- weighted bin sums of ``x (B, N, H, W, C_out)``.

    With ``mean`` each sum is divided by the bin's area ``rows * cols`` (0 for
    an empty bin), as ps_roi_pool does; otherwise the weights already average.
    """
    channels = x.shape[4]
    pooled_h = y_first.shape[1]
    pooled_w = x_first.shape[1]
    nbins = pooled_h * pooled_w
    for run in numba.prange(bounds.shape[0] - 1):
        buf = np.empty((nbins, channels), x.dtype)
        for k in range(bounds[run], bounds[run + 1]):
            n = batch[k]
            for ph in range(pooled_h):
                r0 = y_first[k, ph]
                nr = y_count[k, ph]
                wy = y_weight[k, ph]
                for pw in range(pooled_w):
                    c0 = x_first[k, pw]
                    nc = x_count[k, pw]
                    wx = x_weight[k, pw]
                    b = ph * pooled_w + pw
                    acc = buf[b]
                    acc[:] = 0
                    plane = x[b, n]
                    for i in range(nr):
                        row = plane[r0 + i]
                        a = wy[i]
                        for j in range(nc):
                            w = a * wx[j]
                            v = row[c0 + j]
                            for c in range(channels):
                                acc[c] += w * v[c]
                    if mean:
                        area = nr * nc
                        if area == 0:
                            acc[:] = 0
                        else:
                            area_t = x.dtype.type(area)
                            for c in range(channels):
                                acc[c] = acc[c] / area_t
            dst = out[k]
            for c in range(channels):
                for b in range(nbins):
                    dst[c, b] = buf[b, c]


@numba.njit(parallel=True, cache=True, nogil=True)
def backward(grad_out, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, tasks, grad_in):
    """``grad_in (B, N, H, W, C_out)`` += the adjoint of :func:`forward` applied to
    ``grad_out (B, K, C_out)``.

    ``tasks (T, 3)`` rows ``[bin, c0, c1]`` partition bins x channels; each
    task writes only ``grad_in[bin, ..., c0:c1]``.
    """
    k_total = grad_out.shape[1]
    pooled_w = x_first.shape[1]
    for t in numba.prange(tasks.shape[0]):
        b = tasks[t, 0]
        c_lo = tasks[t, 1]
        c_hi = tasks[t, 2]
        ph = b // pooled_w
        pw = b - ph * pooled_w
        g = np.empty(c_hi - c_lo, grad_out.dtype)
        for k in range(k_total):
            r0 = y_first[k, ph]
            nr = y_count[k, ph]
            c0 = x_first[k, pw]
            nc = x_count[k, pw]
            if nr == 0 or nc == 0:
                continue
            src = grad_out[b, k]
            if mean:
                area_t = grad_out.dtype.type(nr * nc)
                for c in range(c_hi - c_lo):
                    g[c] = src[c_lo + c] / area_t
            else:
                for c in range(c_hi - c_lo):
                    g[c] = src[c_lo + c]
            wy = y_weight[k, ph]
            wx = x_weight[k, pw]
            plane = grad_in[b, batch[k]]
            for i in range(nr):
                row = plane[r0 + i]
                a = wy[i]
                for j in range(nc):
                    w = a * wx[j]
                    dst = row[c0 + j]
                    for c in range(c_hi - c_lo):
                        dst[c_lo + c] += w * g[c]


@numba.njit(parallel=True, cache=True, nogil=True)
def to_bin_major(x, nbins, out):
    """``out (B, N, H, W, C_out)`` <- ``x (N, C_out * B, H, W)`` (any strides, converting dtype)."""
    n_total, _, height, width = x.shape
    channels = out.shape[4]
    for task in numba.prange(nbins * n_total):
        b = task // n_total
        n = task - b * n_total
        dst = out[b, n]
        for c in range(channels):
            src = x[n, c * nbins + b]
            for h in range(height):
                for w in range(width):
                    dst[h, w, c] = src[h, w]


@numba.njit(parallel=True, cache=True, nogil=True)
def from_bin_major(g, out):
    """``out (N, C_out * B, H, W)`` <- ``g (B, N, H, W, C_out)``, the inverse of :func:`to_bin_major`."""
    nbins, n_total, height, width, channels = g.shape
    for task in numba.prange(n_total * channels):
        n = task // channels
        c = task - n * channels
        for b in range(nbins):
            dst = out[n, c * nbins + b]
            src = g[b, n]
            for h in range(height):
                for w in range(width):
                    dst[h, w] = src[h, w, c]

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


@numba.njit(cache=True, nogil=True, inline="always")
def _forward_task(x, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, task, out):
    """One forward task ``[bin, k0, k1]``: bin ``bin`` of RoIs ``k0 .. k1 - 1``."""
    channels = x.shape[4]
    pooled_w = x_first.shape[1]
    b = task[0]
    ph = b // pooled_w
    pw = b - ph * pooled_w
    for k in range(task[1], task[2]):
        r0 = y_first[k, ph]
        nr = y_count[k, ph]
        c0 = x_first[k, pw]
        nc = x_count[k, pw]
        acc = out[b, k]
        acc[:] = 0
        # views hoisted out of the tap loops let the channel loop vectorise
        slab = x[b, batch[k]]
        for i in range(nr):
            a = y_weight[k, ph, i]
            row = slab[r0 + i]
            for j in range(nc):
                w = a * x_weight[k, pw, j]
                cell = row[c0 + j]
                for c in range(channels):
                    acc[c] += w * cell[c]
        if mean and nr * nc > 0:
            area = x.dtype.type(nr * nc)
            for c in range(channels):
                acc[c] = acc[c] / area


@numba.njit(parallel=True, cache=True, nogil=True)
def forward(x, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, tasks, out):
    """``out (B, K, C_out)`` <- weighted bin sums of ``x (B, N, H, W, C_out)``.

    ``tasks (T, 3)`` rows ``[bin, k0, k1]``: bin ``bin`` of RoIs ``k0 .. k1 - 1``.
    A task reads one bin's slab ``x[bin]`` only, so that slab stays in cache
    while many RoIs read it. With ``mean`` each sum is divided by the bin's
    area ``rows * cols`` (0 for an empty bin), as ps_roi_pool does; otherwise
    the weights already average.
    """
    for t in numba.prange(tasks.shape[0]):
        _forward_task(x, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, tasks[t], out)


@numba.njit(cache=True, nogil=True)
def forward_serial(x, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, tasks, out):
    """:func:`forward` on the calling thread: small calls skip waking the thread pool."""
    for t in range(tasks.shape[0]):
        _forward_task(x, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, tasks[t], out)


@numba.njit(cache=True, nogil=True, inline="always")
def _backward_task(grad_out, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, task, grad_in):
    """One backward task ``[bin, c0, c1]``: all RoIs, in ascending order, of one bin and channel range."""
    k_total = grad_out.shape[1]
    pooled_w = x_first.shape[1]
    b = task[0]
    c_lo = task[1]
    c_hi = task[2]
    ph = b // pooled_w
    pw = b - ph * pooled_w
    nch = c_hi - c_lo
    g = np.empty(nch, grad_out.dtype)
    for k in range(k_total):
        r0 = y_first[k, ph]
        nr = y_count[k, ph]
        c0 = x_first[k, pw]
        nc = x_count[k, pw]
        if nr == 0 or nc == 0:
            continue
        area = grad_out.dtype.type(nr * nc) if mean else grad_out.dtype.type(1)
        for c in range(nch):
            g[c] = grad_out[b, k, c_lo + c] / area
        slab = grad_in[b, batch[k]]
        for i in range(nr):
            a = y_weight[k, ph, i]
            row = slab[r0 + i]
            for j in range(nc):
                w = a * x_weight[k, pw, j]
                cell = row[c0 + j, c_lo:c_hi]
                for c in range(nch):
                    cell[c] += w * g[c]


@numba.njit(parallel=True, cache=True, nogil=True)
def backward(grad_out, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, tasks, grad_in):
    """``grad_in (B, N, H, W, C_out)`` += the adjoint of :func:`forward` applied to
    ``grad_out (B, K, C_out)``.

    ``tasks (T, 3)`` rows ``[bin, c0, c1]`` partition bins x channels; each
    task writes only ``grad_in[bin, ..., c0:c1]`` and adds the RoIs in
    ascending order.
    """
    for t in numba.prange(tasks.shape[0]):
        _backward_task(grad_out, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, tasks[t], grad_in)


@numba.njit(cache=True, nogil=True)
def backward_serial(grad_out, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, tasks, grad_in):
    """:func:`backward` on the calling thread (same tasks, same order, same result)."""
    for t in range(tasks.shape[0]):
        _backward_task(grad_out, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, tasks[t], grad_in)


# ---- layout changes (NumPy's transpose is slow when the inner dimension is short) ----


# RoIs are moved in blocks so that every write fills whole cache lines.
_BLOCK = 32


@numba.njit(parallel=True, cache=True, nogil=True)
def rois_last(src, dst):
    """``dst (K, C_out, B)`` <- ``src (B, K, C_out)``."""
    nbins, k_total, channels = src.shape
    for blk in numba.prange((k_total + _BLOCK - 1) // _BLOCK):
        k1 = min(k_total, (blk + 1) * _BLOCK)
        for b in range(nbins):
            for k in range(blk * _BLOCK, k1):
                for c in range(channels):
                    dst[k, c, b] = src[b, k, c]


@numba.njit(parallel=True, cache=True, nogil=True)
def bins_first(src, dst):
    """``dst (B, K, C_out)`` <- ``src (K, C_out, B)``, the inverse of :func:`rois_last`."""
    k_total, channels, nbins = src.shape
    for blk in numba.prange((k_total + _BLOCK - 1) // _BLOCK):
        k1 = min(k_total, (blk + 1) * _BLOCK)
        for b in range(nbins):
            for k in range(blk * _BLOCK, k1):
                for c in range(channels):
                    dst[b, k, c] = src[k, c, b]


@numba.njit(parallel=True, cache=True, nogil=True)
def channels_first(src, dst):
    """``dst (N, C_out, B, H, W)`` <- ``src (B, N, H, W, C_out)``: read in order, write C_out streams."""
    nbins, n_total, height, width, channels = src.shape
    for task in numba.prange(n_total * nbins):
        n = task // nbins
        b = task - n * nbins
        for h in range(height):
            for w in range(width):
                for c in range(channels):
                    dst[n, c, b, h, w] = src[b, n, h, w, c]

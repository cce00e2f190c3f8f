"""RoIAlign on the CPU: forward and backward over separable bilinear taps.

Layout: the feature map arrives channels-last ``(N, H, W, C)`` so that the
inner loop runs over ``C`` contiguously and vectorises. The sample positions
and bilinear weights of a RoI are shared by every channel, so they are
computed once per RoI by ``_geometry.roi_align_taps`` as short per-axis tap
lists (row, weight) and (column, weight); a bin is the sum of
``row_weight * col_weight * x[n, row, col, :]`` over its row and column taps.
Taps of zero weight are never read.

Forward: runs of RoIs (``bounds``, balanced by tap count) go to threads; each
run fills a per-thread ``(bins, C)`` buffer and writes it transposed into the
caller's ``(K, C, pooled_h * pooled_w)`` output.

Backward: threads split the channels into blocks, so each owns the part of
``grad_input`` it writes: no atomics, no private copies of the input
gradient, and every element sums its contributions in ascending RoI order
whatever the thread count (deterministic).
"""

from __future__ import annotations

import numba
import numpy as np

_FASTMATH = {"contract"}  # allow fused multiply-add; no reassociation


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=_FASTMATH)
def forward(x, batch, hptr, hidx, hwt, wptr, widx, wwt, bounds, out):
    """``out (K, C, PH * PW)`` <- RoIAlign of ``x (N, H, W, C)`` from the taps."""
    channels = x.shape[3]
    pooled_h = hptr.shape[1] - 1
    pooled_w = wptr.shape[1] - 1
    nbins = pooled_h * pooled_w
    for run in numba.prange(bounds.shape[0] - 1):
        buf = np.empty((nbins, channels), x.dtype)
        for k in range(bounds[run], bounds[run + 1]):
            n = batch[k]
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    acc = buf[ph * pooled_w + pw]
                    acc[:] = 0
                    for i in range(hptr[k, ph], hptr[k, ph + 1]):
                        row = hidx[i]
                        wy = hwt[i]
                        for j in range(wptr[k, pw], wptr[k, pw + 1]):
                            weight = wy * wwt[j]
                            v = x[n, row, widx[j]]
                            for c in range(channels):
                                acc[c] += weight * v[c]
            dst = out[k]
            for c in range(channels):
                for b in range(nbins):
                    dst[c, b] = buf[b, c]


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=_FASTMATH)
def backward(grad_out, batch, hptr, hidx, hwt, wptr, widx, wwt, block, grad_in):
    """``grad_in (N, H, W, C)`` += the adjoint of :func:`forward` applied to ``grad_out (K, C, PH * PW)``.

    Channel blocks of ``block`` channels are the unit of parallel work.
    """
    k_total, channels, nbins = grad_out.shape
    pooled_h = hptr.shape[1] - 1
    pooled_w = wptr.shape[1] - 1
    nblocks = (channels + block - 1) // block
    for blk in numba.prange(nblocks):
        c0 = blk * block
        width = min(channels, c0 + block) - c0
        g = np.empty((nbins, width), grad_out.dtype)
        for k in range(k_total):
            n = batch[k]
            src = grad_out[k]
            for c in range(width):
                for b in range(nbins):
                    g[b, c] = src[c0 + c, b]
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    gb = g[ph * pooled_w + pw]
                    for i in range(hptr[k, ph], hptr[k, ph + 1]):
                        row = hidx[i]
                        wy = hwt[i]
                        for j in range(wptr[k, pw], wptr[k, pw + 1]):
                            weight = wy * wwt[j]
                            dst = grad_in[n, row, widx[j]]
                            for c in range(width):
                                dst[c0 + c] += weight * gb[c]

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
    nbins = out.shape[2]
    for run in numba.prange(bounds.shape[0] - 1):
        buf = np.empty((nbins, x.shape[3]), x.dtype)
        for k in range(bounds[run], bounds[run + 1]):
            _forward_roi(x[batch[k]], hptr[k], hidx, hwt, wptr[k], widx, wwt, buf)
            _transpose(buf, out[k])


# The per-RoI loops live in plain functions: LLVM vectorises the channel loop
# there, but not when the same loops sit in the body of a prange.
@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _forward_roi(image, hptr, hidx, hwt, wptr, widx, wwt, buf):
    """``buf (PH * PW, C)`` <- the bins of one RoI over ``image (H, W, C)``."""
    channels = image.shape[2]
    pooled_h = hptr.shape[0] - 1
    pooled_w = wptr.shape[0] - 1
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            acc = buf[ph * pooled_w + pw]
            for c in range(channels):
                acc[c] = 0
            for i in range(hptr[ph], hptr[ph + 1]):
                row = image[hidx[i]]
                wy = hwt[i]
                for j in range(wptr[pw], wptr[pw + 1]):
                    weight = wy * wwt[j]
                    v = row[widx[j]]
                    for c in range(channels):
                        acc[c] += weight * v[c]


@numba.njit(cache=True, nogil=True)
def _transpose(buf, dst):
    """``dst (C, B)`` <- ``buf (B, C)``."""
    nbins, channels = buf.shape
    for c in range(channels):
        for b in range(nbins):
            dst[c, b] = buf[b, c]


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=_FASTMATH)
def backward(grad_out, batch, hptr, hidx, hwt, wptr, widx, wwt, block, grad_in):
    """``grad_in (N, H, W, C)`` += the adjoint of :func:`forward` applied to ``grad_out (K, C, PH * PW)``.

    Channel blocks of ``block`` channels are the unit of parallel work.
    """
    k_total, channels, nbins = grad_out.shape
    nblocks = (channels + block - 1) // block
    for blk in numba.prange(nblocks):
        c0 = blk * block
        c1 = min(channels, c0 + block)
        g = np.empty((nbins, c1 - c0), grad_out.dtype)
        for k in range(k_total):
            _transpose(grad_out[k, c0:c1], g)
            _backward_roi(g, hptr[k], hidx, hwt, wptr[k], widx, wwt, grad_in[batch[k]], c0)


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _backward_roi(g, hptr, hidx, hwt, wptr, widx, wwt, image_grad, c0):
    """``image_grad[:, :, c0:c0 + c] (H, W, C)`` += the taps of one RoI weighted by ``g (PH * PW, c)``."""
    width = g.shape[1]
    pooled_h = hptr.shape[0] - 1
    pooled_w = wptr.shape[0] - 1
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            gb = g[ph * pooled_w + pw]
            for i in range(hptr[ph], hptr[ph + 1]):
                row = image_grad[hidx[i]]
                wy = hwt[i]
                for j in range(wptr[pw], wptr[pw + 1]):
                    weight = wy * wwt[j]
                    # a slice, not an offset index: c0 + c might be negative
                    # for all Numba knows, and the wraparound test blocks SIMD
                    dst = row[widx[j], c0 : c0 + width]
                    for c in range(width):
                        dst[c] += weight * gb[c]

"""RoIAlign on the CPU: forward and backward over separable bilinear taps.

Layout: the feature map arrives channels-last ``(N, H, W, C)`` so that the
inner loops run over ``C`` contiguously and vectorise. The sample positions
and bilinear weights of a RoI are shared by every channel, so they are
computed once per call by ``_geometry.roi_align_taps`` as short per-axis tap
lists, (row, weight) for each bin row and (column, weight) for each bin
column; bin ``(ph, pw)`` is the sum of ``wy * wx * x[n, row, col, :]`` over
the row taps of ``ph`` and the column taps of ``pw``. Taps of zero weight are
never read.

Two ways to evaluate that sum, chosen per RoI by operation count:

- *direct*: every (row tap, column tap) pair of every bin, one multiply-add
  over ``C`` each; best for large RoIs, whose bins share few cells;
- *rows first*: for each bin row, first combine its row taps into one
  interpolated row over the columns the RoI touches, then each bin of that
  row combines its column taps from it; best for small RoIs, whose
  neighbouring bins read the same cells.

Forward: runs of RoIs (``bounds``, balanced by tap count) go to threads; each
run fills a per-thread ``(bins, C)`` buffer and writes it transposed into the
caller's ``(K, C, pooled_h * pooled_w)`` output.

Backward: threads split the channels into blocks, so each owns the part of
``grad_input`` it writes: no atomics, no private copies of the input
gradient, and every element sums its contributions in the same order
whatever the thread count (deterministic).
"""

from __future__ import annotations

import numba
import numpy as np

_FASTMATH = {"contract"}  # allow fused multiply-add; no reassociation

# ``path`` argument of the kernels: choose per RoI, or force one way (tests).
AUTO, DIRECT, ROWS_FIRST = 0, 1, 2


@numba.njit(cache=True, nogil=True)
def _column_span(wptr, widx):
    """First column and number of columns ``[cmin, cmax]`` the RoI's column taps cover."""
    if wptr[-1] == wptr[0]:
        return 0, 0
    cmin = widx[wptr[0]]
    cmax = cmin
    for j in range(wptr[0], wptr[-1]):
        cmin = min(cmin, widx[j])
        cmax = max(cmax, widx[j])
    return cmin, cmax - cmin + 1


@numba.njit(cache=True, nogil=True)
def _rows_first_pays(hptr, wptr, span, path):
    if path != AUTO:
        return path == ROWS_FIRST
    pooled_h = hptr.shape[0] - 1
    row_taps = hptr[-1] - hptr[0]
    col_taps = wptr[-1] - wptr[0]
    direct = row_taps * col_taps
    rows_first = (row_taps + pooled_h) * span + pooled_h * col_taps
    return rows_first < direct


@numba.njit(parallel=True, cache=True, nogil=True)
def forward(x, batch, hptr, hidx, hwt, wptr, widx, wwt, bounds, path, out):
    """``out (K, C, PH * PW)`` <- RoIAlign of ``x (N, H, W, C)`` from the taps."""
    nbins = out.shape[2]
    for run in numba.prange(bounds.shape[0] - 1):
        buf = np.empty((nbins, x.shape[3]), x.dtype)
        rows = np.empty((x.shape[2], x.shape[3]), x.dtype)
        for k in range(bounds[run], bounds[run + 1]):
            cmin, span = _column_span(wptr[k], widx)
            if _rows_first_pays(hptr[k], wptr[k], span, path):
                _forward_rows_first(x[batch[k]], hptr[k], hidx, hwt, wptr[k], widx, wwt, cmin, span, rows, buf)
            else:
                _forward_direct(x[batch[k]], hptr[k], hidx, hwt, wptr[k], widx, wwt, buf)
            _transpose(buf, out[k])


# The per-RoI loops live in plain functions: LLVM vectorises the channel loops
# there, but not when the same loops sit in the body of a prange.
@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _forward_direct(image, hptr, hidx, hwt, wptr, widx, wwt, buf):
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


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _forward_rows_first(image, hptr, hidx, hwt, wptr, widx, wwt, cmin, span, rows, buf):
    """As :func:`_forward_direct`, interpolating each bin row once: ``rows (>= span, C)`` is scratch."""
    channels = image.shape[2]
    pooled_h = hptr.shape[0] - 1
    pooled_w = wptr.shape[0] - 1
    for ph in range(pooled_h):
        for u in range(span):
            r = rows[u]
            for c in range(channels):
                r[c] = 0
        for i in range(hptr[ph], hptr[ph + 1]):
            src = image[hidx[i]]
            wy = hwt[i]
            for u in range(span):
                v = src[cmin + u]
                r = rows[u]
                for c in range(channels):
                    r[c] += wy * v[c]
        for pw in range(pooled_w):
            acc = buf[ph * pooled_w + pw]
            for c in range(channels):
                acc[c] = 0
            for j in range(wptr[pw], wptr[pw + 1]):
                wx = wwt[j]
                r = rows[widx[j] - cmin]
                for c in range(channels):
                    acc[c] += wx * r[c]


@numba.njit(cache=True, nogil=True)
def _transpose(buf, dst):
    """``dst (C, B)`` <- ``buf (B, C)``."""
    nbins, channels = buf.shape
    for c in range(channels):
        for b in range(nbins):
            dst[c, b] = buf[b, c]


@numba.njit(parallel=True, cache=True, nogil=True)
def backward(grad_out, batch, hptr, hidx, hwt, wptr, widx, wwt, block, path, grad_in):
    """``grad_in (N, H, W, C)`` += the adjoint of :func:`forward` applied to ``grad_out (K, C, PH * PW)``.

    Channel blocks of ``block`` channels are the unit of parallel work.
    """
    k_total, channels, nbins = grad_out.shape
    nblocks = (channels + block - 1) // block
    for blk in numba.prange(nblocks):
        c0 = blk * block
        c1 = min(channels, c0 + block)
        g = np.empty((nbins, c1 - c0), grad_out.dtype)
        cols = np.empty((grad_in.shape[2], c1 - c0), grad_out.dtype)
        for k in range(k_total):
            _transpose(grad_out[k, c0:c1], g)
            cmin, span = _column_span(wptr[k], widx)
            if _rows_first_pays(hptr[k], wptr[k], span, path):
                _backward_rows_first(g, hptr[k], hidx, hwt, wptr[k], widx, wwt, grad_in[batch[k]], c0, cmin, span, cols)
            else:
                _backward_direct(g, hptr[k], hidx, hwt, wptr[k], widx, wwt, grad_in[batch[k]], c0)


# Writes go through slices ``[c0 : c0 + width]``, not offset indices: Numba
# cannot tell that ``c0 + c`` is not negative, and the wraparound test it
# would insert blocks vectorisation.
@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _backward_direct(g, hptr, hidx, hwt, wptr, widx, wwt, image_grad, c0):
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
                    dst = row[widx[j], c0 : c0 + width]
                    for c in range(width):
                        dst[c] += weight * gb[c]


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _backward_rows_first(g, hptr, hidx, hwt, wptr, widx, wwt, image_grad, c0, cmin, span, cols):
    """As :func:`_backward_direct`, gathering each bin row's gradient per column first
    (``cols (>= span, c)`` is scratch), then spreading it over the row taps."""
    width = g.shape[1]
    pooled_h = hptr.shape[0] - 1
    pooled_w = wptr.shape[0] - 1
    for ph in range(pooled_h):
        for u in range(span):
            t = cols[u]
            for c in range(width):
                t[c] = 0
        for pw in range(pooled_w):
            gb = g[ph * pooled_w + pw]
            for j in range(wptr[pw], wptr[pw + 1]):
                wx = wwt[j]
                t = cols[widx[j] - cmin]
                for c in range(width):
                    t[c] += wx * gb[c]
        for i in range(hptr[ph], hptr[ph + 1]):
            row = image_grad[hidx[i]]
            wy = hwt[i]
            for u in range(span):
                t = cols[u]
                dst = row[cmin + u, c0 : c0 + width]
                for c in range(width):
                    dst[c] += wy * t[c]

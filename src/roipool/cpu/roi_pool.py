"""RoI max pooling on the CPU: forward with and without argmax, and backward.

Layout: the feature map arrives channels-last ``(N, H, W, C)``, so the
channels of one cell are contiguous and a 64-byte vector (16 float32 or 8
float64 channels, see ``_simd``) is one load. A bin is pooled by keeping
eight such vectors (``UNROLL``: 128 float32 channels) in registers while its
cells are scanned in row-major order: eight independent running maxima hide
the latency of each max, and nothing is stored until the bin is done.

The output is ``(K, C, PH * PW)``: per RoI, channel-major. Each block of
channels is pooled into a small ``(bins, block)`` tile that stays in L1, and
the tile is written to the output transposed, ``lanes x lanes`` at a time in
registers (``_simd.transpose_tile``), so every output row is written once, in
order. Runs of RoIs (``bounds``, from ``_parallel.balanced_chunks``) are
split between threads; each RoI's output is written by exactly one thread.

The maximum is strict (``>``, first in row-major scan order wins) and NaN
wins over numbers: once a NaN is seen the bin keeps it (``_simd.vmax``).
Empty bins give 0 and argmax -1. Backward gives each thread whole channels,
so the sums need no atomics and run in the reference's order.
"""

from __future__ import annotations

import numba
import numpy as np

from ._simd import VECTOR_BYTES, transpose_tile, vload, vmax, vmax_index, vsplat_index, vstore

# Vectors pooled together per bin pass (128 float32 / 64 float64 channels).
UNROLL = 8


@numba.njit(parallel=True, cache=True, nogil=True)
def forward(x, batch, hbins, wbins, bounds, out):
    """``out (K, C, PH * PW)`` <- bin maxima of ``x (N, H, W, C)``; no argmax.

    ``batch (K,)``, ``hbins (K, PH, 2)``, ``wbins (K, PW, 2)`` come from
    ``_geometry.roi_pool_bins``; ``bounds`` splits the RoIs into runs.
    ``out`` must be C-contiguous (it is written through a flat view); ``x``
    should be (a strided ``x`` is copied first).
    """
    _, height, width, channels = x.shape
    xf = np.ascontiguousarray(x).reshape(-1)
    outf = out.reshape(-1)
    nbins = hbins.shape[1] * wbins.shape[1]
    block = UNROLL * (VECTOR_BYTES // x.itemsize)
    for run in numba.prange(bounds.shape[0] - 1):
        tile = np.empty(nbins * block, x.dtype)
        for k in range(bounds[run], bounds[run + 1]):
            base = batch[k] * height * width * channels
            for c0 in range(0, channels, block):
                cw = min(block, channels - c0)
                _pool_tile(xf, base + c0, width, channels, cw, hbins[k], wbins[k], tile, block)
                transpose_tile(tile, 0, block, nbins, cw, outf, (k * channels + c0) * nbins, nbins)


@numba.njit(parallel=True, cache=True, nogil=True)
def forward_argmax(x, batch, hbins, wbins, bounds, out, argmax):
    """As :func:`forward`, also writing ``argmax (K, C, PH * PW)``: ``h * W + w`` or -1.

    ``out`` and ``argmax`` must be C-contiguous.
    """
    _, height, width, channels = x.shape
    xf = np.ascontiguousarray(x).reshape(-1)
    outf = out.reshape(-1)
    argf = argmax.reshape(-1)
    nbins = hbins.shape[1] * wbins.shape[1]
    block = UNROLL * (VECTOR_BYTES // x.itemsize)
    for run in numba.prange(bounds.shape[0] - 1):
        tile = np.empty(nbins * block, x.dtype)
        itile = np.empty(nbins * block, np.int32)
        for k in range(bounds[run], bounds[run + 1]):
            base = batch[k] * height * width * channels
            for c0 in range(0, channels, block):
                cw = min(block, channels - c0)
                _pool_tile_argmax(xf, base + c0, width, channels, cw, hbins[k], wbins[k], tile, itile, block)
                dst = (k * channels + c0) * nbins
                transpose_tile(tile, 0, block, nbins, cw, outf, dst, nbins)
                transpose_tile(itile, 0, block, nbins, cw, argf, dst, nbins)


@numba.njit(nogil=True)
def _pool_tile(xf, origin, width, channels, cw, hb, wb, tile, stride):
    """``tile[b * stride + j]`` <- maximum of channel ``j < cw`` over bin ``b``.

    ``origin`` is the flat index of channel 0 of the block at cell (0, 0) of
    the RoI's image; cell ``(h, w)`` of channel ``j`` is at
    ``origin + (h * width + w) * channels + j``.
    """
    lanes = VECTOR_BYTES // xf.itemsize
    pooled_w = wb.shape[0]
    for ph in range(hb.shape[0]):
        h0 = hb[ph, 0]
        h1 = hb[ph, 1]
        for pw in range(pooled_w):
            w0 = wb[pw, 0]
            w1 = wb[pw, 1]
            t = (ph * pooled_w + pw) * stride
            if h1 <= h0 or w1 <= w0:
                tile[t : t + cw] = 0
                continue
            j = 0
            if cw == UNROLL * lanes:
                _bin_max8(xf, origin, width, channels, h0, h1, w0, w1, tile, t)
                j = cw
            while j + lanes <= cw:
                _bin_max1(xf, origin + j, width, channels, h0, h1, w0, w1, tile, t + j)
                j += lanes
            for jj in range(j, cw):
                tile[t + jj] = _bin_max_scalar(xf, origin + jj, width, channels, h0, h1, w0, w1)


@numba.njit(nogil=True)
def _pool_tile_argmax(xf, origin, width, channels, cw, hb, wb, tile, itile, stride):
    """:func:`_pool_tile` that also fills ``itile`` with each maximum's ``h * W + w``."""
    lanes = VECTOR_BYTES // xf.itemsize
    pooled_w = wb.shape[0]
    for ph in range(hb.shape[0]):
        h0 = hb[ph, 0]
        h1 = hb[ph, 1]
        for pw in range(pooled_w):
            w0 = wb[pw, 0]
            w1 = wb[pw, 1]
            t = (ph * pooled_w + pw) * stride
            if h1 <= h0 or w1 <= w0:
                tile[t : t + cw] = 0
                itile[t : t + cw] = -1
                continue
            j = 0
            if cw == UNROLL * lanes:
                _bin_argmax8(xf, origin, width, channels, h0, h1, w0, w1, tile, itile, t)
                j = cw
            while j + lanes <= cw:
                _bin_argmax1(xf, origin + j, width, channels, h0, h1, w0, w1, tile, itile, t + j)
                j += lanes
            for jj in range(j, cw):
                tile[t + jj], itile[t + jj] = _bin_argmax_scalar(xf, origin + jj, width, channels, h0, h1, w0, w1)


# The bin scans below start from the bin's first cell (the reference does
# too), then visit the remaining cells in row-major order.


@numba.njit(nogil=True)
def _bin_max8(xf, origin, width, channels, h0, h1, w0, w1, tile, t):
    lanes = VECTOR_BYTES // xf.itemsize
    o = origin + (h0 * width + w0) * channels
    a0 = vload(xf, o)
    a1 = vload(xf, o + lanes)
    a2 = vload(xf, o + 2 * lanes)
    a3 = vload(xf, o + 3 * lanes)
    a4 = vload(xf, o + 4 * lanes)
    a5 = vload(xf, o + 5 * lanes)
    a6 = vload(xf, o + 6 * lanes)
    a7 = vload(xf, o + 7 * lanes)
    for h in range(h0, h1):
        for w in range(w0 + 1 if h == h0 else w0, w1):
            o = origin + (h * width + w) * channels
            a0 = vmax(a0, vload(xf, o))
            a1 = vmax(a1, vload(xf, o + lanes))
            a2 = vmax(a2, vload(xf, o + 2 * lanes))
            a3 = vmax(a3, vload(xf, o + 3 * lanes))
            a4 = vmax(a4, vload(xf, o + 4 * lanes))
            a5 = vmax(a5, vload(xf, o + 5 * lanes))
            a6 = vmax(a6, vload(xf, o + 6 * lanes))
            a7 = vmax(a7, vload(xf, o + 7 * lanes))
    vstore(tile, t, a0)
    vstore(tile, t + lanes, a1)
    vstore(tile, t + 2 * lanes, a2)
    vstore(tile, t + 3 * lanes, a3)
    vstore(tile, t + 4 * lanes, a4)
    vstore(tile, t + 5 * lanes, a5)
    vstore(tile, t + 6 * lanes, a6)
    vstore(tile, t + 7 * lanes, a7)


@numba.njit(nogil=True)
def _bin_max1(xf, origin, width, channels, h0, h1, w0, w1, tile, t):
    a = vload(xf, origin + (h0 * width + w0) * channels)
    for h in range(h0, h1):
        for w in range(w0 + 1 if h == h0 else w0, w1):
            a = vmax(a, vload(xf, origin + (h * width + w) * channels))
    vstore(tile, t, a)


@numba.njit(nogil=True)
def _bin_max_scalar(xf, origin, width, channels, h0, h1, w0, w1):
    best = xf[origin + (h0 * width + w0) * channels]
    for h in range(h0, h1):
        for w in range(w0 + 1 if h == h0 else w0, w1):
            v = xf[origin + (h * width + w) * channels]
            if v > best or (v != v and best == best):
                best = v
    return best


@numba.njit(nogil=True)
def _bin_argmax8(xf, origin, width, channels, h0, h1, w0, w1, tile, itile, t):
    lanes = VECTOR_BYTES // xf.itemsize
    o = origin + (h0 * width + w0) * channels
    a0 = vload(xf, o)
    a1 = vload(xf, o + lanes)
    a2 = vload(xf, o + 2 * lanes)
    a3 = vload(xf, o + 3 * lanes)
    a4 = vload(xf, o + 4 * lanes)
    a5 = vload(xf, o + 5 * lanes)
    a6 = vload(xf, o + 6 * lanes)
    a7 = vload(xf, o + 7 * lanes)
    i0 = i1 = i2 = i3 = i4 = i5 = i6 = i7 = vsplat_index(h0 * width + w0, a0)
    for h in range(h0, h1):
        for w in range(w0 + 1 if h == h0 else w0, w1):
            cell = h * width + w
            o = origin + cell * channels
            a0, i0 = vmax_index(a0, i0, vload(xf, o), cell)
            a1, i1 = vmax_index(a1, i1, vload(xf, o + lanes), cell)
            a2, i2 = vmax_index(a2, i2, vload(xf, o + 2 * lanes), cell)
            a3, i3 = vmax_index(a3, i3, vload(xf, o + 3 * lanes), cell)
            a4, i4 = vmax_index(a4, i4, vload(xf, o + 4 * lanes), cell)
            a5, i5 = vmax_index(a5, i5, vload(xf, o + 5 * lanes), cell)
            a6, i6 = vmax_index(a6, i6, vload(xf, o + 6 * lanes), cell)
            a7, i7 = vmax_index(a7, i7, vload(xf, o + 7 * lanes), cell)
    vstore(tile, t, a0)
    vstore(tile, t + lanes, a1)
    vstore(tile, t + 2 * lanes, a2)
    vstore(tile, t + 3 * lanes, a3)
    vstore(tile, t + 4 * lanes, a4)
    vstore(tile, t + 5 * lanes, a5)
    vstore(tile, t + 6 * lanes, a6)
    vstore(tile, t + 7 * lanes, a7)
    vstore(itile, t, i0)
    vstore(itile, t + lanes, i1)
    vstore(itile, t + 2 * lanes, i2)
    vstore(itile, t + 3 * lanes, i3)
    vstore(itile, t + 4 * lanes, i4)
    vstore(itile, t + 5 * lanes, i5)
    vstore(itile, t + 6 * lanes, i6)
    vstore(itile, t + 7 * lanes, i7)


@numba.njit(nogil=True)
def _bin_argmax1(xf, origin, width, channels, h0, h1, w0, w1, tile, itile, t):
    a = vload(xf, origin + (h0 * width + w0) * channels)
    i = vsplat_index(h0 * width + w0, a)
    for h in range(h0, h1):
        for w in range(w0 + 1 if h == h0 else w0, w1):
            cell = h * width + w
            a, i = vmax_index(a, i, vload(xf, origin + cell * channels), cell)
    vstore(tile, t, a)
    vstore(itile, t, i)


@numba.njit(nogil=True)
def _bin_argmax_scalar(xf, origin, width, channels, h0, h1, w0, w1):
    best_cell = h0 * width + w0
    best = xf[origin + best_cell * channels]
    for h in range(h0, h1):
        for w in range(w0 + 1 if h == h0 else w0, w1):
            cell = h * width + w
            v = xf[origin + cell * channels]
            if v > best or (v != v and best == best):
                best = v
                best_cell = cell
    return best, np.int32(best_cell)


# Channels per backward task: the task's slice of grad_in (32 planes of
# H * W) stays in L2 while every RoI's gradient for them streams past.
BACKWARD_CHANNELS = 32


@numba.njit(parallel=True, cache=True, nogil=True)
def backward(grad_out, argmax, batch, grad_in):
    """``grad_in (N, C, H * W)`` += ``grad_out (K, C, B)`` routed through ``argmax``.

    Each task owns a block of channels, so it alone writes those planes: no
    atomics. Within a task the RoIs are visited in ascending order and each
    RoI's bins in order, which is the reference's summation order, so the
    result is deterministic and the same for any thread count. Each task
    reads, per RoI, one contiguous run of ``grad_out`` and of ``argmax``.
    """
    k_total, channels, nbins = grad_out.shape
    nblocks = (channels + BACKWARD_CHANNELS - 1) // BACKWARD_CHANNELS
    for blk in numba.prange(nblocks):
        c0 = blk * BACKWARD_CHANNELS
        c1 = min(c0 + BACKWARD_CHANNELS, channels)
        for k in range(k_total):
            n = batch[k]
            for c in range(c0, c1):
                plane = grad_in[n, c]
                g = grad_out[k, c]
                a = argmax[k, c]
                for b in range(nbins):
                    i = a[b]
                    if i >= 0:
                        plane[i] += g[b]


@numba.njit(parallel=True, cache=True, nogil=True)
def count_outside(values, lo, hi):
    """How many of ``values`` (1-D) lie outside ``[lo, hi)``: one parallel pass."""
    bad = 0
    for i in numba.prange(values.shape[0]):
        v = values[i]
        bad += (v < lo) | (v >= hi)
    return bad

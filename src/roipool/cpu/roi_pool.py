"""RoI max pooling on the CPU: the Numba kernels (forward with and without argmax, two backwards) and their launchers.

Over 450 lines on purpose: the kernels, the register-blocked helpers they
inline and the launchers that feed them are one op family's CPU code, kept in
one file so that a change to the op touches one place.

Layout: the feature map arrives channels-last ``(N, H, W, C)``, so the
channels of one cell are contiguous and a 64-byte vector (16 float32 or 8
float64 channels, see ``_simd``) is one load. A bin is pooled by keeping
eight such vectors (``UNROLL``: 128 float32 channels) in registers while its
cells are scanned in row-major order: eight independent running maxima hide
the latency of each max, and nothing is stored until the bin is done.

A channels-last output ``(K, PH * PW, C)`` is written straight from the
registers: each bin's channels in turn, a bin's cells read whole, once. On
a map larger than a quarter of the L3 (``_machine.sweeps_map_rows``) the
pieces of bin rows of all RoIs go in the order of their first map row, strip
by strip of the map (``_parallel.row_sweep``), so that the map rows being
read serve every RoI that crosses them while in L2 (``maskrcnn``: 60-68 to
40 ms by bin rows across the whole map, then 41 to 30 ms in strips).
The NCHW output ``(K, C, PH * PW)`` is channel-major per RoI. A RoI is
pooled the same way into a ``(bins, chunk)`` tile, ``chunk`` channels sized
to half the L2 the CPU reports (``_machine.tile_channels``; all 256 channels
of a 14 x 14 RoI on 512 KiB), so that a bin's cells are read once per chunk,
not once per register block; the tile is transposed a block at a time,
``lanes x lanes`` in registers (``_simd.transpose_tile``), into a staging
buffer in L1, which is then copied to the output as whole aligned cache
lines (``_simd.copy_to_lines``): an output row is 49 values, so
transposing straight into the output split most stores over two lines.
On a large map an NCHW output is swept into as well: the sweep writes it
channels-last, in its own memory, and each RoI is then transposed in place
(``_tiles.channels_first_in_place``; ``maskrcnn`` NumPy forward 87-91 to 66
ms, against bin rows swept into NCHW as one run of ``PW`` values per
channel). Runs of RoIs,
or of pieces of bin rows (``bounds``, from ``_parallel.balanced_chunks``),
are split between threads; each output element is written by exactly one
thread.

A 16-bit map (float16, bfloat16) may come as its bits (``_simd.HALF_BITS``):
each cell is widened as it is compared and each maximum stored back in 16
bits, exactly, since it is one of the cells; the output is then of the same
bits. The backwards take float32 gradients.

The maximum is strict (``>``, first in row-major scan order wins) and NaN
wins over numbers: once a NaN is seen the bin keeps it (``_simd.vmax``).
Empty bins give 0 and argmax -1. Both backwards (:func:`backward` from a
stored argmax, :func:`backward_recompute` re-scanning the bins) give each
task whole channels, so the sums need no atomics and run in the reference's
order.
"""

from __future__ import annotations

import numba
import numpy as np

from .. import _checks
from ._machine import scratch_band, sweep_strip, sweeps_map_rows, tile_channels
from ._parallel import WHOLE_ROIS, BalancedRuns, launch, launch_threads, row_sweep, share, sweep_band, threads
from ._simd import (
    FALSE,
    ONE,
    VECTOR_BYTES,
    ZERO,
    borrowed,
    load,
    prefetch_l2,
    scratch_lines,
    store,
    transpose_tile,
    vadd_where,
    vector_lanes,
    vload,
    vmax,
    vmax_index,
    vsplat_index,
    vstore,
)
from ._tiles import (
    bins_as,
    bins_order,
    channels_first_in_place,
    channels_last_copy,
    channels_moved_last,
    copy_run,
    load_rows,
    memory_order,
    nchw_to_nhwc,
    store_rows,
    store_tile_lines,
)
from .geometry import roi_pool_bins

# Vectors pooled together per bin pass (128 float32 / 64 float64 channels): the
# channel block of the tiles. ``_bin_max8`` and ``_bin_argmax8`` hold eight vectors,
# written out, and are called for eight whatever this is, so that a smaller block
# would stay correct.
UNROLL = 8


@numba.njit(cache=True, nogil=True)
def _map_cells(x, copy_map):
    """``(xf, (N, H, W, C))``: the channels-last map the kernels read, flat, and its shape. ``x`` is
    that map ``(N, H, W, C)`` (a strided one is copied), or with ``copy_map`` a C-contiguous
    ``(N, C, H, W)`` map, copied here channels-last (for a launch on one thread: every part of a
    launch in parts would copy it all)."""
    if copy_map:
        # the small call's map copy in the kernel's own call: one compiled call fewer, and no
        # NumPy allocation (each a step of 25 to 70 us after an idle spell, docs/benchmarks.md)
        images, channels, height, width = x.shape
        xf = scratch_lines(x.size, x)
        nchw_to_nhwc(np.ascontiguousarray(x).reshape(-1), channels, height * width, xf, height * width, ZERO, ONE)
    else:
        images, height, width, channels = x.shape
        xf = np.ascontiguousarray(x).reshape(-1)
    return xf, (images, height, width, channels)


@numba.njit(cache=True, nogil=True)
def forward(x, copy_map, batch, hbins, wbins, bounds, items, out, nhwc, chunk, part, parts):
    """``out (K, C, PH * PW)`` (or, ``nhwc``, ``(K, PH * PW, C)``) <- bin maxima of the map ``x``
    (``(N, H, W, C)``, or ``(N, C, H, W)`` with ``copy_map``: :func:`_map_cells`); no argmax.

    ``batch (K,)``, ``hbins (K, PH, 2)``, ``wbins (K, PW, 2)`` come from
    ``geometry.roi_pool_bins``. Into channels-last ``bounds`` splits
    ``items``, rows ``(RoI, ph_lo, ph_hi, pw_lo, pw_hi)`` of bins to pool
    (pieces of bin rows, ``_parallel.row_sweep``), into runs, or, where
    there are none (``_parallel.WHOLE_ROIS``), the RoIs, each taken whole;
    into NCHW there are no items and it splits the RoIs.
    ``chunk``: channels per NCHW tile (``_machine.tile_channels``). ``out``
    must be C-contiguous (it is written through a flat view); ``x`` should
    be (a strided ``x`` is copied first).
    """
    x, batch, hbins, wbins, bounds, items, out = borrowed((x, batch, hbins, wbins, bounds, items, out))
    xf, shape = _map_cells(x, copy_map)
    _, height, width, channels = shape
    outf = out.reshape(-1)
    nbins = hbins.shape[1] * wbins.shape[1]
    block = UNROLL * vector_lanes(x)
    pooled_w = wbins.shape[1]
    for run in share(bounds.shape[0] - 1, part, parts):
        if nhwc:  # by pieces of bin rows or whole RoIs, all channels of each bin in turn
            _pool_items(
                xf, shape, batch, hbins, wbins, items, bounds[run], bounds[run + 1], outf, np.empty(0, np.int32)
            )
            continue
        tile = scratch_lines(nbins * chunk, x)
        stage = scratch_lines(nbins * block, x)
        for k in range(bounds[run], bounds[run + 1]):
            base = batch[k] * height * width * channels
            hb, wb = hbins[k], wbins[k]
            for c1 in range(0, channels, chunk):
                cc = min(chunk, channels - c1)
                _pool_tile(xf, base + c1, width, channels, cc, hb, wb, tile, ZERO, cc, pooled_w * cc)
                for c0 in range(c1, c1 + cc, block):
                    cw = min(block, c1 + cc - c0)
                    store_tile_lines(tile[c0 - c1 :], cc, nbins, cw, stage, outf, k, channels, c0, FALSE)


@numba.njit(cache=True, nogil=True)
def forward_argmax(x, copy_map, batch, hbins, wbins, bounds, items, out, argmax, nhwc, chunk, part, parts):
    """As :func:`forward`, also writing ``argmax`` (the shape and order of ``out``): ``h * W + w`` or -1.

    ``out`` and ``argmax`` must be C-contiguous.
    """
    x, batch, hbins, wbins, bounds, items, out, argmax = borrowed((x, batch, hbins, wbins, bounds, items, out, argmax))
    xf, shape = _map_cells(x, copy_map)
    _, height, width, channels = shape
    outf = out.reshape(-1)
    argf = argmax.reshape(-1)
    # the int32 argmax is stored as float32 bits: the stores only move values, and so share the
    # float32 stores' compiled code instead of compiling an int32 copy of each (2 s on a first call)
    argbits = argf.view(np.float32)
    nbins = hbins.shape[1] * wbins.shape[1]
    block = UNROLL * vector_lanes(x)
    pooled_w = wbins.shape[1]
    for run in share(bounds.shape[0] - 1, part, parts):
        if nhwc:  # by pieces of bin rows or whole RoIs, as in forward
            _pool_items(xf, shape, batch, hbins, wbins, items, bounds[run], bounds[run + 1], outf, argf)
            continue
        tile = scratch_lines(nbins * chunk, x)
        itile = scratch_lines(nbins * chunk, argf)
        ibits = itile.view(np.float32)
        stage = scratch_lines(nbins * block, x)
        istage = scratch_lines(nbins * block, argbits)
        for k in range(bounds[run], bounds[run + 1]):
            base = batch[k] * height * width * channels
            hb, wb = hbins[k], wbins[k]
            for c1 in range(0, channels, chunk):
                cc = min(chunk, channels - c1)
                _pool_tile_argmax(xf, base + c1, width, channels, cc, hb, wb, tile, itile, ZERO, cc, pooled_w * cc)
                for c0 in range(c1, c1 + cc, block):
                    cw = min(block, c1 + cc - c0)
                    store_tile_lines(tile[c0 - c1 :], cc, nbins, cw, stage, outf, k, channels, c0, FALSE)
                    store_tile_lines(ibits[c0 - c1 :], cc, nbins, cw, istage, argbits, k, channels, c0, FALSE)


@numba.njit(nogil=True)
def _pool_items(xf, shape, batch, hbins, wbins, items, lo, hi, outf, argf):
    """The bins of ``items[lo:hi]`` (rows ``(RoI, ph_lo, ph_hi, pw_lo, pw_hi)``) straight into
    their RoIs' ``(bins, C)`` rows of the flat channels-last output ``outf (K, PH * PW, C)``,
    and their argmax into ``argf`` (the same shape), or no argmax if ``argf`` is empty. Without
    items (``_parallel.WHOLE_ROIS``) the RoIs ``lo <= k < hi``, each whole."""
    _, height, width, channels = shape
    pooled_h, pooled_w = hbins.shape[1], wbins.shape[1]
    nbins = pooled_h * pooled_w
    whole = items.shape[0] == 0
    for i in range(lo, hi):
        if whole:
            k, ph_lo, ph_hi, pw_lo, pw_hi = i, ZERO, pooled_h, ZERO, pooled_w
        else:
            k, ph_lo, ph_hi, pw_lo, pw_hi = items[i, 0], items[i, 1], items[i, 2], items[i, 3], items[i, 4]
        base = batch[k] * height * width * channels
        hb, wb = hbins[k, ph_lo:ph_hi], wbins[k, pw_lo:pw_hi]
        out_at, row_step = (k * nbins + ph_lo * pooled_w + pw_lo) * channels, pooled_w * channels
        if argf.size:
            _pool_tile_argmax(xf, base, width, channels, channels, hb, wb, outf, argf, out_at, channels, row_step)
        else:
            _pool_tile(xf, base, width, channels, channels, hb, wb, outf, out_at, channels, row_step)


@numba.njit(nogil=True)
def _pool_tile(xf, origin, width, channels, cw, hb, wb, tile, base, stride, row_step):
    """``tile[base + ph * row_step + pw * stride + j]`` <- maximum of channel ``j < cw`` over bin
    ``(ph, pw)`` of the bins whose edges are ``hb (rows, 2)`` and ``wb (columns, 2)``.

    ``origin`` is the flat index of channel 0 of the block at cell (0, 0) of
    the RoI's image; cell ``(h, w)`` of channel ``j`` is at
    ``origin + (h * width + w) * channels + j``. A bin's channels go
    ``UNROLL`` vectors at a time, then one vector, then the last few as the
    vector ending at ``cw`` (one channel at a time only if ``cw`` is narrower
    than a vector).
    """
    lanes = vector_lanes(xf)
    for ph in range(hb.shape[0]):
        h0 = hb[ph, 0]
        h1 = hb[ph, 1]
        for pw in range(wb.shape[0]):
            w0 = wb[pw, 0]
            w1 = wb[pw, 1]
            t = base + ph * row_step + pw * stride
            if h1 <= h0 or w1 <= w0:
                tile[t : t + cw] = 0
                continue
            j = 0
            while j + 8 * lanes <= cw:
                _bin_max8(xf, origin + j, width, channels, h0, h1, w0, w1, tile, t + j)
                j += 8 * lanes
            while j + lanes <= cw:
                _bin_max1(xf, origin + j, width, channels, h0, h1, w0, w1, tile, t + j)
                j += lanes
            if j < cw and cw >= lanes:
                # the last channels as the vector that ends at cw: the channels it shares with
                # the one before are found again, with the same bits (a maximum does not depend
                # on the vector that finds it), far cheaper than one channel at a time
                _bin_max1(xf, origin + cw - lanes, width, channels, h0, h1, w0, w1, tile, t + cw - lanes)
                j = cw
            for jj in range(j, cw):
                store(tile, t + jj, _bin_max_scalar(xf, origin + jj, width, channels, h0, h1, w0, w1))


@numba.njit(nogil=True)
def _pool_tile_argmax(xf, origin, width, channels, cw, hb, wb, tile, itile, base, stride, row_step):
    """:func:`_pool_tile` that also fills ``itile`` with each maximum's ``h * W + w``."""
    lanes = vector_lanes(xf)
    for ph in range(hb.shape[0]):
        h0 = hb[ph, 0]
        h1 = hb[ph, 1]
        for pw in range(wb.shape[0]):
            w0 = wb[pw, 0]
            w1 = wb[pw, 1]
            t = base + ph * row_step + pw * stride
            if h1 <= h0 or w1 <= w0:
                tile[t : t + cw] = 0
                itile[t : t + cw] = -1
                continue
            j = 0
            while j + 8 * lanes <= cw:
                _bin_argmax8(xf, origin + j, width, channels, h0, h1, w0, w1, tile, itile, t + j)
                j += 8 * lanes
            while j + lanes <= cw:
                _bin_argmax1(xf, origin + j, width, channels, h0, h1, w0, w1, tile, itile, t + j)
                j += lanes
            if j < cw and cw >= lanes:  # the last channels as the vector that ends at cw (_pool_tile)
                _bin_argmax1(xf, origin + cw - lanes, width, channels, h0, h1, w0, w1, tile, itile, t + cw - lanes)
                j = cw
            for jj in range(j, cw):
                best, itile[t + jj] = _bin_argmax_scalar(xf, origin + jj, width, channels, h0, h1, w0, w1)
                store(tile, t + jj, best)


# The bin scans below start from the bin's first cell (the reference does
# too), then visit the remaining cells in row-major order.


@numba.njit(nogil=True)
def _bin_max8(xf, origin, width, channels, h0, h1, w0, w1, tile, t):
    lanes = vector_lanes(xf)
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
    best = load(xf, origin + (h0 * width + w0) * channels)
    for h in range(h0, h1):
        for w in range(w0 + 1 if h == h0 else w0, w1):
            v = load(xf, origin + (h * width + w) * channels)
            if v > best or (v != v and best == best):
                best = v
    return best


@numba.njit(nogil=True)
def _bin_argmax8(xf, origin, width, channels, h0, h1, w0, w1, tile, itile, t):
    lanes = vector_lanes(xf)
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
    best = load(xf, origin + best_cell * channels)
    for h in range(h0, h1):
        for w in range(w0 + 1 if h == h0 else w0, w1):
            cell = h * width + w
            v = load(xf, origin + cell * channels)
            if v > best or (v != v and best == best):
                best = v
                best_cell = cell
    return best, np.int32(best_cell)


# Channels per backward task: the task's slice of grad_in (32 planes of
# H * W) stays in L2 while every RoI's gradient for them streams past.
BACKWARD_CHANNELS = 32


@numba.njit(cache=True, nogil=True)
def backward(grad_out, argmax, batch, grad_in, nhwc, nhwc_block, part, parts):
    """``grad_in (N, C, H * W)`` += ``grad_out (K, C, B)`` routed through ``argmax (K, C, B)``;
    with ``nhwc``, all three channels-last: ``(N, H * W, C)``, ``(K, B, C)``, ``(K, B, C)``.

    Each task owns a block of channels, so it alone writes those elements: no
    atomics. Within a task the RoIs are visited in ascending order and each
    RoI's bins in order, which is the reference's summation order for every
    element, so the result is deterministic and the same for any thread count
    and either memory order. In NCHW each task (``BACKWARD_CHANNELS``
    channels) reads, per RoI, one contiguous run of ``grad_out`` and of
    ``argmax`` and adds into its channels' planes. Channels-last, a task takes
    ``nhwc_block`` channels (one block per thread: a RoI's block is then read
    as ``B`` runs of ``nhwc_block`` values, where 32-channel runs 2 KB apart
    took four times as long on ``vgg16``) and adds into ``grad_in`` directly.
    """
    grad_out, argmax, batch, grad_in = borrowed((grad_out, argmax, batch, grad_in))
    k_total = grad_out.shape[0]
    channels = grad_out.shape[2] if nhwc else grad_out.shape[1]
    nbins = grad_out.shape[1] if nhwc else grad_out.shape[2]
    cells = grad_in.shape[1] if nhwc else grad_in.shape[2]
    block = nhwc_block if nhwc else BACKWARD_CHANNELS
    nblocks = (channels + block - 1) // block
    gof = grad_out.reshape(-1)
    amf = argmax.reshape(-1)
    gif = grad_in.reshape(-1)
    for blk in share(nblocks, part, parts):
        c0 = blk * block
        cw = min(block, channels - c0)
        if not nhwc:
            for k in range(k_total):
                n = batch[k]
                for c in range(c0, c0 + cw):
                    plane = grad_in[n, c]
                    g = grad_out[k, c]
                    a = argmax[k, c]
                    for b in range(nbins):
                        i = a[b]
                        if i >= 0:
                            plane[i] += g[b]
            continue
        # unsigned indices (all are >= 0): Numba then adds no negative-index
        # wraparound to each access, which made this loop 1.7x slower
        step = np.uint64(channels)
        for k in range(k_total):
            at = np.uint64(batch[k] * cells * channels + c0)
            for b in range(nbins):
                row = np.uint64((k * nbins + b) * channels + c0)
                for c in range(cw):
                    cu = np.uint64(c)
                    i = amf[row + cu]
                    if i >= 0:
                        gif[at + np.uint64(i) * step + cu] += gof[row + cu]


# Vectors per bin pass in the recomputing backward (64 float32 / 32 float64
# channels): a task's copy of its channels of the map and its accumulator
# (both cells x 64 channels, 486 KB each on a 38 x 50 map) then share L2.
RECOMPUTE_UNROLL = 4


@numba.njit(cache=True, nogil=True)
def backward_recompute(x, channels_last, batch, hbins, wbins, grad_out, go_nhwc, band, grad_in, gi_nhwc, part, parts):
    """``grad_in (N, C, H * W)`` <- ``grad_out (K, C, B)`` routed to each bin's maximum, found again in ``x``.

    The gradient of :func:`forward` with no stored argmax. A task owns one
    image and one block of channels (``RECOMPUTE_UNROLL`` vectors). It copies
    that slice of ``x`` into a dense ``(H * W, block)`` buffer (the slice of
    the channels-last map has a 2 KB stride between cells on a 512-channel
    map, which would use a quarter of L2's sets) and accumulates into a zeroed
    ``(H * W, block)`` buffer. For each of the image's RoIs in ascending order
    and each bin in order it scans the bin with the forward's rule and order
    (so ties, -0.0, NaN and -inf pick the cell the forward's argmax names),
    keeping the winning cells in registers, then walks the bin's cells again,
    adding the bin's gradient in the lanes that cell won. That is the
    reference's summation order for every element, and no two tasks write the
    same element, so the result is bit-identical to :func:`backward` with the
    forward's argmax, whatever the thread count. Each task ends by writing its
    accumulator transposed into ``grad_in``, which is thus fully overwritten.
    ``grad_out`` is ``(K, PH * PW, C)`` if ``go_nhwc`` and ``grad_in``
    ``(N, H * W, C)`` if ``gi_nhwc`` (then each is copied row by row, not transposed).

    ``x`` is ``(N, H, W, C)`` if ``channels_last``, else ``(N, C, H, W)`` (the
    tasks then transpose their slices themselves, so the usual NCHW map needs
    no channels-last copy first); ``x`` and ``grad_out`` must be C-contiguous;
    ``batch``, ``hbins``, ``wbins`` as in :func:`forward`.

    With ``band`` below the map's height a task owns only a band of that many
    map rows (``_machine.scratch_band``): it copies the rows its bins read
    (those of every bin row reaching the band, which may reach beyond it),
    scans those bins, and keeps only the sums that land in its band, in the
    same order: the same bits, from buffers that stay in cache.
    """
    x, batch, hbins, wbins, grad_out, grad_in = borrowed((x, batch, hbins, wbins, grad_out, grad_in))
    if channels_last:
        n_images, height, width, channels = x.shape
    else:
        n_images, channels, height, width = x.shape
    k_total = grad_out.shape[0]
    nbins = grad_out.shape[1] if go_nhwc else grad_out.shape[2]
    cells = height * width
    xf = x.reshape(-1)
    gof = grad_out.reshape(-1)
    gif = grad_in.reshape(-1)
    block = RECOMPUTE_UNROLL * vector_lanes(x)
    nblocks = (channels + block - 1) // block
    bands = (height + band - 1) // band
    pooled_w = wbins.shape[1]
    for task in share(n_images * nblocks * bands, part, parts):
        n = task // (nblocks * bands)
        c0 = (task // bands % nblocks) * block
        cw = min(block, channels - c0)
        h0 = task % bands * band
        h1 = min(h0 + band, height)
        # the rows read by the bin rows reaching the band (all rows with one band)
        r0, r1 = h0, h1
        k = _next_roi(batch, n, ZERO)
        while k < k_total and bands > 1:
            pa, pb = _rows_reaching(hbins[k], h0, h1)
            for ph in range(pa, pb):
                if hbins[k, ph, 0] < hbins[k, ph, 1]:
                    r0, r1 = min(r0, hbins[k, ph, 0]), max(r1, hbins[k, ph, 1])
            k = _next_roi(batch, n, k + 1)
        rows_cells = (r1 - r0) * width
        xl = scratch_lines(rows_cells * block, x)
        if channels_last:
            for cell in range(rows_cells):
                copy_run(xf, (n * cells + r0 * width + cell) * channels + c0, xl, cell * block, cw)
        else:
            transpose_tile(xf, (n * channels + c0) * cells + r0 * width, cells, cw, rows_cells, xl, ZERO, block)
        acc = scratch_lines(rows_cells * block, x, True)
        gtile = scratch_lines(nbins * block, x)
        tail, tail_cells = np.empty(block, x.dtype), np.empty(block, np.int32)
        k = _next_roi(batch, n, ZERO)
        while k < k_total:
            following = _next_roi(batch, n, k + 1)
            # the RoI's gradient for this block, bins x channels: the bin rows reaching the band
            pa, pb = _rows_reaching(hbins[k], h0, h1)
            if pa < pb:
                load_rows(gof, k, channels, c0, nbins, pa * pooled_w, pb * pooled_w, cw, gtile, block, go_nhwc)
                ahead = -1
                if following < k_total and bands == 1:
                    ahead = following * channels * nbins + (c0 if go_nhwc else c0 * nbins)
                ahead_step = channels if go_nhwc else 0
                _grad_tile(
                    xl, width, block, cw, hbins[k, pa:pb], wbins[k], r0, gtile[pa * pooled_w * block :], acc, gof,
                    ahead, cw * nbins, ahead_step, tail, tail_cells,
                )  # fmt: skip
            k = following
        # the band's rows of the accumulator into the gradient
        store_rows(
            acc, (h0 - r0) * width * block, block, cells, h0 * width, h1 * width, cw, gif, n, channels, c0, gi_nhwc
        )


@numba.njit(nogil=True)
def _rows_reaching(hb, h0, h1):
    """``(pa, pb)``: bin rows ``[pa, pb)`` of ``hb (PH, 2)`` span every non-empty one that reads
    a map row in ``[h0, h1)``; ``pa == pb`` if none does."""
    pa, pb = hb.shape[0], 0
    for ph in range(hb.shape[0]):
        if hb[ph, 0] < hb[ph, 1] and hb[ph, 0] < h1 and hb[ph, 1] > h0:
            pa, pb = min(pa, ph), ph + 1
    return pa, max(pa, pb)


@numba.njit(nogil=True)
def _next_roi(batch, n, k):
    """The first RoI ``>= k`` of image ``n`` (``len(batch)`` if none)."""
    while k < batch.shape[0] and batch[k] != n:
        k += 1
    return k


@numba.njit(nogil=True)
def _grad_tile(xl, width, stride, cw, hb, wb, row0, gtile, acc, gof, ahead, ahead_size, ahead_step, tail, tail_cells):
    """Add ``gtile[b * stride + j]`` to ``acc[cell * stride + j]`` where ``cell`` holds channel ``j``'s maximum over bin ``b``.

    ``xl`` and ``acc`` are ``(rows, W, stride)`` channels-last, map rows from ``row0`` on (which
    must hold every row of ``hb``); ``j < cw``.
    Meanwhile ``gof[ahead : ahead + ahead_size]`` (the next RoI's gradient;
    ``ahead`` -1: none) is prefetched, a few cache lines per bin: issued all
    at once the prefetches would wait for free line-fill buffers and not run
    ahead of the work. This hides most of the time the gradient, which no
    cache holds, takes to arrive from memory (about 8 of 38 ms on the vgg16
    workload). ``ahead_step`` > 0: the next RoI's gradient is channels-last,
    bin ``b``'s part at ``ahead + b * ahead_step``. ``tail``, ``tail_cells``: scratch of a vector's lanes.
    """
    lanes = vector_lanes(xl)
    pooled_w = wb.shape[0]
    per_bin = (cw + lanes - 1) // lanes
    line = 0
    for ph in range(hb.shape[0]):
        h0 = hb[ph, 0] - row0
        h1 = hb[ph, 1] - row0
        for pw in range(pooled_w):
            if ahead >= 0:
                for i in range(per_bin):
                    if ahead_step:
                        prefetch_l2(gof, ahead + (ph * pooled_w + pw) * ahead_step + i * lanes)
                    elif line < ahead_size:
                        prefetch_l2(gof, ahead + line)
                    line += lanes
            w0 = wb[pw, 0]
            w1 = wb[pw, 1]
            if h1 <= h0 or w1 <= w0:
                continue
            t = (ph * pooled_w + pw) * stride
            j = 0
            # the rows as int32, the forward's type: the argmax helpers below then share its
            # compiled copies instead of compiling an int64 copy each
            r0, r1 = np.int32(h0), np.int32(h1)
            if cw == RECOMPUTE_UNROLL * lanes:
                _bin_grad4(xl, width, stride, h0, h1, w0, w1, gtile, t, acc)
                j = cw
            while j + lanes <= cw:
                _bin_grad1(xl, j, width, stride, h0, h1, w0, w1, gtile, t + j, acc)
                j += lanes
            if j < cw and cw >= lanes:
                # the last channels' maxima found by the vector that ends at cw (the same cells
                # as one channel at a time), their gradient added for those channels only
                _bin_argmax1(xl, cw - lanes, width, stride, r0, r1, w0, w1, tail, tail_cells, ZERO)
                for jj in range(j, cw):
                    acc[tail_cells[jj - (cw - lanes)] * stride + jj] += gtile[t + jj]
                j = cw
            for jj in range(j, cw):
                _, cell = _bin_argmax_scalar(xl, jj, width, stride, r0, r1, w0, w1)
                acc[cell * stride + jj] += gtile[t + jj]


@numba.njit(nogil=True)
def _bin_grad4(xl, width, stride, h0, h1, w0, w1, gtile, t, acc):
    lanes = vector_lanes(xl)
    o = (h0 * width + w0) * stride
    a0 = vload(xl, o)
    a1 = vload(xl, o + lanes)
    a2 = vload(xl, o + 2 * lanes)
    a3 = vload(xl, o + 3 * lanes)
    i0 = i1 = i2 = i3 = vsplat_index(h0 * width + w0, a0)
    for h in range(h0, h1):
        for w in range(w0 + 1 if h == h0 else w0, w1):
            cell = h * width + w
            o = cell * stride
            a0, i0 = vmax_index(a0, i0, vload(xl, o), cell)
            a1, i1 = vmax_index(a1, i1, vload(xl, o + lanes), cell)
            a2, i2 = vmax_index(a2, i2, vload(xl, o + 2 * lanes), cell)
            a3, i3 = vmax_index(a3, i3, vload(xl, o + 3 * lanes), cell)
    g0 = vload(gtile, t)
    g1 = vload(gtile, t + lanes)
    g2 = vload(gtile, t + 2 * lanes)
    g3 = vload(gtile, t + 3 * lanes)
    for h in range(h0, h1):
        for w in range(w0, w1):
            cell = h * width + w
            r = cell * stride
            vstore(acc, r, vadd_where(vload(acc, r), g0, i0, cell))
            vstore(acc, r + lanes, vadd_where(vload(acc, r + lanes), g1, i1, cell))
            vstore(acc, r + 2 * lanes, vadd_where(vload(acc, r + 2 * lanes), g2, i2, cell))
            vstore(acc, r + 3 * lanes, vadd_where(vload(acc, r + 3 * lanes), g3, i3, cell))


@numba.njit(nogil=True)
def _bin_grad1(xl, j, width, stride, h0, h1, w0, w1, gtile, t, acc):
    a = vload(xl, (h0 * width + w0) * stride + j)
    i = vsplat_index(h0 * width + w0, a)
    for h in range(h0, h1):
        for w in range(w0 + 1 if h == h0 else w0, w1):
            cell = h * width + w
            a, i = vmax_index(a, i, vload(xl, cell * stride + j), cell)
    g = vload(gtile, t)
    for h in range(h0, h1):
        for w in range(w0, w1):
            r = (h * width + w) * stride + j
            vstore(acc, r, vadd_where(vload(acc, r), g, i, h * width + w))


@numba.njit(cache=True, nogil=True)
def count_outside(values, lo, hi, part, parts):
    """How many of ``values`` (1-D) lie outside ``[lo, hi)``: one parallel pass."""
    (values,) = borrowed((values,))
    bad = 0
    for i in share(values.shape[0], part, parts):
        v = values[np.uint64(i)]  # a signed index's wraparound check kept this loop from vectorising: 3.5x slower
        bad += (v < lo) | (v >= hi)
    return bad


# ---- launchers: the geometry of one call, and the launch of its kernels on every thread ----
#
# They take validated, channels-last inputs in the compute dtype and
# caller-allocated outputs, so that the NumPy frontend and the torch frontend
# (which hands in views of its own tensors) share them.


class RoIPoolBins(BalancedRuns):
    """Bin edges of every RoI of one call and the split of the RoIs into balanced runs.

    ``rois (K, 5)`` are validated (``_checks.rois_array``) and in the compute
    dtype; the feature map is ``height x width``. Attributes ``batch (K,)``,
    ``hbins (K, PH, 2)``, ``wbins (K, PW, 2)`` (``geometry.roi_pool_bins``),
    ``cost (K,)`` and the runs (:meth:`runs`) are what the kernels take.
    """

    def __init__(self, rois, spatial_scale, pooled_h, pooled_w, height, width):
        self.pooled_h, self.pooled_w = pooled_h, pooled_w
        self.num_rois = rois.shape[0]
        _checks.geometry_limits(pooled_h, pooled_w)
        self.batch, self.hbins, self.wbins, self.cost = roi_pool_bins(
            rois, _checks.scale_in_dtype(spatial_scale, rois.dtype), pooled_h, pooled_w, height, width
        )

    def cells_per_bin(self) -> float:
        """Mean number of map cells a bin reads; 0 without RoIs."""
        k, bins = self.num_rois, self.pooled_h * self.pooled_w
        if k == 0:
            return 0.0
        return float(self.cost.sum() - k * bins) / (k * bins)  # cost: cells read plus bins written


def _chunk(bins: RoIPoolBins, x) -> int:
    """Channels per tile of an NCHW output: a RoI's bins of that many channels stay in L2."""
    block = UNROLL * (VECTOR_BYTES // max(x.itemsize, 4))  # half-precision bits: float32 vectors
    return tile_channels(bins.pooled_h * bins.pooled_w, x.shape[1], x.itemsize, block)


def _forward_plan(x, bins: RoIPoolBins, view, nhwc: bool):
    """``(dst, bounds, items, transpose)``: how :func:`forward` and :func:`forward_argmax` fill
    ``view`` (``_tiles.bins_order``) from the map ``x (N, C, H, W)``.

    On a map larger than a quarter of the L3 (``_machine.sweeps_map_rows``) they sweep down
    strips of the map by pieces of bin rows, into channels-last; an NCHW ``view`` is then
    written channels-last in its own memory (``dst``) and ``transpose`` says to turn each RoI
    in place afterwards (``_tiles.channels_first_in_place``). On a smaller map they go RoI by
    RoI, in runs, with no items (``_parallel.WHOLE_ROIS``), into either order.
    """
    k, channels = bins.num_rois, x.shape[1]
    if not sweeps_map_rows(x[0].nbytes):
        return view, bins.runs(x.size + view.size), WHOLE_ROIS, False  # runs for the launch's values
    rows, cols = np.diff(bins.hbins, axis=2)[:, :, 0], np.diff(bins.wbins, axis=2)[:, :, 0]
    strip = sweep_strip(sweep_band(rows, cols), channels * x.itemsize)
    items, bounds = row_sweep(bins.hbins[:, :, 0], bins.wbins[:, :, 0], rows, cols, bins.batch, x.shape[2], strip)
    return (view, bounds, items, False) if nhwc else (view.reshape(k, -1, channels), bounds, items, True)


def _kernel_map(x, items, values: int) -> tuple[np.ndarray, bool]:
    """``(map, copy_map)`` of the forward kernels (:func:`_map_cells`) for ``x (N, C, H, W)``:
    channels-last memory as it is; a C-contiguous map that a launch of ``values`` on one thread
    reads RoI by RoI (no ``items``) as it is, for the kernel to copy; else a channels-last copy."""
    moved = channels_moved_last(x)
    if moved.flags.c_contiguous:
        return moved, False
    if x.flags.c_contiguous and not items.shape[0] and launch_threads(values) == 1:
        return x, True
    return channels_last_copy(x), False


def _same_bits(x, out) -> None:
    if x.itemsize == 2 and out.dtype != x.dtype:
        raise ValueError(f"a map of half-precision bits ({x.dtype}) needs an output of the same, got {out.dtype}")


def launch_forward(x, bins: RoIPoolBins, out) -> None:
    """``out (K, C, PH, PW)`` <- bin maxima of ``x (N, C, H, W)`` (compute dtype, any strides: a
    channels-last map is read in place, another through a channels-last copy, :func:`_kernel_map`).

    ``out`` is C-contiguous in NCHW or channels-last order (``_tiles.memory_order``). A
    half-precision map may come as its bits (``_tiles.reads_half``), with ``out`` of the same
    bits: each cell is widened as it is read and each maximum stored back in 16 bits, which is
    exact, as it is one of the cells.
    """
    _same_bits(x, out)
    if out.size:
        view, nhwc = bins_order(out)
        dst, bounds, items, transpose = _forward_plan(x, bins, view, nhwc)
        values = x.size + dst.size
        xk, copy_map = _kernel_map(x, items, values)
        launch(
            forward, xk, copy_map, bins.batch, bins.hbins, bins.wbins, bounds, items, dst, nhwc or transpose,
            _chunk(bins, x), values=values,
        )  # fmt: skip
        if transpose:
            channels_first_in_place(dst)


def launch_forward_argmax(x, bins: RoIPoolBins, out, argmax) -> None:
    """As :func:`launch_forward`, also writing ``argmax (K, C, PH, PW)`` (int32, in ``out``'s order)."""
    _same_bits(x, out)
    if out.size:
        view, nhwc = bins_order(out)
        arg_view, arg_nhwc = bins_order(argmax)
        if arg_nhwc != nhwc:
            raise ValueError("internal: out and argmax must be in the same memory order")
        dst, bounds, items, transpose = _forward_plan(x, bins, view, nhwc)
        arg_dst = arg_view.reshape(dst.shape)
        values = x.size + dst.size
        xk, copy_map = _kernel_map(x, items, values)
        launch(
            forward_argmax, xk, copy_map, bins.batch, bins.hbins, bins.wbins, bounds, items, dst, arg_dst,
            nhwc or transpose, _chunk(bins, x), values=values,
        )  # fmt: skip
        if transpose:
            channels_first_in_place(dst)
            channels_first_in_place(arg_dst.view(np.float32))  # as float32 bits, as the kernel stores it


def launch_backward(grad_out, argmax, batch, grad_in) -> None:
    """``grad_in (N, C, H, W)`` (zeroed by the caller) += ``grad_out (K, C, PH, PW)`` routed by ``argmax``.

    ``grad_in`` is C-contiguous in NCHW or channels-last order (``_tiles.memory_order``);
    ``grad_out`` and ``argmax`` have any strides, read in place when they are in that
    order (else through a copy). The sums do not depend on the order.
    """
    if not grad_out.size:
        return
    gi, nhwc = memory_order(grad_in)
    gi = gi.reshape(gi.shape[0], -1, gi.shape[-1]) if nhwc else gi.reshape(gi.shape[0], gi.shape[1], -1)
    go, am = bins_as(grad_out, nhwc), bins_as(argmax, nhwc)
    # channels-last: one block per thread, so each RoI's gradient is read in long runs
    per_thread = -(-gi.shape[-1] // threads())
    nhwc_block = max(BACKWARD_CHANNELS, -(-per_thread // 16) * 16)
    launch(backward, go, am, batch, gi, nhwc, nhwc_block, values=go.size + gi.size)


def launch_backward_recompute(x, channels_last: bool, bins: RoIPoolBins, grad_out, grad_in) -> None:
    """``grad_in (N, C, H, W)`` <- ``grad_out (K, C, PH, PW)`` routed to each bin's maximum in ``x``.

    ``x`` is the map, ``(N, H, W, C)`` if ``channels_last`` else ``(N, C, H, W)``,
    C-contiguous in the compute dtype. The same sums as :func:`launch_backward`
    with the forward's argmax, found again by scanning the bins instead of read
    back. ``grad_in`` is C-contiguous in NCHW or channels-last order
    (``_tiles.memory_order``) and overwritten (no zeroing needed); ``grad_out``
    has any strides (read in place in either order, else through a copy).
    """
    if grad_in.size == 0:
        return
    if grad_out.size == 0:
        grad_in[...] = 0
        return
    go, go_nhwc = bins_order(grad_out, copy=True)
    gi, gi_nhwc = memory_order(grad_in)
    images, channels, height, width = grad_in.shape
    band = scratch_band(height, width, 2 * RECOMPUTE_UNROLL * VECTOR_BYTES, threads())
    block = RECOMPUTE_UNROLL * (VECTOR_BYTES // grad_in.itemsize)
    launch(
        backward_recompute,
        x,
        channels_last,
        bins.batch,
        bins.hbins,
        bins.wbins,
        go,
        go_nhwc,
        band,
        gi,
        gi_nhwc,
        values=x.size + go.size,
        tasks=images * -(-channels // block) * -(-height // band),  # (image, channel block, band)
    )


def recompute_working_set(height: int, width: int) -> int:
    """Bytes one :func:`backward_recompute` task keeps hot: its dense copy of a block of the
    map and its accumulator, ``H * W`` cells of ``RECOMPUTE_UNROLL`` vectors each."""
    return 2 * height * width * RECOMPUTE_UNROLL * VECTOR_BYTES


def argmax_outside(argmax: np.ndarray, cells: int) -> bool:
    """Whether any index lies outside ``[-1, cells)``; int32 (what the forward returns) in one parallel pass.

    The backward writes at these indices, so both frontends check them first.
    """
    in_order = argmax.flags.c_contiguous or (argmax.ndim == 4 and channels_moved_last(argmax).flags.c_contiguous)
    if argmax.dtype == np.int32 and argmax.dtype.isnative and in_order:
        view, _ = memory_order(argmax)  # NCHW or channels-last: one pass over its memory either way
        return sum(launch(count_outside, view.reshape(-1), -1, cells, values=view.size)) > 0
    return bool(argmax.min() < -1 or argmax.max() >= cells)

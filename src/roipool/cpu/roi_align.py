"""RoIAlign on the CPU: the Numba kernels (forward, backward over separable bilinear taps, and
the gradient with respect to the boxes) and their launchers.

Over 450 lines on purpose: the kernels, the register-blocked gather and
scatter helpers they inline and the launchers that feed them are one op
family's CPU code, kept in one file so that a change to the op touches one
place (PrRoI pooling and rotated RoIAlign reuse its blocked map, launchers
and helpers).

The sample positions and bilinear weights of a RoI are shared by every
channel, so they are computed once per call by ``geometry.roi_align_taps``
as short per-axis tap lists, (row, weight) for each bin row and (column,
weight) for each bin column; bin ``(ph, pw)`` is the sum of
``wy * wx * x[n, row, col, :]`` over the row taps of ``ph`` and the column
taps of ``pw``. Taps of zero weight are never read.

Two ways to evaluate that sum, chosen per RoI by operation count:

- *direct*: every (row tap, column tap) pair of every bin, one multiply-add
  over the channels each; best for large RoIs, whose bins share few cells;
- *rows first*: for each bin row, first combine its row taps into one
  interpolated row over the columns the RoI touches, then each bin of that
  row combines its column taps from it; best for small RoIs, whose
  neighbouring bins read the same cells.

Channels go in blocks of ``UNROLL`` 64-byte vectors (128 float32 or 64
float64 channels): a bin's block of sums lives in registers while its taps
stream past (``_simd.vmuladd``), and is stored once. A narrower rest goes
four, two, then one vector per pass over the taps; its last channels go as
the vector that ends at the last channel where the sums are stored (the
gathers), else one at a time (``_simd.muladd``, fused alike: a channel has
the same bits whichever piece holds it).

Forward: an NCHW map is first copied into a channel-blocked layout
(:func:`channel_blocks`): each block of channels of an image is one compact
channels-last ``(H, W, block)`` array; a channels-last map is read in place.
Runs of RoIs (``bounds``, balanced by tap count) go to threads. Into an NCHW
output a run walks its RoIs once per channel block, so the block of the map
it reads stays in L2; each channel block of a RoI is summed into a small
``(bins, block)`` tile in L1, transposed (``_simd.transpose_tile``) into a
staging buffer and copied to the caller's ``(K, C, PH * PW)`` output as whole
aligned cache lines. Into a channels-last output a run takes its RoIs one at
a time and sums each bin's channel blocks one after the other, straight into
the RoI's ``(PH * PW, C)`` output: a channels-last cell's channels are then
read together, and the output is written once, with no staging copy (on the
``maskrcnn`` workload the kernel went from 48 to 34 ms with these two
changes, ``docs/benchmarks.md``). On a map larger than a quarter of the L3
(``_machine.sweeps_map_rows``) the work goes by pieces of bin rows instead
of by RoI, the pieces of all RoIs in the order of the first map row each
reads, strip by strip of the map (``_parallel.row_sweep``): a sweep down
each strip of each image, in which the few map rows being read serve every
RoI that crosses them while they are in cache (34 to 24 ms on ``maskrcnn``,
whose 56 MB map is larger than the L3; the strips, which keep those rows
in L2, 23.3 to 22.3). An NCHW output is swept into the same way: written
channels-last in its own memory, then each RoI turned in place
(``_tiles.channels_first_in_place``; ``maskrcnn`` NumPy forward 72 to 57 ms).

16-bit maps (float16, bfloat16) are computed in float32 from their bits
(``_simd.HALF_BITS``): :func:`forward_half` reads a channels-last map (the map
itself, or a 16-bit copy) and rounds each bin once as it stores it into a
channels-last output (into NCHW through the same turn as the sweep's); the
backward reads and writes 16-bit gradients the same way. The bits
are those of the float32 kernels on a widened copy, rounded after (maskrcnn in
bfloat16, channels-last: 31 to 12 ms).

Box gradient (:func:`boxes_backward`): runs of RoIs go to threads, each RoI
reduces its own gradient over its bins and channels (no atomics, the same
order for any thread count). Per bin it first takes the dot product of the
bin's output gradient with every cell the bin's samples touch (channels
contiguous: a channels-last copy of the map), then combines those with the
separable per-axis weights of the samples and of their position
derivatives (:func:`_axis_grad_weights`).

Backward: threads take (image, channel block) pairs, so each owns the part
of ``grad_input`` it writes: no atomics, and every element sums its
contributions in the same order whatever the thread count (deterministic).
A pair accumulates into a private channels-last ``(H, W, block)`` scratch,
reading each RoI's gradient as a transposed ``(bins, block)`` tile, or in
place when it is channels-last (the next RoI's is prefetched meanwhile), and
finally writes the scratch into the gradient, transposed into ``(N, C, H,
W)`` or copied into channels-last. When that scratch is larger than a
quarter of the L3 (28 MB on ``maskrcnn``) the pairs are cut further into
bands of whole map rows, each task's scratch an equal share of a quarter of
the L3 (``_machine.scratch_band``: 33 rows, 4.5 MiB on ``maskrcnn`` here): a
task visits the RoIs whose taps reach its band, in the same order, reads
the gradient of only the bin rows that do, and sums only the row taps that
land in the band, so the sums are the same bits (``maskrcnn`` NumPy
backward 65-68 to 49-50 ms channels-last, 74-78 to 62-63 NCHW).
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from .. import _checks
from ._machine import avx512, scratch_band, sweep_strip, sweeps_map_rows
from ._parallel import WHOLE_ROIS, BalancedRuns, launch, launch_threads, row_sweep, share, sweep_band, threads
from ._simd import (
    FALSE,
    ONE,
    TRUE,
    VECTOR_BYTES,
    ZERO,
    borrowed,
    empty_lines,
    load,
    muladd,
    prefetch,
    scratch_lines,
    store,
    szero,
    transpose_tile,
    vector_lanes,
    vload,
    vmuladd,
    vmuladd_lanes,
    vstore,
    vsum,
    vzeros,
)
from ._tiles import (
    bins_order,
    channels_first_in_place,
    channels_last_copy,
    copy_run,
    load_rows,
    load_tile,
    memory_order,
    store_rows,
    store_tile_lines,
)
from .geometry import _grid, _sample_position, _window, bilinear_corners, roi_align_extent, roi_align_taps

_FASTMATH = {"contract"}  # allow fused multiply-add; no reassociation

# ``path`` argument of the kernels: choose per RoI, or force one way (tests).
AUTO, DIRECT, ROWS_FIRST = 0, 1, 2

# Vectors summed together per pass over a bin's taps, the channel block: 8
# accumulators (and, in the backward, 8 gradient vectors). They take a quarter
# of AVX-512's registers but all 16 of AVX2's. A 4-vector block on an AVX2-only
# AMD EPYC took up to 8% off roi_align's maskrcnn calls but added 5 to 22% to
# roi_align_rotated (which places its samples once per block) and to the
# channels-last prroi_pool (docs/benchmarks.md, "AMD EPYC"), so it stays 8.
# The helpers below write the eight-vector pass out and take it only when ``cw``
# is eight vectors wide, so that a smaller block would stay correct.
UNROLL = 8
# A gather over at most this many taps takes an eight-vector block as two four-vector passes: on
# AVX2 the eight accumulators would take all 16 (ymm) registers and spill. Only short tap lists
# (16 taps of a 128-channel block are 8 KB, in L1), so that the second pass finds the cells in
# L1; on AVX-512 (8 of 32 registers) never. Same sums, same order: the same bits.
TWO_PASSES_UP_TO = 0 if avx512() else 16


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


@numba.njit(cache=True, nogil=True)
def channel_blocks(x, cell_step, channel_step, xb, part, parts):
    """``xb`` <- the feature map in the channel-blocked layout :func:`forward` reads.

    ``x`` is a flat C-contiguous array holding ``xb.shape == (N, C, H, W)``
    with element ``(n, c, h, w)`` at ``n * C * H * W + c * channel_step +
    (h * W + w) * cell_step``: ``(H * W, 1)`` for ``(N, C, H, W)``,
    ``(C, 1)`` swapped for ``(N, H, W, C)``. In the blocked layout the
    channels ``[c0, c0 + cw)`` of a block (``UNROLL`` vectors wide; the last
    may be narrower) of image ``n`` form one ``(H, W, cw)`` channels-last
    array at ``(n * C + c0) * H * W``: a RoI's block of channels then reads
    one compact region, and each cell's channels are contiguous.
    """
    x, xb = borrowed((x, xb))
    images, channels, height, width = xb.shape
    xbf = xb.reshape(-1)
    plane = height * width
    block = UNROLL * vector_lanes(xb)
    nblocks = (channels + block - 1) // block
    for item in share(images * nblocks, part, parts):
        n = item // nblocks
        c0 = (item % nblocks) * block
        cw = min(block, channels - c0)
        src = n * channels * plane + c0 * channel_step
        dst = (n * channels + c0) * plane
        if cell_step == 1:
            transpose_tile(x, src, channel_step, cw, plane, xbf, dst, cw)
        else:
            for cell in range(plane):
                copy_run(x, src + cell * cell_step, xbf, dst + cell * cw, cw)


@numba.njit(cache=True, nogil=True)
def forward(xb, x_nhwc, copy_map, batch, hptr, hidx, hwt, wptr, widx, wwt, bounds, items, path, out, nhwc, part, parts):
    """``out (K, C, PH * PW)`` (or, ``nhwc``, ``(K, PH * PW, C)``) <- RoIAlign of ``xb`` from the taps.

    ``xb`` is the map in the layout of :func:`channel_blocks` (shape ``(N, C, H, W)``), or, with
    ``x_nhwc``, the channels-last map ``(N, H, W, C)`` read in place, or, with ``copy_map``, a
    C-contiguous ``(N, C, H, W)`` map that this call copies into that layout first (for a
    launch on one thread: each part would copy it all). ``out`` must be C-contiguous.
    Into NCHW, ``bounds`` splits the RoIs into runs; into channels-last it splits
    ``items``, rows ``(RoI, ph_lo, ph_hi, pw_lo, pw_hi)`` of bins to sum (pieces of bin
    rows, ``_parallel.row_sweep``), or, where there are none (``_parallel.WHOLE_ROIS``),
    the RoIs, each taken whole.
    """
    xb, batch, hptr, hidx, hwt, wptr, widx, wwt, bounds, items, out = borrowed(
        (xb, batch, hptr, hidx, hwt, wptr, widx, wwt, bounds, items, out)
    )
    if x_nhwc:
        _, height, width, channels = xb.shape
    else:
        _, channels, height, width = xb.shape
    xf = xb.reshape(-1)
    if copy_map:
        # the small call's map copy in the kernel's own call: one compiled call fewer, and no
        # NumPy allocation (each a step of 25 to 70 us after an idle spell, docs/benchmarks.md)
        xf = scratch_lines(xb.size, xb)
        channel_blocks(xb.reshape(-1), ONE, height * width, xf.reshape(xb.shape), ZERO, ONE)
    outf = out.reshape(-1)
    nbins = out.shape[1] if nhwc else out.shape[2]
    pooled_h = hptr.shape[1] - 1
    pooled_w = wptr.shape[1] - 1
    block = UNROLL * vector_lanes(xb)
    nblocks = (channels + block - 1) // block
    for run in share(bounds.shape[0] - 1, part, parts):
        lo, hi = bounds[run], bounds[run + 1]
        if nhwc:
            _forward_pieces(
                xf, x_nhwc, channels, height, width, batch, hptr, hidx, hwt, wptr, widx, wwt, items, lo, hi, path, outf
            )
        else:
            # Channel blocks outermost: the run's RoIs then read one block of the map
            # (H * W * block values, L2-sized) before moving to the next; each RoI's
            # block is summed into a (bins, block) tile and transposed into the output.
            tile = scratch_lines(nbins * block, xb)
            stage = scratch_lines(nbins * block, xb)
            rows = scratch_lines(width * block, xb)
            for q in range(nblocks):
                c0 = q * block
                cw = min(block, channels - c0)
                for k in range(lo, hi):
                    _forward_bins(
                        xf, x_nhwc, batch[k], channels, c0, c0 + cw, height, width,
                        hptr[k], hidx, hwt, wptr[k], widx, wwt, path, rows, tile, ZERO, block, ZERO, pooled_h, ZERO, pooled_w,
                    )  # fmt: skip
                    store_tile_lines(tile, block, nbins, cw, stage, outf, k, channels, c0, FALSE)


@numba.njit(cache=True, nogil=True)
def forward_half(x, batch, hptr, hidx, hwt, wptr, widx, wwt, bounds, items, path, out, part, parts):
    """:func:`forward` of a channels-last half-precision map ``x (N, H, W, C)`` into a channels-last
    output ``out (K, PH * PW, C)`` of the same format, both as their bits (``_simd.HALF_BITS``:
    int16 for bfloat16, uint16 for float16), summed in float32 as a float32 map's would be.

    Each cell is widened (exactly) as it is read and each bin rounded once as it is stored, so the
    result has the bits of widening the map, the float32 kernel, and rounding its output, without
    the passes over the map and the output that takes (nor their memory).
    """
    x, batch, hptr, hidx, hwt, wptr, widx, wwt, bounds, items, out = borrowed(
        (x, batch, hptr, hidx, hwt, wptr, widx, wwt, bounds, items, out)
    )
    _, height, width, channels = x.shape
    xf, outf = x.reshape(-1), out.reshape(-1)
    for run in share(bounds.shape[0] - 1, part, parts):
        _forward_pieces(
            xf, TRUE, channels, height, width, batch, hptr, hidx, hwt, wptr, widx, wwt, items,
            bounds[run], bounds[run + 1], path, outf,
        )  # fmt: skip


@numba.njit(cache=True, nogil=True, inline="always")
def _forward_pieces(
    xf, x_nhwc, channels, height, width, batch, hptr, hidx, hwt, wptr, widx, wwt, items, lo, hi, path, outf
):
    """Runs ``[lo, hi)`` of :func:`forward` into a channels-last output ``outf``.

    Whole RoIs, or on a large map pieces of bin rows in the order of the map rows
    they read (a sweep down each strip of each image, sharing the rows being read
    between the RoIs that cross them), each summed straight into its (bins, C)
    output, a bin's channel blocks one after the other: a channels-last cell's
    channels are read whole.
    """
    pooled_h, pooled_w = hptr.shape[1] - 1, wptr.shape[1] - 1
    nbins = pooled_h * pooled_w
    rows = scratch_lines(width * channels, hwt)  # interpolated rows, in the compute dtype (the taps')
    whole = items.shape[0] == 0  # WHOLE_ROIS: the run is of RoIs, each taken whole
    for i in range(lo, hi):
        k = i if whole else items[i, 0]
        ph_lo, ph_hi = (ZERO, pooled_h) if whole else (items[i, 1], items[i, 2])
        pw_lo, pw_hi = (ZERO, pooled_w) if whole else (items[i, 3], items[i, 4])
        _forward_bins(
            xf, x_nhwc, batch[k], channels, ZERO, channels, height, width, hptr[k], hidx, hwt,
            wptr[k], widx, wwt, path, rows, outf, k * nbins * channels, channels, ph_lo, ph_hi, pw_lo, pw_hi,
        )  # fmt: skip


@numba.njit(cache=True, nogil=True, inline="always")
def map_origin(x_nhwc, n, channels, height, width, c_lo):
    """``(origin, hop, step)``: channel ``c0 + c`` of cell ``i`` of image ``n`` is
    ``xf[origin + (c0 - c_lo) * hop + i * step + c]`` for a block of channels starting at ``c0``.

    In the channels-last map ``step`` is ``C``; in the channel-blocked one
    (:func:`channel_blocks`) it is the block's width, returned as 0 for the
    caller to fill in (``step or cw``).
    """
    if x_nhwc:
        return n * height * width * channels + c_lo, 1, channels
    return (n * channels + c_lo) * height * width, height * width, 0


@numba.njit(cache=True, nogil=True)
def _forward_bins(
    xf, x_nhwc, n, channels, c_lo, c_hi, height, width, hptr, hidx, hwt, wptr, widx, wwt, path, rows, dst, base, stride,
    ph_lo, ph_hi, pw_lo, pw_hi,
):  # fmt: skip
    """``dst[base + b * stride + c - c_lo]`` <- bin ``b`` of channel ``c_lo <= c < c_hi`` of one RoI
    (taps ``hptr``, ``wptr``) on image ``n`` of ``xf`` (channel-blocked, or channels-last if
    ``x_nhwc``), for the bins ``(ph, pw)`` with ``ph_lo <= ph < ph_hi`` and ``pw_lo <= pw < pw_hi``,
    the cheaper way round for the RoI (whichever bins are asked for: the sums are the same);
    ``rows (>= width * (c_hi - c_lo))``: scratch.

    Each bin's channels go a register block at a time, one block after the
    other: a channels-last cell's channels are read together while in L1.
    """
    block = UNROLL * vector_lanes(xf)
    origin, hop, step = map_origin(x_nhwc, n, channels, height, width, c_lo)
    pooled_w = wptr.shape[0] - 1
    if _rows_first_pays(hptr, wptr, _column_span(wptr, widx)[1], path):
        # for each bin row, its row taps first, into one interpolated row over the
        # columns the bins read (rows[u * rw + c] holds column cmin + u), then its bins from it
        cmin, span = _column_span(wptr[pw_lo : pw_hi + 1], widx)
        rw = c_hi - c_lo
        for ph in range(ph_lo, ph_hi):
            for u in range(span):
                for c0 in range(c_lo, c_hi, block):
                    cw = min(block, c_hi - c0)
                    o, cs = origin + (c0 - c_lo) * hop, step or cw
                    _gather(
                        xf,
                        o + (cmin + u) * cs,
                        width * cs,
                        hidx,
                        hwt,
                        hptr[ph],
                        hptr[ph + 1],
                        rows,
                        u * rw + c0 - c_lo,
                        cw,
                    )
            for pw in range(pw_lo, pw_hi):
                t = base + (ph * pooled_w + pw) * stride - c_lo
                for c0 in range(c_lo, c_hi, block):
                    cw = min(block, c_hi - c0)
                    _gather(rows, (c0 - c_lo) - cmin * rw, rw, widx, wwt, wptr[pw], wptr[pw + 1], dst, t + c0, cw)
    else:
        for ph in range(ph_lo, ph_hi):
            for pw in range(pw_lo, pw_hi):
                t = base + (ph * pooled_w + pw) * stride - c_lo
                for c0 in range(c_lo, c_hi, block):
                    cw = min(block, c_hi - c0)
                    o, cs = origin + (c0 - c_lo) * hop, step or cw
                    _gather2(
                        xf,
                        o,
                        width * cs,
                        hidx,
                        hwt,
                        hptr[ph],
                        hptr[ph + 1],
                        cs,
                        widx,
                        wwt,
                        wptr[pw],
                        wptr[pw + 1],
                        dst,
                        t + c0,
                        cw,
                    )


@numba.njit(cache=True, nogil=True)
def backward(
    grad_out,
    go_nhwc,
    batch,
    hptr,
    hidx,
    hwt,
    wptr,
    widx,
    wwt,
    order,
    starts,
    block,
    band,
    path,
    grad_in,
    gi_nhwc,
    part,
    parts,
):
    """``grad_in (N, C, H, W)`` <- the adjoint of :func:`forward` applied to ``grad_out (K, C, PH * PW)``.

    With ``go_nhwc`` ``grad_out`` is ``(K, PH * PW, C)``; with ``gi_nhwc``
    ``grad_in`` is ``(N, H, W, C)``. Every element of ``grad_in`` is
    written. The RoIs of image ``n`` are ``order[starts[n]:starts[n + 1]]``,
    ascending. (image, ``block`` channels, band of ``band`` map rows)
    triples are the unit of parallel work; ``block`` must be a multiple of the
    vector lanes. A task sums only the taps that land in its band, in the
    order of the whole map's sums, so the bands change no bit. Both arrays must
    be C-contiguous.
    """
    grad_out, batch, hptr, hidx, hwt, wptr, widx, wwt, order, starts, grad_in = borrowed(
        (grad_out, batch, hptr, hidx, hwt, wptr, widx, wwt, order, starts, grad_in)
    )
    nbins, channels = grad_out.shape[1:] if go_nhwc else grad_out.shape[:0:-1]
    images, height, width = grad_in.shape[:3] if gi_nhwc else (grad_in.shape[0], grad_in.shape[2], grad_in.shape[3])
    gof = grad_out.reshape(-1)
    gif = grad_in.reshape(-1)
    nblocks = (channels + block - 1) // block
    bands = (height + band - 1) // band
    plane = height * width
    for item in share(images * nblocks * bands, part, parts):
        n = item // (nblocks * bands)
        c0 = (item // bands % nblocks) * block
        cw = min(block, channels - c0)
        h0 = item % bands * band
        h1 = min(h0 + band, height)
        # in the compute dtype (the taps'): the band's (rows, W, block), channels-last, and tiles
        acc = scratch_lines((h1 - h0) * width * block, hwt, True)
        g = scratch_lines(nbins * block, hwt)
        cols = scratch_lines(width * block, hwt)
        # bin b's gradient is read in place from a channels-last grad_out (half-precision bits
        # too), else from a transposed tile g of the bin rows needed, in the compute dtype: two
        # types of array for 16-bit gradients, hence one call each way
        args = (gof, go_nhwc, g, starts[n], starts[n + 1], order, channels, nbins, c0, cw, bands, block, h0, h1)
        taps = (hptr, hidx, hwt, wptr, widx, wwt)
        if go_nhwc:
            _backward_rois(gof, *args, *taps, acc, width, cols, path)
        else:
            _backward_rois(g, *args, *taps, acc, width, cols, path)
        # the band into the gradient: its cells are contiguous there too
        store_rows(acc, ZERO, block, plane, h0 * width, h1 * width, cw, gif, n, channels, c0, gi_nhwc)


@numba.njit(cache=True, nogil=True)
def _backward_rois(
    src, gof, go_nhwc, g, r0, r1, order, channels, nbins, c0, cw, bands, block, h0, h1, hptr, hidx, hwt, wptr, widx,
    wwt, acc, width, cols, path,
):  # fmt: skip
    """The RoIs ``order[r0:r1]`` of one task of :func:`backward` into ``acc``, the gradient read from
    ``src``: ``gof`` in place (``go_nhwc``), else ``g``, loaded with each RoI's bin rows."""
    pooled_w = wptr.shape[1] - 1
    for r in range(r0, r1):
        k = order[r]
        pa, pb = _bins_meeting(hptr[k], hidx, h0, h1)  # the bin rows with taps in the band
        if pa == pb:
            continue
        # While this RoI is summed, the next one's gradient comes in from memory (a
        # hint per bin, so the loads overlap the arithmetic); with one band only.
        ahead = ahead_len = 0
        if r + 1 < r1 and bands == 1:
            ahead = order[r + 1] * channels * nbins + (c0 if go_nhwc else c0 * nbins)
            ahead_len = cw * nbins
        ahead_step = channels if go_nhwc else 0
        if go_nhwc:
            gbase, gstride = k * nbins * channels + c0, channels
        else:
            load_rows(gof, k, channels, c0, nbins, pa * pooled_w, pb * pooled_w, cw, g, block, FALSE)
            gbase, gstride = ZERO, block
        cmin, span = _column_span(wptr[k], widx)
        if _rows_first_pays(hptr[k], wptr[k], span, path):
            _backward_rows_first(
                src, gbase, gstride, cw, hptr[k], hidx, hwt, wptr[k], widx, wwt, acc, h0, h1, width,
                cmin, span, cols, block, gof, ahead, ahead_len, ahead_step,
            )  # fmt: skip
        else:
            _backward_direct(
                src, gbase, gstride, cw, hptr[k], hidx, hwt, wptr[k], widx, wwt, acc, h0, h1, width, block,
                gof, ahead, ahead_len, ahead_step,
            )  # fmt: skip


@numba.njit(cache=True, nogil=True, inline="always")
def _bins_meeting(ptr, idx, lo, hi):
    """``(pa, pb)``: bins ``[pa, pb)`` of ``ptr`` (one RoI's ``(P + 1,)`` offsets into ``idx``,
    ascending within each bin; an inverted aligned box has its bins in descending order) span
    every bin with a tap in ``[lo, hi)``; ``pa == pb`` if none has."""
    pa, pb = ptr.shape[0] - 1, 0
    for p in range(ptr.shape[0] - 1):
        if ptr[p] < ptr[p + 1] and idx[ptr[p]] < hi and idx[ptr[p + 1] - 1] >= lo:
            pa, pb = min(pa, p), p + 1
    return pa, max(pa, pb)


@numba.njit(cache=True, nogil=True, inline="always")
def _taps_within(ptr, idx, p, lo, hi):
    """``(m0, m1)``: the taps of bin ``p`` of ``ptr`` (ascending in ``idx``) that read ``[lo, hi)``."""
    m0, m1 = ptr[p], ptr[p + 1]
    while m0 < m1 and idx[m0] < lo:
        m0 += 1
    while m1 > m0 and idx[m1 - 1] >= hi:
        m1 -= 1
    return m0, m1


@numba.njit(cache=True, nogil=True)
def _backward_direct(
    g, gbase, gstride, cw, hptr, hidx, hwt, wptr, widx, wwt, acc, h0, h1, width, stride, ahead, ahead_start,
    ahead_len, ahead_step,
):  # fmt: skip
    """``acc[((h - h0) * width + w) * stride + c] +=`` the taps of one RoI in map rows ``[h0, h1)``,
    weighted by bin ``b``'s gradient ``g[gbase + b * gstride + c]``, ``c < cw``.

    Prefetches the next RoI's gradient on the way (:func:`_prefetch_part`).
    """
    pooled_h = hptr.shape[0] - 1
    pooled_w = wptr.shape[0] - 1
    for ph in range(pooled_h):
        i0, i1 = _taps_within(hptr, hidx, ph, h0, h1)
        for pw in range(pooled_w):
            _prefetch_part(ahead, ahead_start, ahead_len, ahead_step, ph * pooled_w + pw, pooled_h * pooled_w)
            if i0 < i1:
                _scatter2(
                    g, gbase + (ph * pooled_w + pw) * gstride, acc, -h0 * width * stride, width * stride, hidx, hwt,
                    i0, i1, stride, widx, wwt, wptr[pw], wptr[pw + 1], cw,
                )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _backward_rows_first(
    g, gbase, gstride, cw, hptr, hidx, hwt, wptr, widx, wwt, acc, h0, h1, width, cmin, span, cols, stride,
    ahead, ahead_start, ahead_len, ahead_step,
):  # fmt: skip
    """As :func:`_backward_direct`, gathering each bin row's gradient per column first
    (``cols (>= span * stride)`` is scratch), then spreading it over the row taps."""
    pooled_h = hptr.shape[0] - 1
    pooled_w = wptr.shape[0] - 1
    for ph in range(pooled_h):
        i0, i1 = _taps_within(hptr, hidx, ph, h0, h1)
        if i0 == i1:
            for pw in range(pooled_w):
                _prefetch_part(ahead, ahead_start, ahead_len, ahead_step, ph * pooled_w + pw, pooled_h * pooled_w)
            continue
        cols[: span * stride] = 0
        for pw in range(pooled_w):
            _prefetch_part(ahead, ahead_start, ahead_len, ahead_step, ph * pooled_w + pw, pooled_h * pooled_w)
            # cols[u] gathers column cmin + u
            b = ph * pooled_w + pw
            _scatter(g, gbase + b * gstride, cols, -cmin * stride, stride, widx, wwt, wptr[pw], wptr[pw + 1], cw)
        for u in range(span):
            _scatter(cols, u * stride, acc, (cmin + u - h0 * width) * stride, width * stride, hidx, hwt, i0, i1, cw)


@numba.njit(cache=True, nogil=True, inline="always")
def _prefetch_part(array, start, length, step, part, parts):
    """Prefetch part ``part`` of ``parts`` of a RoI's ``length`` gradient values starting at ``array[start]``.

    ``step`` 0: the values are contiguous, cut into equal parts; else part
    ``p`` is the ``length // parts`` values at ``start + p * step`` (one bin of
    a channels-last gradient).
    """
    if step:
        lo = start + part * step
        hi = lo + length // parts
    else:
        lo = start + length * part // parts
        hi = start + length * (part + 1) // parts
    for i in range(lo, hi, vector_lanes(array)):
        prefetch(array, i)


# ---- weighted sums over taps, a block of channels at a time ----
#
# Offsets are flat indices: tap ``m`` of a list addresses
# ``base + idx[m] * step``, and the channels of a block follow contiguously.
# Each helper takes ``cw <= UNROLL * lanes`` channels: a whole block in
# registers, else four, two, then one vector, then the last channels as the
# vector ending at ``cw`` where the sums are not added to ``dst`` (the
# gathers), else one channel at a time (``muladd``). Every channel sums in the
# same order, fused the same way, whichever piece handles it: the same bits.
# The tap loops count in unsigned integers, so that indexing the tap lists
# needs no negative-index wraparound.


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, inline="always")
def _gather(src, base, step, idx, wt, m0, m1, dst, t, cw, add=False):
    """``dst[t + c] = sum(wt[m] * src[base + idx[m] * step + c] for m in [m0, m1))`` for ``c < cw``;
    with ``add``, the sum starts from ``dst[t + c]`` instead of zero (``roi_align_rotated`` takes
    a bin's taps in chunks)."""
    lanes = vector_lanes(src)
    c = 0
    if cw == 8 * lanes and m1 - m0 > TWO_PASSES_UP_TO:
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = vzeros(src)
        if add:
            a0 = vload(dst, t)
            a1 = vload(dst, t + lanes)
            a2 = vload(dst, t + 2 * lanes)
            a3 = vload(dst, t + 3 * lanes)
            a4 = vload(dst, t + 4 * lanes)
            a5 = vload(dst, t + 5 * lanes)
            a6 = vload(dst, t + 6 * lanes)
            a7 = vload(dst, t + 7 * lanes)
        for m in range(np.uint64(m0), np.uint64(m1)):
            w = wt[m]
            o = base + idx[m] * step
            a0 = vmuladd(a0, w, vload(src, o))
            a1 = vmuladd(a1, w, vload(src, o + lanes))
            a2 = vmuladd(a2, w, vload(src, o + 2 * lanes))
            a3 = vmuladd(a3, w, vload(src, o + 3 * lanes))
            a4 = vmuladd(a4, w, vload(src, o + 4 * lanes))
            a5 = vmuladd(a5, w, vload(src, o + 5 * lanes))
            a6 = vmuladd(a6, w, vload(src, o + 6 * lanes))
            a7 = vmuladd(a7, w, vload(src, o + 7 * lanes))
        vstore(dst, t, a0)
        vstore(dst, t + lanes, a1)
        vstore(dst, t + 2 * lanes, a2)
        vstore(dst, t + 3 * lanes, a3)
        vstore(dst, t + 4 * lanes, a4)
        vstore(dst, t + 5 * lanes, a5)
        vstore(dst, t + 6 * lanes, a6)
        vstore(dst, t + 7 * lanes, a7)
        c = cw
    # a narrower block (or two passes): four vectors, then two, then one per pass over the taps
    while c + 4 * lanes <= cw:
        a0 = a1 = a2 = a3 = vzeros(src)
        if add:
            a0 = vload(dst, t + c)
            a1 = vload(dst, t + c + lanes)
            a2 = vload(dst, t + c + 2 * lanes)
            a3 = vload(dst, t + c + 3 * lanes)
        for m in range(np.uint64(m0), np.uint64(m1)):
            w = wt[m]
            o = base + idx[m] * step + c
            a0 = vmuladd(a0, w, vload(src, o))
            a1 = vmuladd(a1, w, vload(src, o + lanes))
            a2 = vmuladd(a2, w, vload(src, o + 2 * lanes))
            a3 = vmuladd(a3, w, vload(src, o + 3 * lanes))
        vstore(dst, t + c, a0)
        vstore(dst, t + c + lanes, a1)
        vstore(dst, t + c + 2 * lanes, a2)
        vstore(dst, t + c + 3 * lanes, a3)
        c += 4 * lanes
    if c + 2 * lanes <= cw:
        a0 = a1 = vzeros(src)
        if add:
            a0 = vload(dst, t + c)
            a1 = vload(dst, t + c + lanes)
        for m in range(np.uint64(m0), np.uint64(m1)):
            w = wt[m]
            o = base + idx[m] * step + c
            a0 = vmuladd(a0, w, vload(src, o))
            a1 = vmuladd(a1, w, vload(src, o + lanes))
        vstore(dst, t + c, a0)
        vstore(dst, t + c + lanes, a1)
        c += 2 * lanes
    # one vector, then (unless adding to dst) the last channels as the vector that ends at cw,
    # overlapping the one before: its channels get the same sums, the same bits, again
    while c + lanes <= cw or (c < cw and lanes <= cw and not add):
        c = min(c, cw - lanes)
        a = vload(dst, t + c) if add else vzeros(src)
        for m in range(np.uint64(m0), np.uint64(m1)):
            a = vmuladd(a, wt[m], vload(src, base + idx[m] * step + c))
        vstore(dst, t + c, a)
        c += lanes
    for cc in range(c, cw):
        s = load(dst, t + cc) if add else szero(dst)
        for m in range(np.uint64(m0), np.uint64(m1)):
            s = muladd(s, wt[m], load(src, base + idx[m] * step + cc))
        store(dst, t + cc, s)


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, inline="always")
def _gather2(src, base, step_i, idx_i, wt_i, i0, i1, step_j, idx_j, wt_j, j0, j1, dst, t, cw):
    """``dst[t + c] = sum(wt_i[i] * wt_j[j] * src[base + idx_i[i] * step_i + idx_j[j] * step_j + c])``
    over ``i in [i0, i1)`` then ``j in [j0, j1)``, for ``c < cw``."""
    lanes = vector_lanes(src)
    c = 0
    if cw == 8 * lanes and (i1 - i0) * (j1 - j0) > TWO_PASSES_UP_TO:
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = vzeros(src)
        for i in range(np.uint64(i0), np.uint64(i1)):
            oi = base + idx_i[i] * step_i
            wi = wt_i[i]
            for j in range(np.uint64(j0), np.uint64(j1)):
                w = wi * wt_j[j]
                o = oi + idx_j[j] * step_j
                a0 = vmuladd(a0, w, vload(src, o))
                a1 = vmuladd(a1, w, vload(src, o + lanes))
                a2 = vmuladd(a2, w, vload(src, o + 2 * lanes))
                a3 = vmuladd(a3, w, vload(src, o + 3 * lanes))
                a4 = vmuladd(a4, w, vload(src, o + 4 * lanes))
                a5 = vmuladd(a5, w, vload(src, o + 5 * lanes))
                a6 = vmuladd(a6, w, vload(src, o + 6 * lanes))
                a7 = vmuladd(a7, w, vload(src, o + 7 * lanes))
        vstore(dst, t, a0)
        vstore(dst, t + lanes, a1)
        vstore(dst, t + 2 * lanes, a2)
        vstore(dst, t + 3 * lanes, a3)
        vstore(dst, t + 4 * lanes, a4)
        vstore(dst, t + 5 * lanes, a5)
        vstore(dst, t + 6 * lanes, a6)
        vstore(dst, t + 7 * lanes, a7)
        c = cw
    # a narrower block (or two passes): four vectors, then two, then one per pass over the taps
    while c + 4 * lanes <= cw:
        a0 = a1 = a2 = a3 = vzeros(src)
        for i in range(np.uint64(i0), np.uint64(i1)):
            oi = base + idx_i[i] * step_i + c
            wi = wt_i[i]
            for j in range(np.uint64(j0), np.uint64(j1)):
                w = wi * wt_j[j]
                o = oi + idx_j[j] * step_j
                a0 = vmuladd(a0, w, vload(src, o))
                a1 = vmuladd(a1, w, vload(src, o + lanes))
                a2 = vmuladd(a2, w, vload(src, o + 2 * lanes))
                a3 = vmuladd(a3, w, vload(src, o + 3 * lanes))
        vstore(dst, t + c, a0)
        vstore(dst, t + c + lanes, a1)
        vstore(dst, t + c + 2 * lanes, a2)
        vstore(dst, t + c + 3 * lanes, a3)
        c += 4 * lanes
    if c + 2 * lanes <= cw:
        a0 = a1 = vzeros(src)
        for i in range(np.uint64(i0), np.uint64(i1)):
            oi = base + idx_i[i] * step_i + c
            wi = wt_i[i]
            for j in range(np.uint64(j0), np.uint64(j1)):
                w = wi * wt_j[j]
                o = oi + idx_j[j] * step_j
                a0 = vmuladd(a0, w, vload(src, o))
                a1 = vmuladd(a1, w, vload(src, o + lanes))
        vstore(dst, t + c, a0)
        vstore(dst, t + c + lanes, a1)
        c += 2 * lanes
    # one vector, then the last channels as the vector that ends at cw (as in _gather)
    while c < cw and lanes <= cw:
        c = min(c, cw - lanes)
        a = vzeros(src)
        for i in range(np.uint64(i0), np.uint64(i1)):
            oi = base + idx_i[i] * step_i + c
            wi = wt_i[i]
            for j in range(np.uint64(j0), np.uint64(j1)):
                a = vmuladd(a, wi * wt_j[j], vload(src, oi + idx_j[j] * step_j))
        vstore(dst, t + c, a)
        c += lanes
    for cc in range(c, cw):
        s = szero(dst)
        for i in range(np.uint64(i0), np.uint64(i1)):
            oi = base + idx_i[i] * step_i + cc
            wi = wt_i[i]
            for j in range(np.uint64(j0), np.uint64(j1)):
                s = muladd(s, wi * wt_j[j], load(src, oi + idx_j[j] * step_j))
        store(dst, t + cc, s)


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, inline="always")
def _scatter(src, t, dst, base, step, idx, wt, m0, m1, cw):
    """``dst[base + idx[m] * step + c] += wt[m] * src[t + c]`` for ``m in [m0, m1)``, ``c < cw``."""
    lanes = vector_lanes(src)
    c = 0
    if cw == 8 * lanes:
        v0 = vload(src, t)
        v1 = vload(src, t + lanes)
        v2 = vload(src, t + 2 * lanes)
        v3 = vload(src, t + 3 * lanes)
        v4 = vload(src, t + 4 * lanes)
        v5 = vload(src, t + 5 * lanes)
        v6 = vload(src, t + 6 * lanes)
        v7 = vload(src, t + 7 * lanes)
        for m in range(np.uint64(m0), np.uint64(m1)):
            w = wt[m]
            o = base + idx[m] * step
            vstore(dst, o, vmuladd(vload(dst, o), w, v0))
            vstore(dst, o + lanes, vmuladd(vload(dst, o + lanes), w, v1))
            vstore(dst, o + 2 * lanes, vmuladd(vload(dst, o + 2 * lanes), w, v2))
            vstore(dst, o + 3 * lanes, vmuladd(vload(dst, o + 3 * lanes), w, v3))
            vstore(dst, o + 4 * lanes, vmuladd(vload(dst, o + 4 * lanes), w, v4))
            vstore(dst, o + 5 * lanes, vmuladd(vload(dst, o + 5 * lanes), w, v5))
            vstore(dst, o + 6 * lanes, vmuladd(vload(dst, o + 6 * lanes), w, v6))
            vstore(dst, o + 7 * lanes, vmuladd(vload(dst, o + 7 * lanes), w, v7))
        c = cw
    # a narrower block: four vectors, then two, then one per pass over the taps
    if c + 4 * lanes <= cw:
        v0 = vload(src, t + c)
        v1 = vload(src, t + c + lanes)
        v2 = vload(src, t + c + 2 * lanes)
        v3 = vload(src, t + c + 3 * lanes)
        for m in range(np.uint64(m0), np.uint64(m1)):
            w = wt[m]
            o = base + idx[m] * step + c
            vstore(dst, o, vmuladd(vload(dst, o), w, v0))
            vstore(dst, o + lanes, vmuladd(vload(dst, o + lanes), w, v1))
            vstore(dst, o + 2 * lanes, vmuladd(vload(dst, o + 2 * lanes), w, v2))
            vstore(dst, o + 3 * lanes, vmuladd(vload(dst, o + 3 * lanes), w, v3))
        c += 4 * lanes
    if c + 2 * lanes <= cw:
        v0 = vload(src, t + c)
        v1 = vload(src, t + c + lanes)
        for m in range(np.uint64(m0), np.uint64(m1)):
            w = wt[m]
            o = base + idx[m] * step + c
            vstore(dst, o, vmuladd(vload(dst, o), w, v0))
            vstore(dst, o + lanes, vmuladd(vload(dst, o + lanes), w, v1))
        c += 2 * lanes
    if c + lanes <= cw:
        v = vload(src, t + c)
        for m in range(np.uint64(m0), np.uint64(m1)):
            o = base + idx[m] * step + c
            vstore(dst, o, vmuladd(vload(dst, o), wt[m], v))
        c += lanes
    for cc in range(c, cw):
        v = load(src, t + cc)
        for m in range(np.uint64(m0), np.uint64(m1)):
            o = base + idx[m] * step + cc
            dst[o] = muladd(dst[o], wt[m], v)


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, inline="always")
def _scatter2(src, t, dst, base, step_i, idx_i, wt_i, i0, i1, step_j, idx_j, wt_j, j0, j1, cw):
    """``dst[base + idx_i[i] * step_i + idx_j[j] * step_j + c] += wt_i[i] * wt_j[j] * src[t + c]``
    over ``i in [i0, i1)`` then ``j in [j0, j1)``, for ``c < cw``."""
    lanes = vector_lanes(src)
    c = 0
    if cw == 8 * lanes:
        v0 = vload(src, t)
        v1 = vload(src, t + lanes)
        v2 = vload(src, t + 2 * lanes)
        v3 = vload(src, t + 3 * lanes)
        v4 = vload(src, t + 4 * lanes)
        v5 = vload(src, t + 5 * lanes)
        v6 = vload(src, t + 6 * lanes)
        v7 = vload(src, t + 7 * lanes)
        for i in range(np.uint64(i0), np.uint64(i1)):
            oi = base + idx_i[i] * step_i
            wi = wt_i[i]
            for j in range(np.uint64(j0), np.uint64(j1)):
                w = wi * wt_j[j]
                o = oi + idx_j[j] * step_j
                vstore(dst, o, vmuladd(vload(dst, o), w, v0))
                vstore(dst, o + lanes, vmuladd(vload(dst, o + lanes), w, v1))
                vstore(dst, o + 2 * lanes, vmuladd(vload(dst, o + 2 * lanes), w, v2))
                vstore(dst, o + 3 * lanes, vmuladd(vload(dst, o + 3 * lanes), w, v3))
                vstore(dst, o + 4 * lanes, vmuladd(vload(dst, o + 4 * lanes), w, v4))
                vstore(dst, o + 5 * lanes, vmuladd(vload(dst, o + 5 * lanes), w, v5))
                vstore(dst, o + 6 * lanes, vmuladd(vload(dst, o + 6 * lanes), w, v6))
                vstore(dst, o + 7 * lanes, vmuladd(vload(dst, o + 7 * lanes), w, v7))
        c = cw
    # a narrower block: four vectors, then two, then one per pass over the taps
    if c + 4 * lanes <= cw:
        v0 = vload(src, t + c)
        v1 = vload(src, t + c + lanes)
        v2 = vload(src, t + c + 2 * lanes)
        v3 = vload(src, t + c + 3 * lanes)
        for i in range(np.uint64(i0), np.uint64(i1)):
            oi = base + idx_i[i] * step_i + c
            wi = wt_i[i]
            for j in range(np.uint64(j0), np.uint64(j1)):
                w = wi * wt_j[j]
                o = oi + idx_j[j] * step_j
                vstore(dst, o, vmuladd(vload(dst, o), w, v0))
                vstore(dst, o + lanes, vmuladd(vload(dst, o + lanes), w, v1))
                vstore(dst, o + 2 * lanes, vmuladd(vload(dst, o + 2 * lanes), w, v2))
                vstore(dst, o + 3 * lanes, vmuladd(vload(dst, o + 3 * lanes), w, v3))
        c += 4 * lanes
    if c + 2 * lanes <= cw:
        v0 = vload(src, t + c)
        v1 = vload(src, t + c + lanes)
        for i in range(np.uint64(i0), np.uint64(i1)):
            oi = base + idx_i[i] * step_i + c
            wi = wt_i[i]
            for j in range(np.uint64(j0), np.uint64(j1)):
                w = wi * wt_j[j]
                o = oi + idx_j[j] * step_j
                vstore(dst, o, vmuladd(vload(dst, o), w, v0))
                vstore(dst, o + lanes, vmuladd(vload(dst, o + lanes), w, v1))
        c += 2 * lanes
    if c + lanes <= cw:
        v = vload(src, t + c)
        for i in range(np.uint64(i0), np.uint64(i1)):
            oi = base + idx_i[i] * step_i + c
            wi = wt_i[i]
            for j in range(np.uint64(j0), np.uint64(j1)):
                o = oi + idx_j[j] * step_j
                vstore(dst, o, vmuladd(vload(dst, o), wi * wt_j[j], v))
        c += lanes
    for cc in range(c, cw):
        v = load(src, t + cc)
        for i in range(np.uint64(i0), np.uint64(i1)):
            oi = base + idx_i[i] * step_i + cc
            wi = wt_i[i]
            for j in range(np.uint64(j0), np.uint64(j1)):
                o = oi + idx_j[j] * step_j
                dst[o] = muladd(dst[o], wi * wt_j[j], v)


# ---- launchers: the geometry of one call, and the launch of its kernels on every thread ----

# How the kernels evaluate each RoI's taps: ``AUTO`` picks the cheaper of
# ``DIRECT`` and ``ROWS_FIRST`` per RoI; the tests force each in turn.
TAP_EVALUATION = AUTO


class RoIAlignTaps(BalancedRuns):
    """The separable bilinear taps of every RoI of one call and the split of the RoIs into balanced runs.

    ``rois (K, 5)`` are validated (``_checks.rois_array``) and in the compute
    dtype; the feature map is ``height x width``. Raises ``ValueError`` for a
    box whose scaled corners or extent overflow the compute dtype.
    :attr:`arrays` (``geometry.roi_align_taps``) and :meth:`runs` are what the
    kernels take.
    """

    def __init__(self, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, height, width):
        self.pooled_h, self.pooled_w = pooled_h, pooled_w
        self.num_rois = rois.shape[0]
        _checks.geometry_limits(pooled_h, pooled_w, sampling_ratio)
        scale = _checks.scale_in_dtype(spatial_scale, rois.dtype)
        # the taps' pass also finds a box that overflows (_checks.scaled_boxes_finite's rule)
        (self.batch, self.hptr, self.hidx, self.hwt, self.wptr, self.widx, self.wwt, self.cost, overflow) = (
            roi_align_taps(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, height, width)
        )
        _checks.overflowing_box(rois, overflow, scale)

    @property
    def arrays(self):
        return self.batch, self.hptr, self.hidx, self.hwt, self.wptr, self.widx, self.wwt


def blocked_map(x) -> np.ndarray:
    """``x (N, C, H, W)`` (compute dtype, any strides) as a new array in the channel-blocked
    layout the kernels read (:func:`channel_blocks`), copied from ``(N, C, H, W)`` or
    channels-last memory directly, otherwise from a C-contiguous copy."""
    xb = empty_lines(x.shape, x.dtype)
    if x.flags.c_contiguous:
        flat, cell_step, channel_step = x.reshape(-1), 1, x.shape[2] * x.shape[3]
    elif x.transpose(0, 2, 3, 1).flags.c_contiguous:
        flat, cell_step, channel_step = x.transpose(0, 2, 3, 1).reshape(-1), x.shape[1], 1
    else:
        flat, cell_step, channel_step = np.ascontiguousarray(x).reshape(-1), 1, x.shape[2] * x.shape[3]
    block = UNROLL * (VECTOR_BYTES // xb.itemsize)
    tasks = x.shape[0] * -(-x.shape[1] // block)  # (image, channel block)
    launch(channel_blocks, flat, cell_step, channel_step, xb, values=xb.size, tasks=tasks)
    return xb


def rois_by_image(batch: np.ndarray, images: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, starts)``: the RoIs of image ``n`` are ``order[starts[n]:starts[n + 1]]``, ascending,
    so that each backward task sums one image's RoIs, in a fixed order, into its own scratch."""
    order = np.argsort(batch, kind="stable")
    return order, np.searchsorted(batch[order], np.arange(images + 1)).astype(np.int64)


def launch_forward(x, taps: RoIAlignTaps, out) -> None:
    """``out (K, C, PH, PW)`` <- RoIAlign of ``x (N, C, H, W)`` (compute dtype, any strides),
    read in place when channels-last, else through :func:`blocked_map`. ``out`` is C-contiguous in NCHW or channels-last order
    (``_tiles.memory_order``); the kernel writes it in place, in its own order.

    A half-precision map may come as its bits (``_tiles.reads_half``), with ``out`` of the same
    bits. It is read in 16 bits by :func:`forward_half`, in place when channels-last, else from
    a channels-last copy (16-bit too), into a channels-last output, or an NCHW one written
    channels-last in its own memory and then turned in place: one compiled kernel for every
    memory format. The bits are those of computing from a float32 copy of the map and rounding
    the float32 output."""
    if not out.size:
        return
    view, nhwc = bins_order(out)
    if x.itemsize == 2:
        _launch_forward_half(x, taps, out, view, nhwc)
        return
    # A channels-last map is read in place: its blocked copy costs more than it saves
    # (kernels.md; on the maskrcnn workload the copy alone moves 56 MB each way).
    x_nhwc = x.transpose(0, 2, 3, 1).flags.c_contiguous
    values = x.size + view.size
    bounds, items = _forward_items(x, taps, nhwc, values)
    # A small NCHW map that one thread reads is copied by the kernel's own call (copy_map).
    copy_map = not x_nhwc and x.flags.c_contiguous and not items.shape[0] and launch_threads(values) == 1
    xb = x.transpose(0, 2, 3, 1) if x_nhwc else x if copy_map else blocked_map(x)
    # a swept NCHW output is written channels-last in its own memory, then each RoI turned in place
    transpose = not nhwc and items.shape[0] > 0
    dst = view.reshape(view.shape[0], -1, view.shape[1]) if transpose else view
    launch(
        forward,
        xb,
        x_nhwc,
        copy_map,
        *taps.arrays,
        bounds,
        items,
        TAP_EVALUATION,
        dst,
        nhwc or transpose,
        values=values,
    )
    if transpose:
        channels_first_in_place(dst)


def _launch_forward_half(x, taps: RoIAlignTaps, out, view, nhwc: bool) -> None:
    """:func:`launch_forward` of half-precision bits ``x`` into ``out`` (``view``: its bins order)."""
    if out.dtype != x.dtype:
        raise ValueError(f"a map of half-precision bits ({x.dtype}) needs an output of the same, got {out.dtype}")
    xl = x.transpose(0, 2, 3, 1)
    if not xl.flags.c_contiguous:
        xl = channels_last_copy(x)  # 16 bits, on all threads
    values = x.size + view.size
    bounds, items = _forward_items(x, taps, True, values)
    dst = view if nhwc else view.reshape(view.shape[0], -1, view.shape[1])  # NCHW: channels-last first
    launch(forward_half, xl, *taps.arrays, bounds, items, TAP_EVALUATION, dst, values=values)
    if not nhwc:
        channels_first_in_place(dst)


def _forward_items(x, taps, nhwc: bool, values: int) -> tuple[np.ndarray, np.ndarray]:
    """``(bounds, items)`` of :func:`forward`: on a map larger than a quarter of the L3
    (``_machine.sweeps_map_rows``), pieces of bin rows in the order of a sweep down strips of
    the map, for either output (:func:`launch_forward` writes an NCHW one channels-last first);
    otherwise the RoI runs alone (no items, ``_parallel.WHOLE_ROIS``), into either order, for a
    launch of ``values`` (``RoIAlignTaps.runs``)."""
    _, channels, height, width = x.shape
    if not sweeps_map_rows(height * width * channels * x.itemsize):
        return taps.runs(values), WHOLE_ROIS
    rows, cols = np.diff(taps.hptr, axis=1), np.diff(taps.wptr, axis=1)  # taps per bin row, bin column
    strip = sweep_strip(sweep_band(rows, cols), channels * x.itemsize)
    first_row, first_col = _first_taps(taps.hptr, taps.hidx), _first_taps(taps.wptr, taps.widx)
    items, bounds = row_sweep(first_row, first_col, rows, cols, taps.batch, height, strip)
    return bounds, items


def _first_taps(ptr, idx):
    """The first map row (column) each bin row (column) of ``ptr (K, P + 1)`` reads, 0 where it reads none."""
    starts, counts = ptr[:, :-1], np.diff(ptr, axis=1)
    first = idx[np.minimum(starts, idx.size - 1)] if idx.size else np.zeros_like(starts)
    return np.where(counts > 0, first, 0)


def launch_backward(grad_out, taps: RoIAlignTaps, grad_in) -> None:
    """``grad_in (N, C, H, W)`` <- the adjoint applied to ``grad_out (K, C, PH, PW)``.

    ``grad_in`` is C-contiguous in NCHW or channels-last order
    (``_tiles.memory_order``); ``grad_out`` has any strides (read in place
    in either order, else through a copy). Every element of
    ``grad_in`` is written (no zeroing needed beforehand). Both may be half-precision bits of
    one dtype (``_tiles.reads_half``): read and written in 16 bits, summed in float32, with the
    bits of widening ``grad_out`` and rounding a float32 ``grad_in``.
    """
    if grad_out.itemsize == 2 and grad_in.dtype != grad_out.dtype:
        raise ValueError(f"a gradient of half-precision bits ({grad_out.dtype}) needs grad_in of the same")
    if not grad_in.size:
        return
    if not grad_out.size:
        grad_in[...] = 0
        return
    images, channels, height, width = grad_in.shape
    go, go_nhwc = bins_order(grad_out, copy=True)
    gi, gi_nhwc = memory_order(grad_in)
    order, starts = rois_by_image(taps.batch, images)
    itemsize = 4 if grad_out.itemsize == 2 else grad_out.itemsize  # the scratch's, in the compute dtype
    block = channel_block(channels, images, itemsize, threads())
    band = scratch_band(height, width, block * itemsize, threads())
    launch(
        backward,
        go,
        go_nhwc,
        *taps.arrays,
        order,
        starts,
        block,
        band,
        TAP_EVALUATION,
        gi,
        gi_nhwc,
        # counted three times against _parallel.GRAIN: two threads already paid from about
        # 45,000 values here, against 117,000 for the forwards (docs/benchmarks.md, "Small calls")
        values=3 * (go.size + gi.size),
        tasks=images * -(-channels // block) * -(-height // band),  # (image, channel block, band)
    )


@functools.lru_cache(maxsize=256)  # a pure function of four ints, 10 to 40 us of Python a call
def channel_block(channels: int, images: int, itemsize: int, threads: int) -> int:
    """Channels per backward task: a multiple of the vector lanes, at most one register block.

    Tasks are (image, channel block) pairs, split between the threads in
    contiguous runs of about equal count (``_parallel.share``). The
    block chosen minimises the estimated work of the busiest thread, in
    channels, where a channel outside a full register block costs 1.5 times
    as much: it goes in narrower pieces, re-reading the taps for each (one
    vector at a time it was measured 1.4 to 1.7 times slower on the vgg16
    workload; four at a time, since 2026-11-27, less). Ties go to the
    wider block. Each task keeps an ``(H, W, block)`` scratch (or a band of its
    rows, ``_machine.scratch_band``).
    """
    lanes = VECTOR_BYTES // itemsize
    full = UNROLL * lanes
    best, best_load = lanes, None
    for block in range(full, 0, -lanes):
        widths = [min(block, channels - c0) for c0 in range(0, channels, block)] * images
        work = [w if w == full else 1.5 * w for w in widths]
        bounds = [len(work) * t // threads for t in range(threads + 1)]
        load = max(sum(work[bounds[t] : bounds[t + 1]]) for t in range(threads))
        if best_load is None or load < best_load:
            best, best_load = block, load
    return best


# ---- gradient with respect to the boxes ----


@numba.njit(cache=True, nogil=True, fastmath=False)
def _axis_grad_weights(start, bin_size, grid, size, pooled, scale, free, lo, num, wt, d1, d2, dtype):
    """Per-axis weights of each bin's samples, and of their derivatives with respect to the box's corners.

    For bin ``p`` along the axis, over the cells ``lo[p] + j`` for ``j <
    num[p]`` (row ``j`` of ``wt[p]``, ``d1[p]``, ``d2[p]``, float64):
    ``wt`` is the bilinear weight summed over the bin's samples (as the
    forward's taps, not divided by the grid); ``d1`` and ``d2`` are the
    derivatives of those weights with respect to the box's first and second
    coordinate on this axis (``x1``/``x2`` or ``y1``/``y2``, image units):
    a sample at ``y = y1 * s - off + a * roi_h`` with ``a = (p + (i + 0.5) /
    grid) / pooled`` moves by ``s * (1 - a)`` and ``s * a`` (``s`` and ``0``
    when ``free`` is False: the legacy one-cell extent holds). Its weights
    move by ``-1`` at the low corner and ``+1`` at the high one, except where
    ``bilinear_corners`` clamps the coordinate (then by nothing). Samples
    outside ``[-1, size]`` read 0 and have no weight. Positions are computed
    exactly as the forward's (``geometry._axis_taps``).
    """
    t = dtype.type
    if size == 0:
        grid = 0
    for p in range(pooled):
        base = start + t(p) * bin_size
        i0, i1 = _window(base, bin_size, grid, size, dtype)
        # pass 1: the cells touched (positions fall for an inverted box, so not in order)
        cmin = size
        cmax = -1
        for i in range(i0, i1):
            y = _sample_position(base, bin_size, grid, i, dtype)
            if y >= -1 and y <= size:
                low, high, _ = bilinear_corners(y, size, dtype)
                cmin = min(cmin, low)
                cmax = max(cmax, high)
        lo[p] = max(cmin, 0) if cmax >= 0 else 0
        num[p] = cmax - cmin + 1 if cmax >= 0 else 0
        for j in range(num[p]):
            wt[p, j] = 0.0
            d1[p, j] = 0.0
            d2[p, j] = 0.0
        # pass 2: the weights
        for i in range(i0, i1):
            y = _sample_position(base, bin_size, grid, i, dtype)
            if not (y >= -1 and y <= size):
                continue
            low, high, frac = bilinear_corners(y, size, dtype)
            f = np.float64(frac)
            wt[p, low - lo[p]] += 1.0 - f
            wt[p, high - lo[p]] += f
            # clamped (at or below 0, or at the last cell): the position does not move the weights
            if y > 0 and low != high:
                a = (p + (i + 0.5) / grid) / pooled
                m1 = scale * (1.0 - a) if free else scale
                m2 = scale * a if free else 0.0
                d1[p, low - lo[p]] -= m1
                d1[p, high - lo[p]] += m1
                d2[p, low - lo[p]] -= m2
                d2[p, high - lo[p]] += m2


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def boxes_backward(
    x,
    grad_out,
    go_nhwc,
    rois,
    spatial_scale,
    pooled_h,
    pooled_w,
    sampling_ratio,
    aligned,
    bounds,
    grad_rois,
    part,
    parts,
):
    """``grad_rois (K, 5)`` float64 <- the gradient of RoIAlign with respect to ``rois`` (column 0: zero).

    ``x (N, H, W, C)`` channels-last and ``grad_out (K, C, PH * PW)`` (or,
    ``go_nhwc``, ``(K, PH * PW, C)``), both C-contiguous in the compute dtype
    ``T`` (each RoI's gradient is moved to ``(PH * PW, C)`` in a private
    buffer, so that its channels are contiguous too); ``rois (K, 5)`` in ``T``,
    validated. ``bounds``: runs of RoIs (``RoIAlignTaps.bounds``). Each RoI
    is summed by one thread, in a fixed order: the same bits for every call
    and thread count, and on AVX2 as on AVX-512 (the dot products over
    channels are summed in 64-byte vectors by :func:`_dot4`, not vectorised
    by the compiler, which would reassociate them by the CPU's vector width).
    """
    x, grad_out, rois, bounds, grad_rois = borrowed((x, grad_out, rois, bounds, grad_rois))
    _, height, width, channels = x.shape
    nbins = pooled_h * pooled_w
    gof = grad_out.reshape(-1)
    t = rois.dtype.type
    offset = t(0.5) if aligned else t(0.0)
    scale = np.float64(spatial_scale)
    for run in share(bounds.shape[0] - 1, part, parts):
        hlo = np.empty(pooled_h, np.int64)
        hnum = np.empty(pooled_h, np.int64)
        wlo = np.empty(pooled_w, np.int64)
        wnum = np.empty(pooled_w, np.int64)
        hw = np.empty((pooled_h, height + 1), np.float64)
        hd1 = np.empty((pooled_h, height + 1), np.float64)
        hd2 = np.empty((pooled_h, height + 1), np.float64)
        ww = np.empty((pooled_w, width + 1), np.float64)
        wd1 = np.empty((pooled_w, width + 1), np.float64)
        wd2 = np.empty((pooled_w, width + 1), np.float64)
        dots = np.empty((height + 1) * (width + 1), np.float64)
        rowsum = np.empty(height + 1, np.float64)
        g = np.empty(nbins * channels, grad_out.dtype)
        used = np.empty(width + 1, np.int64)
        for k in range(bounds[run], bounds[run + 1]):
            n = int(rois[k, 0])
            x0, y0, roi_w, roi_h = roi_align_extent(rois, k, spatial_scale, offset)  # the forward's, unfused
            free_w = aligned or roi_w >= 1
            free_h = aligned or roi_h >= 1
            if not aligned:
                roi_w = max(roi_w, t(1.0))
                roi_h = max(roi_h, t(1.0))
            bin_h = roi_h / t(pooled_h)
            bin_w = roi_w / t(pooled_w)
            grid_h = _grid(sampling_ratio, bin_h)
            grid_w = _grid(sampling_ratio, bin_w)
            count = max(grid_h * grid_w, 1)
            _axis_grad_weights(y0, bin_h, grid_h, height, pooled_h, scale, free_h, hlo, hnum, hw, hd1, hd2, rois.dtype)
            _axis_grad_weights(x0, bin_w, grid_w, width, pooled_w, scale, free_w, wlo, wnum, ww, wd1, wd2, rois.dtype)
            load_tile(gof, k, channels, ZERO, nbins, channels, g, channels, go_nhwc)
            gx1 = gy1 = gx2 = gy2 = 0.0
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    nr = hnum[ph]
                    nc = wnum[pw]
                    if nr == 0 or nc == 0:
                        continue
                    gb = g[(ph * pooled_w + pw) * channels : (ph * pooled_w + pw + 1) * channels]
                    # a large bin's few samples leave most rows and columns of its span untouched
                    nu = 0
                    for q in range(nc):
                        if ww[pw, q] != 0 or wd1[pw, q] != 0 or wd2[pw, q] != 0:
                            used[nu] = q
                            nu += 1
                    dots[: nr * nc] = 0.0
                    for r in range(nr):
                        if hw[ph, r] == 0 and hd1[ph, r] == 0 and hd2[ph, r] == 0:
                            continue
                        row = x[n, hlo[ph] + r]
                        j = 0
                        # four cells per pass over the channels: the bin's gradient is loaded once for all
                        while j + 4 <= nu:
                            q0, q1, q2, q3 = used[j], used[j + 1], used[j + 2], used[j + 3]
                            d0, d1, d2, d3 = _dot4(
                                gb, row[wlo[pw] + q0], row[wlo[pw] + q1], row[wlo[pw] + q2], row[wlo[pw] + q3]
                            )
                            dots[r * nc + q0] = d0
                            dots[r * nc + q1] = d1
                            dots[r * nc + q2] = d2
                            dots[r * nc + q3] = d3
                            j += 4
                        while j < nu:
                            dots[r * nc + used[j]] = _dot(gb, row[wlo[pw] + used[j]])
                            j += 1
                    # rows: weights along x applied first, then the y derivative weights
                    for r in range(nr):
                        s = 0.0
                        for q in range(nc):
                            s += ww[pw, q] * dots[r * nc + q]
                        rowsum[r] = s
                    for r in range(nr):
                        gy1 += hd1[ph, r] * rowsum[r]
                        gy2 += hd2[ph, r] * rowsum[r]
                    for q in range(nc):
                        s = 0.0
                        for r in range(nr):
                            s += hw[ph, r] * dots[r * nc + q]
                        gx1 += wd1[pw, q] * s
                        gx2 += wd2[pw, q] * s
            grad_rois[k, 0] = 0.0
            grad_rois[k, 1] = gx1 / count
            grad_rois[k, 2] = gy1 / count
            grad_rois[k, 3] = gx2 / count
            grad_rois[k, 4] = gy2 / count


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, inline="always")
def _dot4(a, b0, b1, b2, b3):
    """The dot products of the contiguous ``a`` with ``b0`` to ``b3``, as float64: each summed
    lane by lane in 64-byte vectors, the lanes added in a fixed order (``_simd.vsum``), then the
    last channels one at a time, so that the bits do not depend on the CPU's vector width."""
    lanes = vector_lanes(a)
    n = a.shape[0]
    v0 = v1 = v2 = v3 = vzeros(a)
    c = 0
    while c + lanes <= n:
        v = vload(a, c)
        v0 = vmuladd_lanes(v0, v, vload(b0, c))
        v1 = vmuladd_lanes(v1, v, vload(b1, c))
        v2 = vmuladd_lanes(v2, v, vload(b2, c))
        v3 = vmuladd_lanes(v3, v, vload(b3, c))
        c += lanes
    s0, s1, s2, s3 = vsum(v0), vsum(v1), vsum(v2), vsum(v3)
    for i in range(c, n):
        s0 = muladd(s0, a[i], b0[i])
        s1 = muladd(s1, a[i], b1[i])
        s2 = muladd(s2, a[i], b2[i])
        s3 = muladd(s3, a[i], b3[i])
    return np.float64(s0), np.float64(s1), np.float64(s2), np.float64(s3)


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, inline="always")
def _dot(a, b):
    """One dot product of :func:`_dot4`'s, summed in its order."""
    lanes = vector_lanes(a)
    n = a.shape[0]
    v0 = vzeros(a)
    c = 0
    while c + lanes <= n:
        v0 = vmuladd_lanes(v0, vload(a, c), vload(b, c))
        c += lanes
    s = vsum(v0)
    for i in range(c, n):
        s = muladd(s, a[i], b[i])
    return np.float64(s)


def launch_boxes_backward(x, grad_out, rois, taps: RoIAlignTaps, spatial_scale, sampling_ratio, aligned):
    """The gradient of RoIAlign with respect to ``rois (K, 5)``: ``(K, 5)`` float64, column 0 zero.

    ``x (N, C, H, W)`` and ``grad_out (K, C, PH, PW)`` in the compute dtype
    of ``rois`` (validated, ``_checks.rois_array``), any strides; ``taps``
    is the call's :class:`RoIAlignTaps` (for the split of the RoIs).
    The grid of an adaptive ``sampling_ratio`` is held fixed: the gradient
    is that of the piecewise-smooth output within one grid size
    (``docs/semantics.md``).
    """
    k, channels, pooled_h, pooled_w = grad_out.shape
    grad_rois = np.zeros((k, 5), np.float64)
    if not (k and channels and x.shape[2] and x.shape[3]):
        return grad_rois
    nhwc = channels_last_copy(x)
    go, go_nhwc = bins_order(grad_out, copy=True)
    scale = rois.dtype.type(spatial_scale)
    values = nhwc.size + go.size
    launch(
        boxes_backward, nhwc, go, go_nhwc, rois, scale, pooled_h, pooled_w, sampling_ratio, aligned,
        taps.runs(values), grad_rois, values=values,
    )  # fmt: skip
    return grad_rois

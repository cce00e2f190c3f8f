"""Rotated RoIAlign on the CPU: forward, input backward and box backward (Numba).

A rotated box's samples do not separate into rows and columns as
``roi_align``'s do, so each bin's samples are generated on the fly
(:func:`_fill_taps`): a run of samples of the bin becomes up to
``TAP_CHUNK`` (cell, weight) taps in a small scratch, which the channel loop
then consumes a block of channels at a time. The sample arithmetic rounds
to the compute dtype after every operation (:func:`_rnd`), in the order of
``reference.roi_align_rotated``, so sample positions and bilinear weights are
those of the reference bit for bit; only the sums over taps may differ in the
last bits (fused multiply-adds).

Adaptive sampling of a box much larger than the map would visit billions of
samples that all lie off the map; each row of samples is therefore clipped
to the columns that can land within one cell of the map (a line against a
rectangle, in float64, with the bounds widened by far more than the samples'
own rounding, and by two samples) before the exact per-sample test.

Forward: the map is copied into ``roi_align``'s channel-blocked layout
(:func:`roipool.cpu.roi_align.channel_blocks`: each block of channels of an
image is a compact ``(H, W, block)`` array), so each tap reads one contiguous
vector of channels. Balanced runs of RoIs go to threads; a run walks its
RoIs once per channel block.

Input backward: threads take (image, channel block) pairs and own that part
of ``grad_input``: no atomics, and each element sums its contributions in
RoI order whatever the thread count (bit-identical for any thread count).

Box backward: one RoI per task, its five derivatives summed in float64 in a
fixed order (deterministic too).

The launchers and the per-call geometry (:class:`Frames`) follow the kernels,
as in the other ``cpu/`` modules. The register-blocked sums over a chunk of
taps are ``roi_align``'s (``_gather`` with ``add``, ``_scatter``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .. import _checks
from ._parallel import BalancedRuns, launch, share, threads
from ._simd import FALSE, ZERO, borrowed, scratch_lines, vector_lanes
from ._tiles import bins_order, load_tile, memory_order, store_tile, store_tile_lines
from .roi_align import UNROLL, _gather, _scatter, blocked_map, channel_block, map_origin, rois_by_image

#: Taps generated per pass over a bin's samples (64 samples of 4 taps).
TAP_CHUNK = 256

# Columns of the per-RoI ``frames`` array (compute dtype).
CY, CX, START_H, START_W, BIN_H, BIN_W, COS, SIN, ROI_H, ROI_W, SIZE_FREE_W, SIZE_FREE_H = range(12)
FRAME_COLUMNS = 12


@numba.njit(cache=True, nogil=True, inline="always")
def _rnd(buf, value):
    """``value`` rounded to ``buf``'s dtype: each float32 operation is done in float64 and
    rounded here, which gives the float32 result exactly (float64 has over twice the bits)."""
    buf[0] = value
    return buf[0]


@numba.njit(cache=True, nogil=True)
def _row_span(v, frame, gw, pw, height, width):
    """Columns ``[lo, hi)`` of sample row ``v`` that can fall within one cell of the map (conservative).

    Sample ``i`` of the row lies on the line ``p + i * q`` (one per coordinate), up to the
    rounding of its own arithmetic in the compute dtype: a few units in the last place of
    its largest term (``size``). The bounds are widened by far more than that before they
    are turned into columns: where ``q`` is tiny but not 0 (``cos`` of a quarter turn is
    6e-17), one unit in the last place is millions of columns, and a sample exactly on
    the map's border would otherwise be cut (found by differential fuzzing against the
    reference).
    """
    if gw <= 8:
        return 0, gw
    cos = float(frame[COS])
    sin = float(frame[SIN])
    d = float(frame[BIN_W]) / gw
    a = float(frame[START_W]) + pw * float(frame[BIN_W]) + 0.5 * d
    reach = abs(a) + abs(d) * gw  # the largest |u| of the row
    lo = 0.0
    hi = gw - 1.0
    # x = v * sin + (a + i * d) * cos + cx in [-1, W]; y = v * cos - (a + i * d) * sin + cy in [-1, H]
    for p, q, size, bound_lo, bound_hi in (
        (
            float(v) * sin + a * cos + float(frame[CX]),
            d * cos,
            abs(float(v) * sin) + reach * abs(cos) + abs(float(frame[CX])),
            -1.0,
            float(width),
        ),
        (
            float(v) * cos - a * sin + float(frame[CY]),
            -d * sin,
            abs(float(v) * cos) + reach * abs(sin) + abs(float(frame[CY])),
            -1.0,
            float(height),
        ),
    ):
        slack = 1e-5 * size  # float32 rounds at 6e-8 of it: a hundredfold margin and more
        if q == 0.0:
            if p < bound_lo - 1.0 - slack or p > bound_hi + 1.0 + slack:
                return 0, 0
        else:
            i0 = (bound_lo - slack - p) / q
            i1 = (bound_hi + slack - p) / q
            lo = max(lo, min(i0, i1))
            hi = min(hi, max(i0, i1))
    if not (lo <= hi + 4.0):
        return 0, 0
    lo_i = max(int(math.floor(lo)) - 2, 0)
    hi_i = min(int(math.ceil(hi)) + 3, gw)
    return lo_i, hi_i


@numba.njit(cache=True, nogil=True)
def _fill_taps(frame, gh, gw, ph, pw, height, width, idx, wt, buf, iy, ix):
    """Taps of bin ``(ph, pw)``'s samples from ``(iy, ix)`` on, row by row, until
    ``idx`` is full. Returns ``(m, iy, ix)``: taps written and where to go on
    (``iy == gh`` when the bin is done). ``idx[j]`` is the cell ``h * W + w``."""
    cap = idx.shape[0]
    m = 0
    bin_h = frame[BIN_H]
    bin_w = frame[BIN_W]
    cos = frame[COS]
    sin = frame[SIN]
    row0 = _rnd(buf, frame[START_H] + _rnd(buf, ph * bin_h))
    col0 = _rnd(buf, frame[START_W] + _rnd(buf, pw * bin_w))
    while iy < gh:
        v = _rnd(buf, row0 + _rnd(buf, _rnd(buf, (iy + 0.5) * bin_h) / gh))
        lo, hi = _row_span(v, frame, gw, pw, height, width)
        if ix < lo:
            ix = lo
        while ix < hi:
            if m + 4 > cap:
                return m, iy, ix
            u = _rnd(buf, col0 + _rnd(buf, _rnd(buf, (ix + 0.5) * bin_w) / gw))
            y = _rnd(buf, _rnd(buf, _rnd(buf, v * cos) - _rnd(buf, u * sin)) + frame[CY])
            x = _rnd(buf, _rnd(buf, _rnd(buf, v * sin) + _rnd(buf, u * cos)) + frame[CX])
            m = _bilinear(y, x, height, width, idx, wt, m, buf)
            ix += 1
        iy += 1
        ix = 0
    return m, iy, ix


@numba.njit(cache=True, nogil=True, inline="always")
def _bilinear(y, x, height, width, idx, wt, m, buf):
    """Append the four taps of the sample at ``(y, x)`` (``reference.bilinear_taps``); returns the new count."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return m
    if y <= 0:
        y = _rnd(buf, 0.0)
    if x <= 0:
        x = _rnd(buf, 0.0)
    y_low = int(y)
    x_low = int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = _rnd(buf, y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = _rnd(buf, x_low)
    else:
        x_high = x_low + 1
    ly = _rnd(buf, y - y_low)
    lx = _rnd(buf, x - x_low)
    hy = _rnd(buf, 1.0 - ly)
    hx = _rnd(buf, 1.0 - lx)
    idx[m] = y_low * width + x_low
    wt[m] = hy * hx
    idx[m + 1] = y_low * width + x_high
    wt[m + 1] = hy * lx
    idx[m + 2] = y_high * width + x_low
    wt[m + 2] = ly * hx
    idx[m + 3] = y_high * width + x_high
    wt[m + 3] = ly * lx
    return m + 4


@numba.njit(cache=True, nogil=True)
def forward(xb, x_nhwc, batch, frames, grids, pooled_h, pooled_w, bounds, out, nhwc, part, parts):
    """``out (K, C, PH * PW)`` (or, ``nhwc``, ``(K, PH * PW, C)``) <- rotated RoIAlign of ``xb``
    (``(N, C, H, W)`` in the channel-blocked layout of ``roi_align.channel_blocks``). ``out`` C-contiguous."""
    xb, batch, frames, grids, bounds, out = borrowed((xb, batch, frames, grids, bounds, out))
    if x_nhwc:  # the channels-last map, read in place
        _, height, width, channels = xb.shape
    else:
        _, channels, height, width = xb.shape
    xf = xb.reshape(-1)
    outf = out.reshape(-1)
    nbins = pooled_h * pooled_w
    block = UNROLL * vector_lanes(xb)
    for run in share(bounds.shape[0] - 1, part, parts):
        tile = scratch_lines(0 if nhwc else nbins * block, xb)
        stage = scratch_lines(0 if nhwc else nbins * block, xb)
        idx = np.empty(TAP_CHUNK, np.int64)
        wt = np.empty(TAP_CHUNK, xb.dtype)
        buf = np.empty(1, xb.dtype)
        lo, hi = bounds[run], bounds[run + 1]
        if nhwc:
            # RoIs outermost, each summed straight into its (bins, C) output, all channel
            # blocks of a tap chunk in turn (as roi_align.forward)
            for k in range(lo, hi):
                _forward_bins(
                    xf, x_nhwc, batch[k], channels, ZERO, channels, height, width, frames[k], grids[k], pooled_w,
                    nbins, idx, wt, buf, outf, k * nbins * channels, channels,
                )  # fmt: skip
        else:
            # channel blocks outermost: the run's RoIs read one block of the map
            # before the next; each RoI's block is transposed into the output
            for c0 in range(0, channels, block):
                cw = min(block, channels - c0)
                for k in range(lo, hi):
                    _forward_bins(
                        xf, x_nhwc, batch[k], channels, c0, c0 + cw, height, width, frames[k], grids[k], pooled_w,
                        nbins, idx, wt, buf, tile, ZERO, block,
                    )  # fmt: skip
                    store_tile_lines(tile, block, nbins, cw, stage, outf, k, channels, c0, FALSE)


@numba.njit(cache=True, nogil=True)
def _forward_bins(
    xf, x_nhwc, n, channels, c_lo, c_hi, height, width, frame, grid, pooled_w, nbins, idx, wt, buf, dst, base, stride
):
    """``dst[base + b * stride + c - c_lo]`` <- bin ``b`` of channel ``c_lo <= c < c_hi`` of one rotated
    RoI on image ``n`` of ``xf`` (channel-blocked, or channels-last if ``x_nhwc``); each chunk of
    a bin's taps is applied to every register block of channels in turn."""
    block = UNROLL * vector_lanes(xf)
    origin, hop, step = map_origin(x_nhwc, n, channels, height, width, c_lo)
    gh, gw = grid[0], grid[1]
    count = xf.dtype.type(max(gh * gw, 1))
    for b in range(nbins):
        t = base + b * stride - c_lo
        dst[t + c_lo : t + c_hi] = 0
        iy, ix = ZERO, ZERO
        while iy < gh:
            m, iy, ix = _fill_taps(frame, gh, gw, b // pooled_w, b % pooled_w, height, width, idx, wt, buf, iy, ix)
            if c_hi - c_lo <= block:  # one block (into an NCHW tile): no loop around the inlined sums
                _gather(xf, origin, step or (c_hi - c_lo), idx, wt, 0, m, dst, t + c_lo, c_hi - c_lo, True)
                continue
            for c0 in range(c_lo, c_hi, block):
                cw = min(block, c_hi - c0)
                _gather(xf, origin + (c0 - c_lo) * hop, step or cw, idx, wt, 0, m, dst, t + c0, cw, True)
        for c in range(t + c_lo, t + c_hi):
            dst[c] = dst[c] / count


@numba.njit(cache=True, nogil=True)
def backward(
    grad_out, go_nhwc, batch, frames, grids, pooled_h, pooled_w, order, starts, block, grad_in, gi_nhwc, part, parts
):
    """``grad_in (N, C, H, W)`` <- the adjoint of :func:`forward` applied to ``grad_out (K, C, PH * PW)``.

    With ``go_nhwc`` ``grad_out`` is ``(K, PH * PW, C)``; with ``gi_nhwc``
    ``grad_in`` is ``(N, H, W, C)``. Every element of ``grad_in`` is written. The RoIs of image ``n`` are
    ``order[starts[n]:starts[n + 1]]``, ascending; (image, ``block`` channels)
    pairs are the parallel tasks (``block`` a multiple of the vector lanes).
    """
    grad_out, batch, frames, grids, order, starts, grad_in = borrowed(
        (grad_out, batch, frames, grids, order, starts, grad_in)
    )
    nbins, channels = grad_out.shape[1:] if go_nhwc else grad_out.shape[:0:-1]
    images, height, width = grad_in.shape[:3] if gi_nhwc else (grad_in.shape[0], grad_in.shape[2], grad_in.shape[3])
    gof = grad_out.reshape(-1)
    gif = grad_in.reshape(-1)
    cells = height * width
    nblocks = (channels + block - 1) // block
    for item in share(images * nblocks, part, parts):
        n = item // nblocks
        c0 = (item % nblocks) * block
        cw = min(block, channels - c0)
        acc = scratch_lines(cells * block, grad_out, True)  # (H, W, block), channels-last
        g = scratch_lines(nbins * block, grad_out)
        idx = np.empty(TAP_CHUNK, np.int64)
        wt = np.empty(TAP_CHUNK, grad_out.dtype)
        buf = np.empty(1, grad_out.dtype)
        for r in range(starts[n], starts[n + 1]):
            k = order[r]
            gh, gw = grids[k, 0], grids[k, 1]
            if gh * gw == 0:
                continue
            count = grad_out.dtype.type(gh * gw)
            load_tile(gof, k, channels, c0, nbins, cw, g, block, go_nhwc)
            for b in range(nbins):
                t = b * block
                for c in range(t, t + cw):
                    g[c] = g[c] / count
                iy, ix = ZERO, ZERO
                while iy < gh:
                    m, iy, ix = _fill_taps(
                        frames[k], gh, gw, b // pooled_w, b % pooled_w, height, width, idx, wt, buf, iy, ix
                    )
                    _scatter(g, t, acc, 0, block, idx, wt, 0, m, cw)
        store_tile(acc, block, cells, cw, gif, n, channels, c0, gi_nhwc)


@numba.njit(cache=True, nogil=True)
def box_backward(
    xl, grad_out, batch, frames, grids, pooled_h, pooled_w, spatial_scale, clockwise, grad_boxes, part, parts
):
    """``grad_boxes (K, 5)`` <- d loss / d ``[cx, cy, w, h, angle]`` of each RoI (see
    ``reference.roi_align_rotated_box_grad``), from the channels-last map ``xl (N, H, W, C)``
    and ``grad_out (K, C, PH * PW)``. Each RoI is summed in float64 by one task."""
    xl, grad_out, batch, frames, grids, grad_boxes = borrowed((xl, grad_out, batch, frames, grids, grad_boxes))
    _, height, width, channels = xl.shape
    num_rois = grad_out.shape[0]
    sign = -1.0 if clockwise else 1.0
    for k in share(num_rois, part, parts):
        n = batch[k]
        gh, gw = grids[k, 0], grids[k, 1]
        f = frames[k]
        cy, cx = float(f[CY]), float(f[CX])
        cos, sin = float(f[COS]), float(f[SIN])
        roi_h, roi_w = float(f[ROI_H]), float(f[ROI_W])
        g = np.empty(channels, np.float64)
        s_cx = s_cy = s_w = s_h = s_a = 0.0
        count = max(gh * gw, 1)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                for c in range(channels):
                    g[c] = grad_out[k, c, ph * pooled_w + pw] / count
                for iy in range(gh):
                    fv = -0.5 + (ph + (iy + 0.5) / gh) / pooled_h
                    v = fv * roi_h
                    lo, hi = _row_span(v, f, gw, pw, height, width)
                    for ix in range(lo, hi):
                        fu = -0.5 + (pw + (ix + 0.5) / gw) / pooled_w
                        u = fu * roi_w
                        y = v * cos - u * sin + cy
                        x = v * sin + u * cos + cx
                        gy, gx = _slope_dot(xl, n, y, x, height, width, g)
                        s_cx += gx
                        s_cy += gy
                        s_w += fu * (gx * cos - gy * sin)
                        s_h += fv * (gy * cos + gx * sin)
                        s_a += gx * (v * cos - u * sin) - gy * (v * sin + u * cos)
        grad_boxes[k, 0] = s_cx * spatial_scale
        grad_boxes[k, 1] = s_cy * spatial_scale
        grad_boxes[k, 2] = s_w * spatial_scale * f[SIZE_FREE_W]
        grad_boxes[k, 3] = s_h * spatial_scale * f[SIZE_FREE_H]
        grad_boxes[k, 4] = s_a * sign


@numba.njit(cache=True, nogil=True, inline="always")
def _slope_dot(xl, n, y, x, height, width, g):
    """``(sum_c g[c] * d value_c / dy, sum_c g[c] * d value_c / dx)`` of the bilinear sample at ``(y, x)``."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0, 0.0
    y_fixed = y <= 0.0 or y >= height - 1.0
    x_fixed = x <= 0.0 or x >= width - 1.0
    y = min(max(y, 0.0), height - 1.0)
    x = min(max(x, 0.0), width - 1.0)
    y0 = min(int(y), max(height - 2, 0))
    x0 = min(int(x), max(width - 2, 0))
    y1 = min(y0 + 1, height - 1)
    x1 = min(x0 + 1, width - 1)
    ly = y - y0
    lx = x - x0
    gy = 0.0
    gx = 0.0
    for c in range(xl.shape[3]):
        a = float(xl[n, y0, x0, c])
        b = float(xl[n, y0, x1, c])
        cc = float(xl[n, y1, x0, c])
        d = float(xl[n, y1, x1, c])
        gy += g[c] * ((1.0 - lx) * (cc - a) + lx * (d - b))
        gx += g[c] * ((1.0 - ly) * (b - a) + ly * (d - cc))
    if y_fixed:
        gy = 0.0
    if x_fixed:
        gx = 0.0
    return gy, gx


# ---- the geometry of one call, and the launchers ----


class Frames(BalancedRuns):
    """The frame of every rotated RoI (centre, bin sizes, cos, sin), its sample grid, and the work split.

    ``rois (K, 6)`` are validated (``_checks.rotated_rois_array`` and
    ``rotated_scaled_boxes``) and in the compute dtype. Everything is rounded to that dtype in the reference's
    order, so the kernels place every sample where the reference does.
    """

    def __init__(self, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise):
        _checks.geometry_limits(pooled_h, pooled_w, sampling_ratio, _checks.MAX_ROTATED_SAMPLING_RATIO)
        t = rois.dtype.type
        self.rois = rois
        self.pooled_h, self.pooled_w = pooled_h, pooled_w
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio, self.aligned = sampling_ratio, aligned
        self.clockwise = bool(clockwise)
        self.num_rois = rois.shape[0]
        self.batch = rois[:, 0].astype(np.int64)
        scale = t(spatial_scale)
        offset = t(0.5) if aligned else t(0.0)
        f = np.empty((self.num_rois, FRAME_COLUMNS), rois.dtype)
        f[:, CX] = rois[:, 1] * scale - offset
        f[:, CY] = rois[:, 2] * scale - offset
        roi_w = rois[:, 3] * scale
        roi_h = rois[:, 4] * scale
        f[:, SIZE_FREE_W] = 1
        f[:, SIZE_FREE_H] = 1
        if not aligned:
            # legacy rule: a box smaller than one cell is read as one cell (and that size has no derivative)
            f[:, SIZE_FREE_W] = roi_w > 1
            f[:, SIZE_FREE_H] = roi_h > 1
            roi_w = np.maximum(roi_w, t(1))
            roi_h = np.maximum(roi_h, t(1))
        theta = -rois[:, 5] if clockwise else rois[:, 5]
        f[:, COS] = np.cos(theta)
        f[:, SIN] = np.sin(theta)
        f[:, ROI_W] = roi_w
        f[:, ROI_H] = roi_h
        f[:, BIN_H] = roi_h / t(pooled_h)
        f[:, BIN_W] = roi_w / t(pooled_w)
        f[:, START_H] = -roi_h / t(2)
        f[:, START_W] = -roi_w / t(2)
        self.frames = f
        grids = np.empty((self.num_rois, 2), np.int64)
        if sampling_ratio > 0:
            grids[:] = sampling_ratio
        else:
            grids[:, 0] = np.maximum(np.ceil(roi_h / t(pooled_h)), 0)
            grids[:, 1] = np.maximum(np.ceil(roi_w / t(pooled_w)), 0)
        self.grids = grids
        self.cost = (grids[:, 0] * grids[:, 1] + 1).astype(np.float64) * (pooled_h * pooled_w)

    @property
    def arrays(self):
        return self.batch, self.frames, self.grids, self.pooled_h, self.pooled_w

    def in_float64(self) -> Frames:
        """These RoIs' frames computed in float64 from the same box values (the box gradient's,
        as ``reference.roi_align_rotated_box_grad``'s): itself when they already are."""
        if self.frames.dtype == np.float64:
            return self
        return Frames(
            self.rois.astype(np.float64), self.spatial_scale, self.pooled_h, self.pooled_w,
            self.sampling_ratio, self.aligned, self.clockwise,
        )  # fmt: skip


def launch_forward(x, frames: Frames, out) -> None:
    """``out (K, C, PH, PW)`` (C-contiguous in NCHW or channels-last order, ``_tiles.memory_order``)
    <- rotated RoIAlign of ``x (N, C, H, W)`` (compute dtype, any strides)."""
    if not out.size:
        return
    if not x.size:  # an empty map: every sample is off it
        out[...] = 0
        return
    view, nhwc = bins_order(out)
    x_nhwc = x.transpose(0, 2, 3, 1).flags.c_contiguous  # read in place: no blocked copy
    xb = x.transpose(0, 2, 3, 1) if x_nhwc else blocked_map(x)
    values = xb.size + view.size
    launch(forward, xb, x_nhwc, *frames.arrays, frames.runs(values), view, nhwc, values=values)


def launch_backward(grad_out, frames: Frames, grad_in) -> None:
    """``grad_in (N, C, H, W)`` (every element written) <- the adjoint applied to ``grad_out (K, C, PH, PW)``.

    ``grad_in`` is C-contiguous in NCHW or channels-last order
    (``_tiles.memory_order``); ``grad_out`` has any strides.
    """
    if not grad_in.size:
        return
    if not grad_out.size:
        grad_in[...] = 0
        return
    images, channels = grad_in.shape[:2]
    go, go_nhwc = bins_order(grad_out, copy=True)
    gi, gi_nhwc = memory_order(grad_in)
    order, starts = rois_by_image(frames.batch, images)
    block = channel_block(channels, images, grad_out.itemsize, threads())
    launch(
        backward, go, go_nhwc, *frames.arrays, order, starts, block, gi, gi_nhwc,
        values=go.size + gi.size, tasks=images * -(-channels // block),  # (image, channel block)
    )  # fmt: skip


def launch_box_backward(x_nhwc, grad_out, frames: Frames, grad_boxes) -> None:
    """``grad_boxes (K, 5)`` <- d/d ``[cx, cy, w, h, angle]`` from ``x_nhwc (N, H, W, C)`` and
    ``grad_out (K, C, PH * PW)`` (any strides), on the RoIs' frames in float64 whatever the
    compute dtype (``docs/semantics.md``: a float32 frame put samples within its rounding of a
    whole cell on the other side of it than the float64 reference, found by fuzzing)."""
    if not grad_boxes.size:
        return
    if not x_nhwc.size:
        grad_boxes[...] = 0
        return
    go = np.ascontiguousarray(grad_out).reshape(grad_out.shape[0], grad_out.shape[1], -1)
    launch(
        box_backward,
        x_nhwc,
        go,
        *frames.in_float64().arrays,
        frames.spatial_scale,
        frames.clockwise,
        grad_boxes,
        values=x_nhwc.size + go.size,
    )

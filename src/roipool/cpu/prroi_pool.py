"""Precise RoI Pooling on the CPU: closed-form separable taps, kernels and launchers.

A bin ``[a, b] x [c, d]`` of the zero-extended bilinear interpolant ``F``
(``docs/semantics.md``, prroi_pool) averages to
``sum over cells (i, j) of wy[i] * wx[j] * input[i, j]`` with
``wy[i] = (integral from a to b of hat(y - i) dy) / (b - a)`` and ``wx`` likewise:
the integral is separable. So a PrRoI bin is exactly a RoIAlign bin with
other per-axis weights, and the forward and input backward reuse RoIAlign's
channel-vectorised, deterministic kernels (``cpu/roi_align.py``) on the taps
built here (:func:`prroi_taps`); only the box gradient needs a kernel of its
own (:func:`boxes_backward`).

Box gradient. Each tap also carries the derivative of its weight with
respect to the box's two coordinates on that axis (``y1``, ``y2`` for rows),
``dw[i]/dy1 = scale * ((1 - ph/PH) * dw[i]/da + (1 - (ph+1)/PH) * dw[i]/db)``
and so on, in a closed form with no cancellation (below), so that
``d bin / d y1 = sum of (dwy[i]/dy1) * wx[j] * input[i, j]``: the same
separable sum with one axis' weights swapped for their derivatives. The
kernel evaluates all four rows-first: each bin row's rows are read once and
combined into three lines over the RoI's columns, ``sum_i wy[i] *
input[i, :]`` and the same with ``dwy[i]/dy1`` and ``dwy[i]/dy2``; each bin then
takes its column derivatives from the first line and its column weights
from the other two. It multiplies by the output gradient and sums over
channels; each RoI is one task's, in a fixed order, so the result does not
depend on the thread count. (The row derivatives went columns-first
before, a second pass over the RoI's cells: on ``maskrcnn`` those come from
L3, and one pass instead of two took the NumPy call from 195-196 to 162-165 ms;
``vgg16``, whose map stays in cache, 101 either way.)

Derivative of a tap weight. With ``F_i(t) = hat(t - i)``, ``D = b - a``, the
pieces ``A = [a, b] ∩ [i-1, i]`` (slope +1) and ``B = [a, b] ∩ [i, i+1]``
(slope -1) of lengths ``LA``, ``LB`` and midpoints ``mA``, ``mB``:

- ``w = (LA * (mA - i + 1) + LB * (i + 1 - mB)) / D``;
- ``dw/db = (F_i(b) - w) / D = (LA * (mA - a) - LB * (mB - a)) / D**2``;
- ``dw/da = (w - F_i(a)) / D = (LA * (b - mA) - LB * (b - mB)) / D**2``

(integrating ``F_i(b) - F_i(t) = integral of F_i'`` by parts). Every term is a
product of lengths within the bin, so a bin far smaller than a cell still
gets its derivative (``+-1/2``) to full precision, where ``(F_i(b) - w) / D``
would lose it to cancellation. Each ratio is formed as ``(L / D) * (m / D)``,
both at most 1, so nothing overflows for tiny ``D``.
"""

from __future__ import annotations

import numba
import numpy as np

from .. import _checks
from . import roi_align as align
from ._parallel import BalancedRuns, launch, share
from ._simd import ZERO, borrowed, scratch_lines, vector_lanes
from ._tiles import bins_order, load_tile


@numba.njit(cache=True, nogil=True)
def prroi_taps(rois, spatial_scale, pooled_h, pooled_w, height, width):
    """Separable closed-form taps of every PrRoI bin, with their box derivatives.

    ``rois (K, 5)`` in the compute dtype ``T``; ``spatial_scale`` a ``T``
    scalar. Returns ``batch (K,)`` int32; ``hptr (K, PH + 1)`` int64 with
    ``hidx`` int32, ``hwt``, ``hd1``, ``hd2`` (``T``): the row taps of bin row
    ``ph`` of RoI ``k`` are ``hidx[hptr[k, ph]:hptr[k, ph + 1]]`` with weights
    ``hwt`` and their derivatives with respect to the box's ``y1`` (``hd1``)
    and ``y2`` (``hd2``); ``wptr``, ``widx``, ``wwt``, ``wd1``, ``wd2`` likewise
    for columns and ``x1``, ``x2``; ``cost (K,)`` int64 for load balancing; and
    ``overflow``: -1, or the first RoI whose scaled corners or extent are not finite
    in ``T`` (then no taps are computed: the caller refuses the boxes, by
    ``_checks.scaled_boxes_finite``'s rule, without a compiled call of its own).
    A RoI of zero width or height (after scaling, ``x2' <= x1'`` or ``y2' <= y1'``)
    gets no taps on either axis: its bins are 0 with zero gradients.
    """
    k_total = rois.shape[0]
    t = rois.dtype.type
    batch = np.empty(k_total, np.int32)
    cost = np.empty(k_total, np.int64)
    hptr = np.empty((k_total, pooled_h + 1), np.int64)
    wptr = np.empty((k_total, pooled_w + 1), np.int64)
    geom = np.empty((k_total, 4), rois.dtype)  # y1', bin_h, x1', bin_w
    hcap = 0
    wcap = 0
    overflow = -1
    for k in range(k_total):
        batch[k] = int(rois[k, 0])
        x1 = rois[k, 1] * spatial_scale
        y1 = rois[k, 2] * spatial_scale
        x2 = rois[k, 3] * spatial_scale
        y2 = rois[k, 4] * spatial_scale
        if not (np.isfinite(x2 - x1) and np.isfinite(y2 - y1)):  # an extent is finite only if both its corners are
            overflow = k
            break
        bin_w = max(x2 - x1, t(0.0)) / t(pooled_w)
        bin_h = max(y2 - y1, t(0.0)) / t(pooled_h)
        if not (bin_h > 0 and bin_w > 0):
            bin_h = t(0.0)
            bin_w = t(0.0)
        geom[k, 0] = y1
        geom[k, 1] = bin_h
        geom[k, 2] = x1
        geom[k, 3] = bin_w
        hcap += pooled_h * _max_taps(bin_h, height)
        wcap += pooled_w * _max_taps(bin_w, width)
    hidx = np.empty(hcap, np.int32)
    widx = np.empty(wcap, np.int32)
    hwt = np.empty((3, hcap), rois.dtype)
    wwt = np.empty((3, wcap), rois.dtype)
    hpos = wpos = ZERO  # a plain int64, not the literal 0: one compiled _axis_taps
    for k in range(k_total if overflow < 0 else 0):
        hpos = _axis_taps(geom[k, 0], geom[k, 1], height, spatial_scale, hptr[k], hidx, hwt, hpos)
        wpos = _axis_taps(geom[k, 2], geom[k, 3], width, spatial_scale, wptr[k], widx, wwt, wpos)
        cost[k] = (hptr[k, pooled_h] - hptr[k, 0]) * (wptr[k, pooled_w] - wptr[k, 0]) + pooled_h * pooled_w
    return (
        batch, hptr, hidx[:hpos], hwt[0, :hpos], hwt[1, :hpos], hwt[2, :hpos],
        wptr, widx[:wpos], wwt[0, :wpos], wwt[1, :wpos], wwt[2, :wpos], cost, overflow,
    )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _max_taps(bin_size, size):
    """Most cells one bin's hat functions can overlap: ``ceil(b) - floor(a) + 1 <= ceil(b - a) + 3``, within the map."""
    if bin_size <= 0 or size == 0:
        return 0
    return int(min(np.ceil(bin_size) + 3.0, float(size)))


@numba.njit(cache=True, nogil=True)
def _axis_taps(start, bin_size, size, scale, ptr, idx, wt, pos):
    """Taps of each bin along one axis appended at ``pos`` (``wt[0]`` weights, ``wt[1]``,
    ``wt[2]``: derivatives with respect to the box's first and second coordinate); returns the new ``pos``."""
    t = type(bin_size)
    pooled = ptr.shape[0] - 1
    for p in range(pooled):
        ptr[p] = pos
        if bin_size <= 0:
            continue
        a = start + bin_size * t(p)
        b = a + bin_size
        # the two bin edges move with the box corners: a = x1' + p * (x2' - x1') / P
        da_1 = scale * (t(1.0) - t(p) / t(pooled))
        db_1 = scale * (t(1.0) - t(p + 1) / t(pooled))
        da_2 = scale * (t(p) / t(pooled))
        db_2 = scale * (t(p + 1) / t(pooled))
        d = b - a  # the bin's actual length: the weights then sum to 1 to rounding
        if d > 0:
            lo = max(np.floor(a), t(0.0))
            hi = min(np.ceil(b), t(size - 1))
        else:
            # a bin narrower than the spacing of floats at its position: the
            # limit of the mean, the value at a (derivatives +-1/2 of the slope
            # just right of a)
            lo = max(np.floor(a), t(0.0))
            hi = min(np.floor(a) + t(1.0), t(size - 1))
        if lo > hi:
            continue
        for i in range(int(lo), int(hi) + 1):
            if d > 0:
                w, dwa, dwb = _hat_average(a, b, d, t(i))
            else:
                w = max(t(1.0) - abs(a - t(i)), t(0.0))
                dwa = dwb = t(0.5) if t(i) > a else t(-0.5)
            if w == 0 and dwa == 0 and dwb == 0:
                continue
            idx[pos] = i
            wt[0, pos] = w
            wt[1, pos] = dwa * da_1 + dwb * db_1
            wt[2, pos] = dwa * da_2 + dwb * db_2
            pos += 1
    ptr[pooled] = pos
    return pos


@numba.njit(cache=True, nogil=True, inline="always")
def _hat_average(a, b, d, i):
    """``(w, dw/da, dw/db)``: the mean of ``hat(t - i)`` over ``[a, b]`` (length ``d``) and its
    derivatives with respect to the ends, in the cancellation-free form of the module docstring."""
    one = type(d)(1.0)
    half = type(d)(0.5)
    sa = max(a, i - one)
    ea = min(b, i)
    sb = max(a, i)
    eb = min(b, i + one)
    w = type(d)(0.0)
    dwa = type(d)(0.0)
    dwb = type(d)(0.0)
    # Midpoints enter only as offsets from the ends, (sa - a) + la / 2 and so
    # on: (sa + ea) / 2 - a would lose the digits of a piece far shorter than a.
    if ea > sa:
        la = ea - sa
        fa = la / d
        w += fa * ((sa - (i - one)) + half * la)
        dwb += fa * (((sa - a) + half * la) / d)
        dwa += fa * (((b - ea) + half * la) / d)
    if eb > sb:
        lb = eb - sb
        fb = lb / d
        w += fb * (((i + one) - eb) + half * lb)
        dwb -= fb * (((sb - a) + half * lb) / d)
        dwa -= fb * (((b - eb) + half * lb) / d)
    return w, dwa, dwb


@numba.njit(cache=True, nogil=True)
def boxes_backward(
    xb, grad_out, go_nhwc, batch, hptr, hidx, hwt, hd1, hd2, wptr, widx, wwt, wd1, wd2, bounds, grad_boxes, part, parts
):
    """``grad_boxes (K, 4)`` <- the gradient with respect to ``[x1, y1, x2, y2]`` of every RoI.

    ``xb`` is the map in the channel-blocked layout of ``roi_align.channel_blocks``;
    ``grad_out (K, C, PH * PW)`` (or, ``go_nhwc``, ``(K, PH * PW, C)``) C-contiguous; taps
    from :func:`prroi_taps`.
    Runs of RoIs (``bounds``) go to threads; each RoI is summed by one thread
    in a fixed order (channel block, bin row, bin), so the result is the same
    for any thread count.
    """
    xb, grad_out, batch, hptr, hidx, hwt, hd1, hd2, wptr, widx, wwt, wd1, wd2, bounds, grad_boxes = borrowed(
        (xb, grad_out, batch, hptr, hidx, hwt, hd1, hd2, wptr, widx, wwt, wd1, wd2, bounds, grad_boxes)
    )
    _, channels, height, width = xb.shape
    xf = xb.reshape(-1)
    gof = grad_out.reshape(-1)
    nbins = grad_out.shape[1] if go_nhwc else grad_out.shape[2]
    plane = height * width
    block = align.UNROLL * vector_lanes(xb)
    pooled_h = hptr.shape[1] - 1
    pooled_w = wptr.shape[1] - 1
    for run in share(bounds.shape[0] - 1, part, parts):
        g = scratch_lines(nbins * block, xb)
        line = scratch_lines(width * block, xb)
        line_d1 = scratch_lines(width * block, xb)
        line_d2 = scratch_lines(width * block, xb)
        e1 = np.empty(block, xb.dtype)
        e2 = np.empty(block, xb.dtype)
        acc = np.empty(4 * block, xb.dtype)  # x1, y1, x2, y2, a vector of channel lanes each
        lines, row_weights = (line, line_d1, line_d2), (hwt, hd1, hd2)
        for k in range(bounds[run], bounds[run + 1]):
            acc[:] = 0
            hp = hptr[k]
            wp = wptr[k]
            if hp[pooled_h] > hp[0] and wp[pooled_w] > wp[0]:
                cmin, cspan = align._column_span(wp, widx)
                for c0 in range(0, channels, block):
                    cw = min(block, channels - c0)
                    origin = (batch[k] * channels + c0) * plane
                    load_tile(gof, k, channels, c0, nbins, cw, g, block, go_nhwc)
                    # Each bin row's rows are read once (from L3 on a large map) and combined three
                    # ways over the RoI's columns: by the row weights, for the column derivatives
                    # (x1, x2), and by the two row derivatives, for y1 and y2 (the cells are in L1
                    # for the second and third); then each bin of the row from those lines. The
                    # three ways share one inlined gather in a loop (seven inlined copies made the
                    # first call compile in 12.5 s, five in 9.2); the bins' four gathers go in two
                    # pairs, a loop of two (9.9 -> 6.7 s for this kernel; calls within 2%, eight
                    # pairs of processes): all four in one loop compiled in 5.2 s, but called 5% slower.
                    for ph in range(pooled_h):
                        i0, i1 = hp[ph], hp[ph + 1]
                        for u in range(cspan):
                            at = origin + (cmin + u) * cw
                            for way in range(3):
                                align._gather(
                                    xf, at, width * cw, hidx, row_weights[way], i0, i1, lines[way], u * block, cw
                                )
                        for pw in range(pooled_w):
                            j0, j1, t = wp[pw], wp[pw + 1], (ph * pooled_w + pw) * block
                            for way in range(2):
                                src1, w1, src2, w2 = (
                                    (line, wd1, line, wd2) if way == 0 else (line_d1, wwt, line_d2, wwt)
                                )
                                align._gather(src1, -cmin * block, block, widx, w1, j0, j1, e1, 0, cw)
                                align._gather(src2, -cmin * block, block, widx, w2, j0, j1, e2, 0, cw)
                                _accumulate(acc, way * block, (2 + way) * block, e1, e2, g, t, cw)
            for q in range(4):
                total = acc[q * block]
                for c in range(1, block):
                    total += acc[q * block + c]
                grad_boxes[k, q] = total


@numba.njit(cache=True, nogil=True, fastmath={"contract"}, inline="always")
def _accumulate(acc, at1, at2, e1, e2, g, t, cw):
    """``acc[at1 + c] += e1[c] * g[t + c]`` and ``acc[at2 + c] += e2[c] * g[t + c]`` for ``c < cw``."""
    # unsigned indices: with signed ones (and no prange around it since the eleventh session)
    # Numba's negative-index checks kept this loop from vectorising, 264 -> 440 ms on maskrcnn
    for c in range(np.uint64(cw)):
        acc[np.uint64(at1) + c] += e1[c] * g[np.uint64(t) + c]
        acc[np.uint64(at2) + c] += e2[c] * g[np.uint64(t) + c]


# ---- launchers: the NumPy and torch frontends call these ----


class PrRoITaps(BalancedRuns):
    """The taps of every RoI of one call and the split of the RoIs into balanced runs.

    ``rois (K, 5)`` validated (``_checks.rois_array``) in the compute dtype;
    raises ``ValueError`` for a box whose scaled corners or extent overflow
    the compute dtype. :attr:`arrays` is what the RoIAlign kernels take.
    """

    def __init__(self, rois, spatial_scale, pooled_h, pooled_w, height, width):
        self.pooled_h, self.pooled_w = pooled_h, pooled_w
        self.num_rois = rois.shape[0]
        _checks.geometry_limits(pooled_h, pooled_w)
        scale = _checks.scale_in_dtype(spatial_scale, rois.dtype)
        (
            self.batch, self.hptr, self.hidx, self.hwt, self.hd1, self.hd2,
            self.wptr, self.widx, self.wwt, self.wd1, self.wd2, self.cost, overflow,
        ) = prroi_taps(rois, scale, pooled_h, pooled_w, height, width)  # fmt: skip
        # the taps' pass also finds a box that overflows (_checks.scaled_boxes_finite's rule)
        _checks.overflowing_box(rois, overflow, scale)

    @property
    def arrays(self):
        return self.batch, self.hptr, self.hidx, self.hwt, self.wptr, self.widx, self.wwt

    @property
    def derivative_arrays(self):
        return (
            self.batch, self.hptr, self.hidx, self.hwt, self.hd1, self.hd2,
            self.wptr, self.widx, self.wwt, self.wd1, self.wd2,
        )  # fmt: skip


# The forward and the input gradient are RoIAlign's kernels on PrRoI's taps.
launch_forward = align.launch_forward
launch_backward = align.launch_backward


def launch_boxes_backward(grad_out, x, taps: PrRoITaps, grad_boxes) -> None:
    """``grad_boxes (K, 4)`` <- the gradient with respect to ``[x1, y1, x2, y2]``, given
    ``grad_out (K, C, PH, PW)`` (any strides) and the forward's input ``x``."""
    if not grad_boxes.size:
        return
    if not grad_out.size:
        grad_boxes[...] = 0
        return
    go, go_nhwc = bins_order(grad_out, copy=True)
    xb = align.blocked_map(x)
    values = xb.size + go.size
    launch(boxes_backward, xb, go, go_nhwc, *taps.derivative_arrays, taps.runs(values), grad_boxes, values=values)

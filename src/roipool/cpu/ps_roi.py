"""Position-sensitive RoI pooling on the CPU (ps_roi_pool and ps_roi_align): Numba kernels and their launchers.

Both ops share these kernels: a bin's value is ``sum_r sum_c wy[r] wx[c] x[r, c]``
over the separable taps computed by ``ps_geometry`` (weights 1 and a
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

Box gradient (ps_roi_align): one task per RoI, which visits its samples in a
fixed order (:func:`align_boxes_backward`); also the same bits for any thread count.
"""

from __future__ import annotations

import numba
import numpy as np

from .. import _checks
from . import _parallel
from ._parallel import balanced_chunks, launch, share
from ._simd import borrowed, empty_lines
from .ps_geometry import (
    _align_axis,
    align_coord_limit,
    first_sample,
    next_sample,
    ps_roi_align_taps,
    ps_roi_pool_taps,
    sample_position,
    sample_window,
    samples_between,
)


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


@numba.njit(cache=True, nogil=True)
def forward(x, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, tasks, out, part, parts):
    """``out (B, K, C_out)`` <- weighted bin sums of ``x (B, N, H, W, C_out)``.

    ``tasks (T, 3)`` rows ``[bin, k0, k1]``: bin ``bin`` of RoIs ``k0 .. k1 - 1``.
    A task reads one bin's slab ``x[bin]`` only, so that slab stays in cache
    while many RoIs read it. With ``mean`` each sum is divided by the bin's
    area ``rows * cols`` (0 for an empty bin), as ps_roi_pool does; otherwise
    the weights already average.
    """
    x, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, tasks, out = borrowed(
        (x, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, tasks, out)
    )
    for t in share(tasks.shape[0], part, parts):
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


@numba.njit(cache=True, nogil=True)
def backward(
    grad_out, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, tasks, grad_in, part, parts
):
    """``grad_in (B, N, H, W, C_out)`` += the adjoint of :func:`forward` applied to
    ``grad_out (B, K, C_out)``.

    ``tasks (T, 3)`` rows ``[bin, c0, c1]`` partition bins x channels; each
    task writes only ``grad_in[bin, ..., c0:c1]`` and adds the RoIs in
    ascending order.
    """
    grad_out, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, tasks, grad_in = borrowed(
        (grad_out, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, tasks, grad_in)
    )
    for t in share(tasks.shape[0], part, parts):
        _backward_task(grad_out, batch, y_first, y_count, y_weight, x_first, x_count, x_weight, mean, tasks[t], grad_in)


# ---- layout changes (NumPy's transpose is slow when the inner dimension is short) ----


# RoIs are moved in blocks so that every write fills whole cache lines.
_BLOCK = 32


@numba.njit(cache=True, nogil=True)
def rois_last(src, dst, part, parts):
    """``dst (K, C_out, B)`` <- ``src (B, K, C_out)``."""
    src, dst = borrowed((src, dst))
    nbins, k_total, channels = src.shape
    for blk in share((k_total + _BLOCK - 1) // _BLOCK, part, parts):
        k1 = min(k_total, (blk + 1) * _BLOCK)
        for b in range(nbins):
            for k in range(blk * _BLOCK, k1):
                for c in range(channels):
                    dst[k, c, b] = src[b, k, c]


@numba.njit(cache=True, nogil=True)
def bins_first(src, dst, part, parts):
    """``dst (B, K, C_out)`` <- ``src (K, C_out, B)``, the inverse of :func:`rois_last`."""
    src, dst = borrowed((src, dst))
    k_total, channels, nbins = src.shape
    for blk in share((k_total + _BLOCK - 1) // _BLOCK, part, parts):
        k1 = min(k_total, (blk + 1) * _BLOCK)
        for b in range(nbins):
            for k in range(blk * _BLOCK, k1):
                for c in range(channels):
                    dst[b, k, c] = src[k, c, b]


@numba.njit(cache=True, nogil=True)
def channels_first(src, dst, part, parts):
    """``dst (N, C_out, B, H, W)`` <- ``src (B, N, H, W, C_out)``: read in order, write C_out streams."""
    src, dst = borrowed((src, dst))
    nbins, n_total, height, width, channels = src.shape
    for task in share(n_total * nbins, part, parts):
        n = task // nbins
        b = task - n * nbins
        for h in range(height):
            for w in range(width):
                for c in range(channels):
                    dst[n, c, b, h, w] = src[b, n, h, w, c]


# ---- launchers: the geometry of one call, layouts, and the launch of its kernels on every thread ----


class PSRoITaps:
    """The geometry of one call: batch indices and per-axis taps of every RoI (``ps_geometry``).

    Built by :meth:`pool` (ps_roi_pool: weights 1, the kernel divides by the
    bin area) or :meth:`align` (ps_roi_align: bilinear sample weights that
    already average). ``rois`` is a validated ``(K, 5)`` array of the compute
    dtype (``_checks.rois_array``).
    """

    def __init__(self, rois, output_size, taps, mean: bool):
        self.pooled_h, self.pooled_w = output_size
        self.num_rois = rois.shape[0]
        self.dtype = rois.dtype
        self.batch = taps[0]
        self.axes = taps[1:7]  # y_first, y_count, y_weight, x_first, x_count, x_weight
        self.cost = taps[7]
        self.mean = mean

    @classmethod
    def pool(cls, rois, output_size, spatial_scale, height, width) -> PSRoITaps:
        scale = _checks.scale_in_dtype(spatial_scale, rois.dtype)
        return cls(rois, output_size, ps_roi_pool_taps(rois, scale, *output_size, height, width), mean=True)

    @classmethod
    def align(cls, rois, output_size, spatial_scale, sampling_ratio, height, width) -> PSRoITaps:
        dtype = rois.dtype
        _checks.geometry_limits(*output_size, sampling_ratio)
        scale = _checks.scale_in_dtype(spatial_scale, dtype)
        taps = ps_roi_align_taps(
            rois,
            scale,
            *output_size,
            height,
            width,
            sampling_ratio,
            align_coord_limit(dtype),
        )
        return cls(rois, output_size, taps, mean=False)


def bin_major(x, nbins: int, dtype) -> np.ndarray:
    """``x (N, C_out * B, H, W)`` copied bin-major and channels-last, ``(B, N, H, W, C_out)`` of
    ``dtype``: the ``C_out`` channels a bin reads are contiguous."""
    n, channels, height, width = x.shape
    xb = empty_lines((nbins, n, height, width, channels // nbins), dtype)
    xb[...] = x.reshape(n, channels // nbins, nbins, height, width).transpose(2, 0, 3, 4, 1)
    return xb


def launch_forward(input, taps: PSRoITaps, result=None) -> np.ndarray:
    """``(K, C_out, PH, PW)`` in the taps' dtype (the compute dtype) from a checked ``input (N, C, H, W)``;
    written into ``result`` when given (C-contiguous, of that shape and dtype: a caller's buffer)."""
    dtype = taps.dtype
    n, channels, height, width = input.shape
    output_size = (taps.pooled_h, taps.pooled_w)
    nbins = taps.pooled_h * taps.pooled_w
    channels_out = channels // nbins
    # a map without cells pools to zeros; otherwise the kernel writes every (bin, RoI)
    out = empty_lines((nbins, taps.num_rois, channels_out), dtype, zeros=not (height and width))
    if out.size and height and width:
        x = bin_major(input, nbins, dtype)
        if _small(taps, channels_out):  # on this thread, as the one part there is
            forward(x, taps.batch, *taps.axes, taps.mean, _forward_tasks(nbins, taps.cost, 1), out, 0, 1)
        else:
            launch(
                forward,
                x,
                taps.batch,
                *taps.axes,
                taps.mean,
                _forward_tasks(nbins, taps.cost),
                out,
                values=x.size + out.size,
            )
    rows = None if result is None else result.reshape(taps.num_rois, channels_out, nbins)  # a view
    if out.size < _SMALL_LAYOUT:
        if rows is None:
            rows = np.ascontiguousarray(out.transpose(1, 2, 0))
        else:
            rows[...] = out.transpose(1, 2, 0)
    else:
        if rows is None:
            rows = empty_lines((taps.num_rois, channels_out, nbins), dtype)
        launch(rois_last, out, rows, values=out.size)
    return rows.reshape(taps.num_rois, channels_out, *output_size)


def launch_backward(grad_output, taps: PSRoITaps, input_shape) -> np.ndarray:
    """``grad_input (N, C, H, W)`` in the taps' dtype from a checked ``grad_output (K, C_out, PH, PW)``."""
    dtype = taps.dtype
    n, channels, height, width = input_shape
    nbins = taps.pooled_h * taps.pooled_w
    channels_out = channels // nbins
    # every element is written below (the layout change covers all of it) unless nothing is pooled
    written = bool(grad_output.size and height and width)
    grad_in = empty_lines(input_shape, dtype, zeros=not written)
    if written:
        go = np.ascontiguousarray(grad_output, dtype).reshape(taps.num_rois, channels_out, nbins)
        g = np.zeros((nbins, n, height, width, channels_out), dtype)
        grad_nc = grad_in.reshape(n, channels_out, nbins, height, width)
        # (K, C_out, B) -> (B, K, C_out): a bin's gradients for all RoIs together; then the
        # kernel; then (B, N, H, W, C_out) -> (N, C_out, B, H, W), which is (N, C, H, W)
        if _small(taps, channels_out):
            go_bins = np.ascontiguousarray(go.transpose(2, 0, 1))
            tasks = _backward_tasks(nbins, channels_out, 1)
            backward(go_bins, taps.batch, *taps.axes, taps.mean, tasks, g, 0, 1)  # on this thread alone
        else:
            go_bins = empty_lines((nbins, taps.num_rois, channels_out), dtype)
            launch(bins_first, go, go_bins, values=go.size)
            launch(
                backward,
                go_bins,
                taps.batch,
                *taps.axes,
                taps.mean,
                _backward_tasks(nbins, channels_out),
                g,
                values=go.size + g.size,
            )
        if g.size < _SMALL_LAYOUT:
            grad_nc[...] = g.transpose(1, 4, 0, 2, 3)
        else:
            launch(channels_first, g, grad_nc, values=g.size)
    return grad_in


@numba.njit(cache=True, nogil=True, inline="always")
def _axis_slope(pos, size):
    """``(low, high, frac, free)`` of a sample at ``pos`` in ``[-1, size]`` on an axis of ``size``
    cells: its bilinear corners, the weight ``frac`` of ``high`` (float64), and 1.0 where
    ``pos`` is inside the clamped range (the sample moves with it), 0.0 where it is clamped
    at 0 or at the last cell (``reference.bilinear_position_grad``'s rules)."""
    if pos <= 0:
        low, frac, free = 0, 0.0, 0.0
    else:
        low = int(pos)
        frac, free = float(pos) - low, 1.0
    if low >= size - 1:
        return size - 1, size - 1, 0.0, 0.0
    return low, low + 1, frac, free


@numba.njit(cache=True, nogil=True, inline="always", fastmath=False)
def _moving_run(start, size, g, i, end, runs, limit, p, pooled, dtype):
    """Sample ``i`` of bin ``p``'s ``sample_window`` on one axis (with ``runs``, the run of samples
    at its position) for the box gradient: ``(after, on_map, low, high, frac, free, m, a)``:
    the next sample to visit, whether this one lies in ``[-1, limit]``, then
    :func:`_axis_slope`'s corners, weight and freedom, the samples it stands for, and their
    mean ``a = (p + (i + 0.5) / g) / pooled`` (0.5 for an empty bin, whose one sample stands
    for all)."""
    pos = sample_position(start, size, g, i, dtype)
    after = next_sample(start, size, g, i, pos, end, runs, dtype)
    if not (pos >= -1 and pos <= limit):
        return after, False, 0, 0, 0.0, 0.0, 0.0, 0.0
    first, m = (first_sample(i, g), samples_between(i, after, g)) if runs else (i, 1.0)
    a = (p + (0.5 if size == 0 else (first + 0.5 * m) / g)) / pooled
    low, high, frac, free = _axis_slope(pos, limit)
    return after, True, low, high, frac, free, m, a


@numba.njit(cache=True, nogil=True, fastmath=False)
def _axis_moves(start, size, g, p, limit, pooled, share, dtype, w, s1, s2):
    """One axis of bin ``p`` for the box gradient, summed over its samples (each run of samples
    at one position once, times its length ``m``): ``w[r]``, their bilinear weights on cell
    ``r``, and ``s1[r]``, ``s2[r]``, how the samples whose lower corner is ``r`` and that move
    with the box (not clamped) move with its first and second corner, ``share * (1 - a) * m``
    and ``share * a * m``. The arrays must be zero on ``[0, limit)``; returns the cells
    ``(lo, hi)`` touched (``hi < lo``: none)."""
    bin_start = dtype.type(p) * size + start
    i, end, runs = sample_window(bin_start, size, g, limit, dtype)
    lo, hi = limit, -1
    while i < end:
        after, on_map, low, high, frac, free, m, a = _moving_run(
            bin_start, size, g, i, end, runs, limit, p, pooled, dtype
        )
        if on_map:
            w[low] += (1.0 - frac) * m
            w[high] += frac * m
            s1[low] += free * share * (1.0 - a) * m
            s2[low] += free * share * a * m
            lo, hi = min(lo, low), max(hi, high)
        i = after
    return lo, hi


@numba.njit(cache=True, nogil=True)
def align_boxes_backward(xb, grad_out, rois, spatial_scale, sampling_ratio, coord_limit, grad_rois, part, parts):
    """``grad_rois[k, 1:]`` <- ps_roi_align's gradient with respect to the corners of each RoI ``k`` of ``part``.

    ``xb (B, N, H, W, C_out)``: the map bin-major and channels-last, as the
    forward copies it (the ``C_out`` channels a bin reads are contiguous);
    ``grad_out (K, C_out, PH, PW)``, both in the compute dtype of ``rois (K, 5)``
    (validated), any strides; ``spatial_scale`` in that dtype;
    ``coord_limit`` as for ``ps_roi_align_taps``. Samples are placed exactly as
    the forward's taps place them (``ps_geometry._align_axis`` and
    ``sample_window``: in the compute dtype, only those that land on the map
    visited, a run at one position once); each moves along the slope of its
    bilinear piece on the bin's own channel, summed in float64
    (``reference.ps_roi_align_boxes_backward``).

    Separably, as the forward: a sample's move along ``y`` weighs the row slope
    ``v[r + 1, c] - v[r, c]`` by its column's bilinear weight, so each axis's samples are
    summed per cell first (:func:`_axis_moves`) and a bin costs its cells, not the product of
    its two sample counts (``sampling_ratio=2**10`` is 2**20 samples a bin).
    """
    _, _, height, width, _ = xb.shape
    k_total, channels_out, pooled_h, pooled_w = grad_out.shape
    dtype = rois.dtype
    T = dtype.type
    limit = T(coord_limit)
    geo = np.empty((2, 3), np.float64)
    acc = np.empty((4, channels_out), np.float64)
    # per bin row: weights and moves of each map row; per bin column (all of them): of each column
    rows = np.empty((3, height), np.float64)
    cols = np.empty((pooled_w, 3, width), np.float64)
    col_span = np.empty((pooled_w, 2), np.int64)
    for k in share(k_total, part, parts):
        n = int(rois[k, 0])
        _align_axis(rois[k, 2], rois[k, 4], spatial_scale, pooled_h, sampling_ratio, coord_limit, dtype, geo[0])
        _align_axis(rois[k, 1], rois[k, 3], spatial_scale, pooled_w, sampling_ratio, coord_limit, dtype, geo[1])
        start_h, bin_h, g_h = T(geo[0, 0]), T(geo[0, 1]), geo[0, 2]
        start_w, bin_w, g_w = T(geo[1, 0]), T(geo[1, 1]), geo[1, 2]
        # every sample of the grid weighs 1 / (g_h * g_w); coincident ones (an empty extent) are visited once
        same_h = g_h if bin_h == 0 else 1.0
        same_w = g_w if bin_w == 0 else 1.0
        weight = same_h * same_w / (g_h * g_w)
        cols[:] = 0.0
        for pw in range(pooled_w):
            c = cols[pw]
            col_span[pw, 0], col_span[pw, 1] = _axis_moves(
                start_w, bin_w, g_w, pw, width, pooled_w, weight, dtype, c[0], c[1], c[2]
            )
        d_x1 = d_y1 = d_x2 = d_y2 = 0.0
        for ph in range(pooled_h):
            rows[:] = 0.0
            r_lo, r_hi = _axis_moves(
                start_h, bin_h, g_h, ph, height, pooled_h, weight, dtype, rows[0], rows[1], rows[2]
            )
            for pw in range(pooled_w):
                b = ph * pooled_w + pw
                c_lo, c_hi = col_span[pw, 0], col_span[pw, 1]
                wx, sx1, sx2 = cols[pw, 0], cols[pw, 1], cols[pw, 2]
                # per channel: row slopes weighed by the column weights and the rows' moves, column
                # slopes by the row weights and the columns' moves (a loop over the channels that
                # vectorises); then dotted with the bin's gradients
                acc[:] = 0.0
                for r in range(r_lo, r_hi + 1):
                    for c in range(c_lo, c_hi + 1):
                        y1, y2 = rows[1, r] * wx[c], rows[2, r] * wx[c]
                        x1, x2 = rows[0, r] * sx1[c], rows[0, r] * sx2[c]
                        if y1 == 0.0 and y2 == 0.0 and x1 == 0.0 and x2 == 0.0:
                            continue
                        v = xb[b, n, r, c]
                        below = xb[b, n, min(r + 1, height - 1), c]  # read only where rows move (r + 1 < H)
                        right = xb[b, n, r, min(c + 1, width - 1)]
                        for ch in range(channels_out):
                            dy = float(below[ch]) - float(v[ch])
                            dx = float(right[ch]) - float(v[ch])
                            acc[0, ch] += y1 * dy
                            acc[1, ch] += y2 * dy
                            acc[2, ch] += x1 * dx
                            acc[3, ch] += x2 * dx
                for ch in range(channels_out):
                    g = float(grad_out[k, ch, ph, pw])
                    d_y1 += g * acc[0, ch]
                    d_y2 += g * acc[1, ch]
                    d_x1 += g * acc[2, ch]
                    d_x2 += g * acc[3, ch]
        # d corner / d coordinate: the scale, or 0 where the corner is held at the limit
        for j, d in ((1, d_x1), (2, d_y1), (3, d_x2), (4, d_y2)):
            scaled = rois[k, j] * spatial_scale
            grad_rois[k, j] = d * float(spatial_scale) if -limit < scaled < limit else 0.0


def launch_align_boxes_backward(x, grad_output, rois, output_size, spatial_scale, sampling_ratio) -> np.ndarray:
    """ps_roi_align's gradient with respect to ``rois (K, 5)`` (validated, in the compute dtype):
    ``(K, 5)`` float64, column 0 zero. ``x (N, C, H, W)`` and ``grad_output (K, C_out, PH, PW)``
    checked and in that dtype, any strides. The adaptive grid is held fixed (``docs/semantics.md``).

    The kernel reads the bin-major channels-last copy the forward reads: a bin's channels are
    then a few cache lines, not one line in each of ``C_out`` planes. On ``rfcn``, one thread
    of a 2-core AMD EPYC (Zen 4, AVX2): 58 ms reading the map in place, channel by channel;
    42.5 with the copy (1.1 ms of it); 35.9 summing each channel's slopes by sample first.
    """
    dtype = rois.dtype
    _checks.geometry_limits(*output_size, sampling_ratio)
    scale = _checks.scale_in_dtype(spatial_scale, dtype)
    k = rois.shape[0]
    grad_rois = np.zeros((k, 5), np.float64)
    n, channels, height, width = x.shape
    nbins = output_size[0] * output_size[1]
    channels_out = channels // nbins
    if k and channels_out and height and width:
        xb = bin_major(x, nbins, dtype)
        args = (xb, grad_output, rois, scale, sampling_ratio, align_coord_limit(dtype), grad_rois)
        launch(align_boxes_backward, *args, values=4 * grad_output.size, tasks=k)
    return grad_rois


# Below these sizes a parallel launch costs more than it saves (waking the
# pool takes tens of microseconds, and much more on a loaded machine).
_SMALL_WORK = 200_000  # multiply-adds: cells read x output channels
_SMALL_LAYOUT = 1 << 16  # elements moved by a layout change


def _small(taps: PSRoITaps, channels_out: int) -> bool:
    return int(taps.cost.sum()) * channels_out < _SMALL_WORK


def _forward_tasks(nbins: int, cost: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Rows ``[bin, k0, k1]``: every bin, with the RoIs cut into runs of equal cost, one per thread."""
    if threads == 1:
        bounds = np.array([0, len(cost)], np.int64)
    else:
        bounds = balanced_chunks(cost, pieces_per_thread=1)
    runs = np.column_stack([bounds[:-1], bounds[1:]])
    return np.column_stack([np.repeat(np.arange(nbins), len(runs)), np.tile(runs, (nbins, 1))]).astype(np.int64)


def _backward_tasks(nbins: int, channels_out: int, threads: int | None = None) -> np.ndarray:
    """Rows ``[bin, c0, c1]``: every bin, its channels split so that there are enough tasks."""
    wanted = 4 * (threads or _parallel.threads())
    pieces = max(1, min(channels_out, -(-wanted // nbins)))
    edges = np.linspace(0, channels_out, pieces + 1).round().astype(np.int64)
    return np.array([(b, edges[i], edges[i + 1]) for b in range(nbins) for i in range(pieces)], np.int64)

"""``@triton.jit`` helpers shared by the RoI kernels.

Each helper restates, for one program's lanes, a rule that
``roipool.cpu.geometry`` and ``roipool.reference`` define on the CPU; the kernels
call these instead of writing the rule again.

Two facts about Triton shape them:

* ``a / b`` on float32 compiles to the approximate ``div.full.f32`` (2 ulp).
  Bin sizes decide which cells a bin covers, so every division here goes
  through :func:`div_exact` (IEEE round-to-nearest for float32 and float64).
* The launchers pass ``enable_fp_fusion=False``: a fused multiply-add rounds
  once where the CPU path rounds twice, which can move a bin edge or a
  sampling point by one ulp and so pick a different cell.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Rounded box corners are clamped to +-2**30 cells, as roipool.cpu.geometry.COORD_LIMIT.
COORD_LIMIT = tl.constexpr(1073741824.0)
# roi_align's adaptive grid is capped at 2**31 - 1 samples per bin side, as roipool.cpu.geometry.GRID_LIMIT.
GRID_LIMIT = tl.constexpr(2147483647)
# ps_roi_align's adaptive grid has no cap (roipool.cpu.ps_geometry); its sample indices stop at 2**62.
INDEX_LIMIT = tl.constexpr(4611686018427387904.0)
# Up to this many samples per bin side every sample is visited, as roipool.cpu.geometry._WINDOW_MIN_GRID;
# past it only those that can land on the map (sample_window), and past RUN_MIN_GRID a run of samples
# at one position once.
WINDOW_MIN_GRID = tl.constexpr(32)
RUN_MIN_GRID = tl.constexpr(1024)


@triton.jit
def div_exact(a, b):
    """``a / b`` rounded to nearest (float32 or float64)."""
    if a.dtype == tl.float64:
        return a / b
    else:
        # div_rn, not fdiv(ieee_rounding=True): Triton 3.6 (the GPU machine's)
        # ignores that flag and emits the approximate div.full.f32.
        return tl.math.div_rn(a, b)


@triton.jit
def round_half_away(v):
    """C's ``round`` (halves away from zero) of a float, clamped to +-2**30, as int64."""
    mag = tl.abs(v)
    whole = tl.floor(mag)
    # mag - floor(mag) is exact, so the comparison with 0.5 is exact too.
    whole = tl.where(mag - whole >= 0.5, whole + 1.0, whole)
    whole = tl.minimum(whole, COORD_LIMIT).to(tl.int64)
    return tl.where(v >= 0, whole, -whole)


@triton.jit
def rounded_box(rois_ptr, k, scale):
    """Batch index and corners ``(n, x1, y1, x2, y2)`` of RoI ``k``: scaled, then :func:`round_half_away`.

    The box rule of ``roi_pool`` and ``ps_roi_pool``, as ``roipool.cpu.geometry.rounded_box``.
    """
    row = rois_ptr + k * 5
    n = tl.load(row).to(tl.int32)
    x1 = round_half_away(tl.load(row + 1) * scale)
    y1 = round_half_away(tl.load(row + 2) * scale)
    x2 = round_half_away(tl.load(row + 3) * scale)
    y2 = round_half_away(tl.load(row + 4) * scale)
    return n, x1, y1, x2, y2


@triton.jit
def pool_bin_edges(p, size, start, limit):
    """Cells ``[lo, hi)`` of max-pool bin ``p``: ``floor(p*size)``, ``ceil((p+1)*size)``.

    ``size`` is the bin size in the compute float type, ``start`` the RoI's
    first cell (int64); both ends are offset by ``start`` and clipped to
    ``[0, limit]``. ``hi <= lo`` means the bin is empty.
    """
    pf = tl.cast(p, size.dtype)
    lo = tl.floor(pf * size).to(tl.int64) + start
    hi = tl.ceil((pf + 1.0) * size).to(tl.int64) + start
    lo = tl.minimum(tl.maximum(lo, 0), limit)
    hi = tl.minimum(tl.maximum(hi, 0), limit)
    return lo, hi


@triton.jit
def bilinear_axis(y, size):
    """One axis of torchvision-style bilinear interpolation at coordinate ``y``.

    Returns ``(valid, low, high, w_low, w_high)``: ``valid`` is false for
    ``y`` outside ``[-1, size]`` (and for NaN), where the whole sample counts
    zero; otherwise ``y`` is clamped at 0, ``low = floor(y)`` and
    ``high = low + 1``, both pinned to ``size - 1`` at the far edge (where
    ``y`` itself becomes ``size - 1``), and the weights are ``1 - (y - low)``
    and ``y - low``. The 2-D weight of a corner is the product of its two
    axes' weights, so the backward kernels can treat the axes apart.
    """
    valid = (y >= -1.0) & (y <= size)
    y = tl.where(valid, y, 0.0)
    y = tl.where(y <= 0.0, 0.0, y)
    low = y.to(tl.int32)
    edge = low >= size - 1
    low = tl.where(edge, size - 1, low)
    high = tl.where(edge, size - 1, low + 1)
    y = tl.where(edge, tl.cast(low, y.dtype), y)
    w_high = y - tl.cast(low, y.dtype)
    w_low = 1.0 - w_high
    return valid, low, high, w_low, w_high


@triton.jit
def spans_overlap(lo, hi, first, last):
    """Whether the inclusive spans ``[lo, hi]`` and ``[first, last]`` meet (``hi < lo`` is empty)."""
    return (lo <= hi) & (lo <= last) & (hi >= first)


@triton.jit
def cast_rne(x, DTYPE: tl.constexpr):
    """``x`` (float32 or float64) rounded to nearest-even in ``DTYPE``.

    For bfloat16 the rounding is written out on the bits: the interpreter's
    float32-to-bfloat16 conversion truncates, and the kernels must round the
    same way on both (as torch's ``.to(torch.bfloat16)`` does).
    """
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, (bits >> 16) | 0x40, rounded)  # NaN stays a (quiet) NaN
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


@triton.jit
def store_spans(span_ptr, window_ptr, k, p, p_ok, first, last, POOLED: tl.constexpr, WINDOW_AT: tl.constexpr):
    """Write bin spans ``(K, POOLED, 2)`` and their union into ``window[k, WINDOW_AT:WINDOW_AT + 2]``."""
    first = first.to(tl.int32)
    last = last.to(tl.int32)
    row = span_ptr + (k * POOLED + p) * 2
    tl.store(row, first, mask=p_ok)
    tl.store(row + 1, last, mask=p_ok)
    used = p_ok & (first <= last)
    lo = tl.min(tl.where(used, first, 2147483647), axis=0)
    hi = tl.max(tl.where(used, last, -1), axis=0)
    tl.store(window_ptr + k * 4 + WINDOW_AT, lo)
    tl.store(window_ptr + k * 4 + WINDOW_AT + 1, hi)


@triton.jit
def sample_at(start, size, p, i, grid):
    """Sampling coordinate ``i`` of ``grid`` in bin ``p``: ``start + p*size + (i + 0.5)*size/grid``.

    The same association as torchvision's kernels: the bin's first edge, plus
    the offset inside the bin. ``p`` and ``i`` may be lane vectors; the rest are scalars.
    ``i + 0.5`` is rounded to the compute type as the CPU path rounds it: an integer
    ``grid`` (roi_align's) rounds ``i`` and then adds 0.5 (``cpu.geometry``), a float
    ``grid`` (ps_roi_align's, see :func:`sample_window`) rounds ``i + 0.5`` once, from
    float64 (``cpu.ps_geometry``); the two agree below ``2**24`` samples a side in float32
    (``2**52`` in float64), so ordinary grids are placed as before.
    """
    if grid.dtype.is_floating():
        half = (tl.cast(i, tl.float64) + 0.5).to(size.dtype)
    else:
        half = tl.cast(i, size.dtype) + 0.5
    offset = div_exact(half * size, tl.cast(grid, size.dtype))
    return (start + tl.cast(p, size.dtype) * size) + offset


@triton.jit
def _first_beyond(start, size, p, grid, lo, hi, bound, STRICT: tl.constexpr):
    """The first index in ``[lo, hi)`` (per lane, int64) whose sample lies beyond ``bound``, else ``hi``.

    Beyond means ``s * y > bound`` (``STRICT``) or ``s * y >= bound``, ``s`` the sign of ``size``:
    positions rise with the index for a positive bin size and fall for a negative one (every
    rounding step is monotone), so bisection finds it, in at most 63 halvings. A NaN position
    is never beyond, as in ``roipool.cpu.geometry._window``.
    """
    s = tl.where(size > 0, 1.0, -1.0).to(size.dtype)
    while tl.max((lo < hi).to(tl.int32), axis=0) > 0:
        mid = lo + (hi - lo) // 2
        y = s * sample_at(start, size, p, mid, grid)
        if STRICT:
            beyond = y > bound
        else:
            beyond = y >= bound
        searching = lo < hi
        hi = tl.where(searching & beyond, mid, hi)
        lo = tl.where(searching & ~beyond, mid + 1, lo)
    return lo


@triton.jit
def _run_end(start, size, p, grid, i, end):
    """The first index after ``i`` in ``[i, end)`` (per lane) whose sample lies elsewhere than
    sample ``i``'s, else ``end``; ``i`` itself on lanes where ``i >= end``."""
    s = tl.where(size > 0, 1.0, -1.0).to(size.dtype)
    here = s * sample_at(start, size, p, i, grid)
    after = i + 1
    # most samples lie apart from the next one: bisect only where one does not
    same = (after < end) & (s * sample_at(start, size, p, after, grid) <= here)
    if tl.max(same.to(tl.int32), axis=0) > 0:
        after = _first_beyond(start, size, p, grid, after, tl.where(same, end, after), here, True)
    return tl.where(i < end, after, i)


@triton.jit
def sample_window(start, size, p, grid, limit):
    """The samples of bins ``p`` (a lane vector) to visit: ``(first, end, steps, runs)``.

    ``[first, end)`` (int64, per lane) holds every sample of the bin that lies in
    ``[-1, limit]``: up to ``WINDOW_MIN_GRID`` samples a side the whole grid; past that no
    other sample (positions are monotone in the index, so bisection finds its ends, as
    ``roipool.cpu.geometry._window``; the samples skipped added nothing). ``steps`` (int64,
    per lane) is how many visits the loops make: ``end - first``, or with ``runs`` (a scalar,
    true past ``RUN_MIN_GRID`` samples a side) the number of runs of samples at one position,
    each visited once and weighed by its length (:func:`next_sample`). A run is longer than
    one sample only where a huge box rounds its positions together (float32 past about 2**24
    cells) or an empty one puts them all at one point.
    ``grid`` is an int (roi_align's, at most ``GRID_LIMIT``) or a whole float (ps_roi_align's,
    uncapped: only its first ``INDEX_LIMIT`` samples are indexed).
    """
    zero = p.to(tl.int64) * 0
    if grid.dtype.is_floating():
        total = tl.minimum(grid, INDEX_LIMIT).to(tl.int64)
    else:
        total = grid.to(tl.int64)
    first = zero
    end = zero + total
    steps = end
    runs = total > RUN_MIN_GRID
    if total > WINDOW_MIN_GRID:
        # falling positions (an inverted box): the window opens at limit and closes at -1
        rising = size > 0
        lower = tl.where(rising, -1.0, -(limit * 1.0)).to(size.dtype)
        upper = tl.where(rising, limit * 1.0, 1.0).to(size.dtype)
        first = _first_beyond(start, size, p, grid, zero, end, lower, False)
        end = _first_beyond(start, size, p, grid, first, end, upper, True)
        steps = end - first
        if runs:
            steps = zero
            i = first
            while tl.max((i < end).to(tl.int32), axis=0) > 0:
                steps += (i < end).to(tl.int64)
                i = _run_end(start, size, p, grid, i, end)
    return first, end, steps, runs


@triton.jit
def next_sample(start, size, p, grid, i, end, runs):
    """Where the lanes go after sample ``i`` of :func:`sample_window`'s ``[first, end)``: ``i + 1``,
    or with ``runs`` the end of ``i``'s run of samples at the same position (``i`` once past
    ``end``). ``next_sample(...) - i`` is how many samples the visit of ``i`` stands for."""
    after = i + 1
    if runs:
        after = _run_end(start, size, p, grid, i, end)
    return after


@triton.jit
def moving_sample(start, size, p, i, m, grid, limit, POOLED: tl.constexpr):
    """One axis of the run of ``m`` samples from ``i`` (lane vectors; ``m`` in the compute type, 1 but
    where :func:`next_sample` joins samples at one position) of bins ``p`` for a box gradient:
    ``bilinear_axis``'s ``(valid, low, high, w_low, w_high)``, then ``moves`` (false where the
    coordinate is clamped, at or below 0 or at the last cell, so the sample does not move along
    this axis) and ``a = (p + (i + m / 2) / grid) / POOLED``, for ``m = 1`` the sample's
    ``(p + (i + 0.5) / grid) / POOLED``: the sample sits at ``start' + a * extent``, so it
    moves by ``1 - a`` with the box's first corner and by ``a`` with its second (for a run,
    ``a`` is the mean over its samples)."""
    y = sample_at(start, size, p, i, grid)
    valid, low, high, w_low, w_high = bilinear_axis(y, limit)
    moves = (y > 0.0) & (low != high)
    a = tl.cast(p, size.dtype) + div_exact(tl.cast(i, size.dtype) + 0.5 * m, tl.cast(grid, size.dtype))
    a = div_exact(a, tl.full((), POOLED, size.dtype))
    return valid, low, high, w_low, w_high, moves, a


@triton.jit
def axis_step(start, size, p, grid, i, end, runs, limit, POOLED: tl.constexpr = 0):
    """One axis of the visit to sample ``i`` of :func:`sample_window`'s ``[first, end)`` (``p`` and
    ``i`` lane vectors): ``(after, ok, low, high, w_low, w_high)``. ``after`` is where the lanes go
    next (:func:`next_sample`), ``ok`` is :func:`bilinear_axis`'s ``valid`` and ``i < end``, and the
    weights are its weights times ``m = after - i`` (in the compute type), the samples the visit
    stands for. Given ``POOLED`` (bins a side, for a box gradient) the weights stay one sample's
    and ``(m, moves, a)`` follow, ``moves`` and ``a`` as :func:`moving_sample`'s."""
    after = next_sample(start, size, p, grid, i, end, runs)
    if POOLED:
        m = tl.cast(after - i, size.dtype)
        valid, low, high, w_low, w_high, moves, a = moving_sample(start, size, p, i, m, grid, limit, POOLED)
        return after, valid & (i < end), low, high, w_low, w_high, m, moves, a
    else:
        valid, low, high, w_low, w_high = bilinear_axis(sample_at(start, size, p, i, grid), limit)
        valid = valid & (i < end)
        m = tl.cast(after - i, size.dtype)
        return after, valid, low, high, w_low * m, w_high * m


@triton.jit
def bilinear_slopes(input_ptr, plane, width, mask, y_low, y_high, x_low, x_high, wy_low, wy_high, wx_low, wx_high, g):
    """``(g * d value / dy, g * d value / dx)`` of the bilinear samples at the given corners
    (``(BLOCK_C, BLOCK_P)``: ``plane`` the lanes' plane offsets, ``g`` their gradients), in ``g``'s
    dtype; 0 where ``mask`` is false."""
    v1 = tl.load(input_ptr + plane + (y_low * width + x_low)[None, :], mask=mask, other=0.0).to(g.dtype)
    v2 = tl.load(input_ptr + plane + (y_low * width + x_high)[None, :], mask=mask, other=0.0).to(g.dtype)
    v3 = tl.load(input_ptr + plane + (y_high * width + x_low)[None, :], mask=mask, other=0.0).to(g.dtype)
    v4 = tl.load(input_ptr + plane + (y_high * width + x_high)[None, :], mask=mask, other=0.0).to(g.dtype)
    d_y = g * (wx_low[None, :] * (v3 - v1) + wx_high[None, :] * (v4 - v2))
    d_x = g * (wy_low[None, :] * (v2 - v1) + wy_high[None, :] * (v4 - v3))
    return d_y, d_x


@triton.jit
def add_box_slopes(
    acc_x1, acc_y1, acc_x2, acc_y2, input_ptr, plane, g, c_ok, p_ok, ph, pw,
    start_h, size_h, grid_h, start_w, size_w, grid_w, height, width, scale,
    free_h, free_w, moves_x1, moves_y1, moves_x2, moves_y2,
    POOLED_H: tl.constexpr, POOLED_W: tl.constexpr,
):  # fmt: skip
    """The sums of a box gradient over one channel block, ``(BLOCK_C, BLOCK_P)`` each, plus every
    sample of bins ``(ph, pw)``: its slopes (:func:`bilinear_slopes`, weighed by ``g``) times how
    it moves with each corner. A sample moves by ``scale * (1 - a)`` with the first corner and
    ``scale * a`` with the second (:func:`moving_sample`); where the extent does not follow the
    box (``free_*`` false: RoIAlign's legacy one-cell extent) by ``scale`` with the first and not
    with the second; not at all with a corner whose ``moves_*`` is false (held at a limit).
    Only the samples of :func:`sample_window` are visited, a run of them at one position once.
    """
    iy0, iy_end, y_steps, y_runs = sample_window(start_h, size_h, ph, grid_h, height)
    ix0, ix_end, x_steps, x_runs = sample_window(start_w, size_w, pw, grid_w, width)
    iy = iy0
    for _ in range(tl.max(y_steps, axis=0)):
        iy_next, y_ok, y_low, y_high, wy_low, wy_high, my, y_moves, a_y = axis_step(
            start_h, size_h, ph, grid_h, iy, iy_end, y_runs, height, POOLED_H
        )
        m1_y = tl.where(moves_y1, scale * tl.where(free_h, 1.0 - a_y, 1.0), 0.0) * my
        m2_y = tl.where(moves_y2 & free_h, scale * a_y, 0.0) * my
        ix = ix0
        for _ in range(tl.max(x_steps, axis=0)):
            ix_next, x_ok, x_low, x_high, wx_low, wx_high, mx, x_moves, a_x = axis_step(
                start_w, size_w, pw, grid_w, ix, ix_end, x_runs, width, POOLED_W
            )
            m1_x = tl.where(moves_x1, scale * tl.where(free_w, 1.0 - a_x, 1.0), 0.0) * mx
            m2_x = tl.where(moves_x2 & free_w, scale * a_x, 0.0) * mx
            ok = p_ok & y_ok & x_ok
            d_y, d_x = bilinear_slopes(
                input_ptr, plane, width, c_ok[:, None] & ok[None, :],
                y_low, y_high, x_low, x_high, wy_low, wy_high, wx_low, wx_high, g,
            )  # fmt: skip
            # each of the run's mx columns (my rows) moves with the rows (columns) alike
            d_y = tl.where((ok & y_moves)[None, :], d_y, 0.0) * mx[None, :]
            d_x = tl.where((ok & x_moves)[None, :], d_x, 0.0) * my[None, :]
            acc_y1 += d_y * m1_y[None, :]
            acc_y2 += d_y * m2_y[None, :]
            acc_x1 += d_x * m1_x[None, :]
            acc_x2 += d_x * m2_x[None, :]
            ix = ix_next
        iy = iy_next
    return acc_x1, acc_y1, acc_x2, acc_y2


@triton.jit
def store_box_gradient(grad_rois_ptr, k, acc_x1, acc_y1, acc_x2, acc_y2, count):
    """Row ``k`` of ``grad_rois (K, 5)``, columns 1 to 4: each ``(BLOCK_C, BLOCK_P)`` sum over
    its lanes, divided by the sample ``count`` (column 0, the batch index, stays 0)."""
    out = grad_rois_ptr + k * 5
    tl.store(out + 1, div_exact(tl.sum(tl.sum(acc_x1, axis=1), axis=0), count))
    tl.store(out + 2, div_exact(tl.sum(tl.sum(acc_y1, axis=1), axis=0), count))
    tl.store(out + 3, div_exact(tl.sum(tl.sum(acc_x2, axis=1), axis=0), count))
    tl.store(out + 4, div_exact(tl.sum(tl.sum(acc_y2, axis=1), axis=0), count))


@triton.jit
def sample_spans(start, size, grid, p, limit):
    """Inclusive ``(first, last)`` cells that the samples of bins ``p`` (a lane vector) touch.

    Samples outside ``[-1, limit]`` touch nothing; ``last < first`` means no cell. Only the
    samples of :func:`sample_window` are visited.
    """
    first = tl.full(p.shape, 2147483647, tl.int32)
    last = tl.full(p.shape, -1, tl.int32)
    i0, end, steps, runs = sample_window(start, size, p, grid, limit)
    i = i0
    for _ in range(tl.max(steps, axis=0)):
        following = next_sample(start, size, p, grid, i, end, runs)
        valid, low, high, w_low, w_high = bilinear_axis(sample_at(start, size, p, i, grid), limit)
        valid = valid & (i < end)
        first = tl.where(valid, tl.minimum(first, low), first)
        last = tl.where(valid, tl.maximum(last, high), last)
        i = following
    return first, last


@triton.jit
def axis_weights(start, size, grid, p, cells, limit, ACC_DTYPE: tl.constexpr):
    """Summed bilinear weights along one axis that bin ``p``'s samples give ``cells`` (a lane vector).

    Returns ``(weight, touched)``: ``touched`` marks the cells some valid sample
    names as a corner (even with weight 0, so that a NaN or infinite gradient
    spreads exactly where a per-sample scatter would put it). Only the samples of
    :func:`sample_window` are visited, a run of them at one position once, weighed by its length.
    """
    weight = tl.zeros(cells.shape, ACC_DTYPE)
    touched = cells < 0
    bins = p + tl.zeros((1,), p.dtype)  # the bin as a one-lane vector, for sample_window
    i0, end, steps, runs = sample_window(start, size, bins, grid, limit)
    i = i0
    for _ in range(tl.max(steps, axis=0)):
        following = next_sample(start, size, bins, grid, i, end, runs)
        valid, low, high, w_low, w_high = bilinear_axis(sample_at(start, size, bins, i, grid), limit)
        valid = valid & (i < end)
        m = tl.cast(following - i, w_low.dtype)
        # an invalid sample names cell -1, which no lane holds
        at_low = cells == tl.where(valid, low, -1)
        at_high = cells == tl.where(valid, high, -1)
        weight += tl.where(at_low, w_low * m, 0.0) + tl.where(at_high, w_high * m, 0.0)
        touched = touched | at_low | at_high
        i = following
    return weight, touched


@triton.jit
def clamp_image(n, num_images):
    """The batch index pinned to ``[0, num_images)``.

    The launchers reject bad indices before launching; this keeps the reads in
    bounds where they cannot check (inside CUDA graph capture).
    """
    return tl.minimum(tl.maximum(n, 0), num_images - 1)


# The backward kernels gather: each program owns a tile of the map and walks its
# image's RoIs in ascending order. In roi_pool, roi_align and ps_roi the walk
# goes SCAN RoIs at a time: their windows are read as one vector, and only the
# RoIs that reach the tile are visited, one by one in order, through next_set.
SCAN = tl.constexpr(64)
NONE_LEFT = tl.constexpr(2147483647)


@triton.jit
def next_set(hit, lanes, after):
    """The first lane index above ``after`` whose ``hit`` is set, or ``NONE_LEFT`` (``lanes``: ``tl.arange``)."""
    return tl.min(tl.where(hit & (lanes > after), lanes, NONE_LEFT), axis=0)


@triton.jit
def lane_value(values, lanes, at):
    """``values[at]`` as a scalar (``lanes``: the ``tl.arange`` that indexes ``values``)."""
    return tl.sum(tl.where(lanes == at, values, 0), axis=0)


@triton.jit
def span_meets(span_ptr, live, first, last):
    """Lanes ``live`` whose inclusive span ``[span_ptr[0], span_ptr[1]]`` (int32 table entries)
    meets ``[first, last]``; dead lanes read nothing and say no."""
    lo = tl.load(span_ptr, mask=live, other=1)
    hi = tl.load(span_ptr + 1, mask=live, other=0)
    return live & spans_overlap(lo, hi, first, last)


@triton.jit
def rois_near_tile(order_ptr, window_ptr, i0, end, lanes, row0, row1, col0, col1):
    """RoIs ``order[i0 + lanes]`` (below ``end``) and which of them reach rows ``[row0, row1]``
    x cols ``[col0, col1]`` (``window (K, 4)``: first row, last row, first col, last col)."""
    live = i0 + lanes < end
    k = tl.load(order_ptr + i0 + lanes, mask=live, other=0)
    near = span_meets(window_ptr + k * 4, live, row0, row1) & span_meets(window_ptr + k * 4 + 2, live, col0, col1)
    return k, near


@triton.jit
def spans_hit(span_ptr, k, lanes, count, first, last):
    """Which of the ``count`` spans ``span[k, lanes]`` (``(K, count, 2)`` inclusive ``[lo, hi]``) meet ``[first, last]``."""
    return span_meets(span_ptr + (k * count + lanes) * 2, lanes < count, first, last)


@triton.jit
def tile_cells(tile, tiles_w, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """First row and column of tile ``tile`` (tiles row-major, ``tiles_w`` to a row) and the rows
    ``hh`` and columns ``ww`` of its ``TILE_H * TILE_W`` cells, row-major."""
    row0 = (tile // tiles_w) * TILE_H
    col0 = (tile % tiles_w) * TILE_W
    s = tl.arange(0, TILE_H * TILE_W)
    return row0, col0, row0 + s // TILE_W, col0 + s % TILE_W


@triton.jit
def store_tile(grad_input_ptr, acc, n, c, c_ok, hh, ww, channels, height, width):
    """``grad_input[n, c, hh, ww] <- acc`` (``(channels, cells)``), rounded once to the output's dtype;
    cells past the map's edge and channels not ``c_ok`` are not written."""
    plane = (n.to(tl.int64) * channels + c.to(tl.int64)) * height * width
    ok = c_ok[:, None] & ((hh < height) & (ww < width))[None, :]
    out = grad_input_ptr + plane[:, None] + (hh * width + ww)[None, :]
    tl.store(out, cast_rne(acc, grad_input_ptr.dtype.element_ty), mask=ok)

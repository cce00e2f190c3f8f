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
    the offset inside the bin. ``p`` may be a lane vector; the rest are scalars.
    """
    offset = div_exact((tl.cast(i, size.dtype) + 0.5) * size, tl.cast(grid, size.dtype))
    return (start + tl.cast(p, size.dtype) * size) + offset


@triton.jit
def sample_spans(start, size, grid, p, limit):
    """Inclusive ``(first, last)`` cells that the samples of bins ``p`` (a lane vector) touch.

    Samples outside ``[-1, limit]`` touch nothing; ``last < first`` means no cell.
    """
    first = tl.full(p.shape, 2147483647, tl.int32)
    last = tl.full(p.shape, -1, tl.int32)
    for i in range(grid):
        valid, low, high, w_low, w_high = bilinear_axis(sample_at(start, size, p, i, grid), limit)
        first = tl.where(valid, tl.minimum(first, low), first)
        last = tl.where(valid, tl.maximum(last, high), last)
    return first, last


@triton.jit
def axis_weights(start, size, grid, p, cells, limit, ACC_DTYPE: tl.constexpr):
    """Summed bilinear weights along one axis that bin ``p``'s samples give ``cells`` (a lane vector).

    Returns ``(weight, touched)``: ``touched`` marks the cells some valid sample
    names as a corner (even with weight 0, so that a NaN or infinite gradient
    spreads exactly where a per-sample scatter would put it).
    """
    weight = tl.zeros(cells.shape, ACC_DTYPE)
    touched = cells < 0
    for i in range(grid):
        valid, low, high, w_low, w_high = bilinear_axis(sample_at(start, size, p, i, grid), limit)
        # an invalid sample names cell -1, which no lane holds
        at_low = cells == tl.where(valid, low, -1)
        at_high = cells == tl.where(valid, high, -1)
        weight += tl.where(at_low, w_low, 0.0) + tl.where(at_high, w_high, 0.0)
        touched = touched | at_low | at_high
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

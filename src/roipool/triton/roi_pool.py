"""RoI max pooling in Triton: forward (with argmax) and a deterministic backward.

Semantics are ``roipool.reference.roi_pool`` bit for bit (``docs/semantics.md``):
the geometry runs in the compute float type (float32 for float16/bfloat16,
which convert exactly), the maximum is strict with the first cell in row-major
order winning, a NaN wins and the first NaN is kept, an empty bin gives 0 and
argmax -1.

Forward: one program per (RoI, block of channels); its lanes are
``BLOCK_C`` channels x ``BLOCK_P`` bins, and each lane walks its own bin's
cells row by row, so the first maximum in row-major order wins as on the CPU.

Backward (gather): one program per (image, block of channels, 8x8 tile of the
feature map). It walks the RoIs of its image in ascending index order, 64 at
a time, visits only those whose maxima reach the tile (spans of the argmax
positions per RoI, per bin row and per bin column, from one pass over
``argmax``), and within them only the bins whose row and column spans meet
the tile, adding ``grad_output[k, c, ph, pw]`` to the tile cell that
``argmax`` names. Each input cell is written by exactly one program and
summed in the CPU path's order (RoI, then bin), so the result is the CPU
path's bits, run after run, without atomics and with O(K * (PH + PW)) extra
memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch
from ._common import (
    NONE_LEFT,
    SCAN,
    cast_rne,
    clamp_image,
    div_exact,
    lane_value,
    next_set,
    pool_bin_edges,
    rois_near_tile,
    rounded_box,
    spans_hit,
    store_tile,
    tile_cells,
)


@triton.jit
def _roi_box(rois_ptr, k, scale, POOLED_H: tl.constexpr, POOLED_W: tl.constexpr):
    """Batch index, first cell ``(y1, x1)`` and bin sizes of RoI ``k``."""
    n, x1, y1, x2, y2 = rounded_box(rois_ptr, k, scale)
    # inclusive end; a box whose end is before its start becomes one cell
    roi_h = tl.maximum(y2 - y1 + 1, 1)
    roi_w = tl.maximum(x2 - x1 + 1, 1)
    size_h = div_exact(tl.cast(roi_h, scale.dtype), tl.full((), POOLED_H, scale.dtype))
    size_w = div_exact(tl.cast(roi_w, scale.dtype), tl.full((), POOLED_W, scale.dtype))
    return n, y1, x1, size_h, size_w


@triton.jit
def _roi_pool_forward_kernel(
    input_ptr,  # (N, C, H, W), contiguous
    rois_ptr,  # (K, 5), compute dtype
    scale_ptr,  # (1,), compute dtype
    output_ptr,  # (K, C, PH, PW), input dtype
    argmax_ptr,  # (K, C, PH, PW), int32
    num_images,
    channels,
    height,
    width,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    WITH_ARGMAX: tl.constexpr,
):
    k = tl.program_id(0)
    scale = tl.load(scale_ptr)
    n, y1, x1, size_h, size_w = _roi_box(rois_ptr, k, scale, POOLED_H, POOLED_W)
    n = clamp_image(n, num_images)

    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tl.arange(0, BLOCK_P)
    c_ok = c < channels
    p_ok = p < POOLED_H * POOLED_W
    hstart, hend = pool_bin_edges(p // POOLED_W, size_h, y1, height)
    wstart, wend = pool_bin_edges(p % POOLED_W, size_w, x1, width)
    rows = tl.where(p_ok, tl.maximum(hend - hstart, 0), 0)
    cols = tl.where(p_ok, tl.maximum(wend - wstart, 0), 0)

    plane = (n.to(tl.int64) * channels + c.to(tl.int64)) * height * width
    first = hstart * width + wstart  # each bin's first cell; the loops below add a scalar step
    corner = input_ptr + plane[:, None] + first[None, :]
    best = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    best_at = tl.full((BLOCK_C, BLOCK_P), -1, tl.int32)
    for i in range(tl.max(rows, axis=0)):
        for j in range(tl.max(cols, axis=0)):
            ok = (i < rows) & (j < cols)
            step = i * width + j
            v = tl.load(corner + step, mask=c_ok[:, None] & ok[None, :], other=0.0).to(scale.dtype)
            # strictly greater wins; a NaN beats a number; nothing beats a NaN
            wins = (best_at < 0) | (v > best) | ((v != v) & (best == best))
            wins = wins & ok[None, :]
            best = tl.where(wins, v, best)
            best_at = tl.where(wins, (first + step).to(tl.int32)[None, :], best_at)

    out = (k.to(tl.int64) * channels + c.to(tl.int64))[:, None] * (POOLED_H * POOLED_W) + p[None, :]
    out_ok = c_ok[:, None] & p_ok[None, :]
    tl.store(output_ptr + out, cast_rne(best, output_ptr.dtype.element_ty), mask=out_ok)
    if WITH_ARGMAX:
        tl.store(argmax_ptr + out, best_at, mask=out_ok)


@triton.jit
def _argmax_spans_kernel(
    argmax_ptr,  # (K, C, PH * PW) int32
    row_span_ptr,  # (K, PH, 2) int32: first and last row of the maxima of bin row ph (any pw, any channel)
    col_span_ptr,  # (K, PW, 2) int32: first and last column of the maxima of bin column pw
    window_ptr,  # (K, 4) int32: first row, last row, first col, last col over all bins
    channels,
    height,
    width,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Where each bin row's and bin column's maxima lie, over all channels (empty: first > last).

    Read from ``argmax`` itself, so the backward needs no geometry and is
    exact for any argmax; the spans let the gather skip bins that cannot
    reach its tile (a bin's maxima lie in its row's rows and its column's columns).
    """
    k = tl.program_id(0)
    p = tl.arange(0, BLOCK_P)
    p_ok = p < POOLED_H * POOLED_W
    r_first = tl.full((BLOCK_P,), NONE_LEFT, tl.int32)
    r_last = tl.full((BLOCK_P,), -1, tl.int32)
    c_first = tl.full((BLOCK_P,), NONE_LEFT, tl.int32)
    c_last = tl.full((BLOCK_P,), -1, tl.int32)
    for c0 in range(0, channels, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        at = (k.to(tl.int64) * channels + c.to(tl.int64))[:, None] * (POOLED_H * POOLED_W) + p[None, :]
        a = tl.load(argmax_ptr + at, mask=(c < channels)[:, None] & p_ok[None, :], other=-1)
        used = (a >= 0) & (a < height * width)
        row = tl.where(used, a // width, 0)
        col = tl.where(used, a % width, 0)
        r_first = tl.minimum(r_first, tl.min(tl.where(used, row, NONE_LEFT), axis=0))
        r_last = tl.maximum(r_last, tl.max(tl.where(used, row, -1), axis=0))
        c_first = tl.minimum(c_first, tl.min(tl.where(used, col, NONE_LEFT), axis=0))
        c_last = tl.maximum(c_last, tl.max(tl.where(used, col, -1), axis=0))
    ph = p // POOLED_W
    pw = p % POOLED_W
    for i in tl.static_range(POOLED_H):
        mine = p_ok & (ph == i)
        tl.store(row_span_ptr + (k * POOLED_H + i) * 2, tl.min(tl.where(mine, r_first, NONE_LEFT), axis=0))
        tl.store(row_span_ptr + (k * POOLED_H + i) * 2 + 1, tl.max(tl.where(mine, r_last, -1), axis=0))
    for j in tl.static_range(POOLED_W):
        mine = p_ok & (pw == j)
        tl.store(col_span_ptr + (k * POOLED_W + j) * 2, tl.min(tl.where(mine, c_first, NONE_LEFT), axis=0))
        tl.store(col_span_ptr + (k * POOLED_W + j) * 2 + 1, tl.max(tl.where(mine, c_last, -1), axis=0))
    tl.store(window_ptr + k * 4, tl.min(tl.where(p_ok, r_first, NONE_LEFT), axis=0))
    tl.store(window_ptr + k * 4 + 1, tl.max(tl.where(p_ok, r_last, -1), axis=0))
    tl.store(window_ptr + k * 4 + 2, tl.min(tl.where(p_ok, c_first, NONE_LEFT), axis=0))
    tl.store(window_ptr + k * 4 + 3, tl.max(tl.where(p_ok, c_last, -1), axis=0))


@triton.jit
def _roi_pool_backward_kernel(
    grad_ptr,  # (K, C, PH * PW)
    argmax_ptr,  # (K, C, PH * PW) int32
    order_ptr,  # (K,) int32: RoIs grouped by image, ascending
    starts_ptr,  # (N + 1,) int32
    row_span_ptr,  # (K, PH, 2) int32
    col_span_ptr,  # (K, PW, 2) int32
    window_ptr,  # (K, 4) int32
    grad_input_ptr,  # (N, C, H, W)
    channels,
    height,
    width,
    tiles_w,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_PH: tl.constexpr,
    BLOCK_PW: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    tile = tl.program_id(0)
    n = tl.program_id(2)
    row0, col0, hh, ww = tile_cells(tile, tiles_w, TILE_H, TILE_W)
    row1 = row0 + TILE_H - 1
    col1 = col0 + TILE_W - 1
    cell = hh * width + ww
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < channels
    lanes = tl.arange(0, SCAN)
    ph_lanes = tl.arange(0, BLOCK_PH)
    pw_lanes = tl.arange(0, BLOCK_PW)

    acc = tl.zeros((BLOCK_C, TILE_H * TILE_W), ACC_DTYPE)
    end = tl.load(starts_ptr + n + 1)
    for i0 in range(tl.load(starts_ptr + n), end, SCAN):
        ks, near = rois_near_tile(order_ptr, window_ptr, i0, end, lanes, row0, row1, col0, col1)
        at = next_set(near, lanes, -1)
        while at < NONE_LEFT:
            k = lane_value(ks, lanes, at)
            base = (k.to(tl.int64) * channels + c.to(tl.int64)) * (POOLED_H * POOLED_W)
            rows_hit = spans_hit(row_span_ptr, k, ph_lanes, POOLED_H, row0, row1)
            cols_hit = spans_hit(col_span_ptr, k, pw_lanes, POOLED_W, col0, col1)
            # bins in row-major order, as the CPU path adds them
            ph = next_set(rows_hit, ph_lanes, -1)
            while ph < NONE_LEFT:
                pw = next_set(cols_hit, pw_lanes, -1)
                while pw < NONE_LEFT:
                    p = ph * POOLED_W + pw
                    source = tl.load(argmax_ptr + base + p, mask=c_ok, other=-1)
                    g = tl.load(grad_ptr + base + p, mask=c_ok, other=0.0).to(ACC_DTYPE)
                    acc = tl.where(source[:, None] == cell[None, :], acc + g[:, None], acc)
                    pw = next_set(cols_hit, pw_lanes, pw)
                ph = next_set(rows_hit, ph_lanes, ph)
            at = next_set(near, lanes, at)

    store_tile(grad_input_ptr, acc, n, c, c_ok, hh, ww, channels, height, width)


@triton.jit
def _roi_pool_backward_lists_kernel(
    grad_ptr,  # (K, C, PH * PW)
    argmax_ptr,  # (K, C, PH * PW) int32
    pairs_ptr,  # int32 k * PH * PW + p, grouped by tile (_launch.tile_lists)
    starts_ptr,  # (N * tiles + 1,) int32
    grad_input_ptr,  # (N, C, H, W)
    channels,
    height,
    width,
    tiles,
    tiles_w,
    BINS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    """The gather of :func:`_roi_pool_backward_kernel` over a prepared list of the tile's (RoI, bin) pairs."""
    tile = tl.program_id(0)
    n = tl.program_id(2)
    row0, col0, hh, ww = tile_cells(tile, tiles_w, TILE_H, TILE_W)
    cell = hh * width + ww
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < channels
    acc = tl.zeros((BLOCK_C, TILE_H * TILE_W), ACC_DTYPE)
    at = n * tiles + tile
    for j in range(tl.load(starts_ptr + at), tl.load(starts_ptr + at + 1)):
        pair = tl.load(pairs_ptr + j)
        k = pair // BINS
        at_bin = (k.to(tl.int64) * channels + c.to(tl.int64)) * BINS + pair % BINS
        source = tl.load(argmax_ptr + at_bin, mask=c_ok, other=-1)
        g = tl.load(grad_ptr + at_bin, mask=c_ok, other=0.0).to(ACC_DTYPE)
        acc = tl.where(source[:, None] == cell[None, :], acc + g[:, None], acc)

    store_tile(grad_input_ptr, acc, n, c, c_ok, hh, ww, channels, height, width)


def roi_pool_forward(input, rois, spatial_scale, pooled_height, pooled_width, with_argmax=True):
    """RoI max pooling of ``input (N, C, H, W)`` over ``rois (K, 5)``.

    Returns ``(output (K, C, PH, PW), argmax (K, C, PH, PW) int32)`` (argmax
    ``None`` when ``with_argmax`` is false); ``output`` has the input's dtype.
    """
    input, rois, device, dtype = _launch.forward_inputs(input, rois)
    k_total = rois.shape[0]
    _, channels, height, width = input.shape
    ph, pw = int(pooled_height), int(pooled_width)
    output = torch.empty((k_total, channels, ph, pw), dtype=input.dtype, device=device)
    argmax = torch.empty((k_total, channels, ph, pw), dtype=torch.int32, device=device) if with_argmax else None
    if output.numel() == 0:
        return output, argmax
    block_p = _launch.triton_next_pow2(ph * pw)
    block_c = _launch.channel_block(channels, block_p, _launch.TUNING["forward_lanes"])
    grid = (k_total, triton.cdiv(channels, block_c))
    _roi_pool_forward_kernel[grid](
        input,
        rois,
        _launch.scale_tensor(spatial_scale, dtype, device),
        output,
        argmax if with_argmax else output,
        input.shape[0],
        channels,
        height,
        width,
        POOLED_H=ph,
        POOLED_W=pw,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        WITH_ARGMAX=with_argmax,
        num_warps=_launch.TUNING["forward_warps"],
        enable_fp_fusion=False,
    )
    return output, argmax


def roi_pool_backward(grad, argmax, rois, batch_size, channels, height, width):
    """Gradient with respect to the input: ``grad (K, C, PH, PW)`` routed through ``argmax``.

    ``rois`` gives each RoI's image (column 0). Deterministic, and the CPU
    path's bits: each cell sums its gradients in ascending RoI, then bin,
    order. Extra memory: the RoI order and ``(K, PH + PW + 2, 2)`` int32 spans.
    """
    device = _launch.check_device(grad=grad, rois=rois, argmax=argmax)
    acc_dtype = _launch.compute_dtype(grad.dtype)
    _launch.check_batch_index(rois, batch_size)
    # every cell is written by the program that owns its tile, so no zero fill
    grad_input = torch.empty((batch_size, channels, height, width), dtype=grad.dtype, device=device)
    if grad_input.numel() == 0:
        return grad_input
    k_total = rois.shape[0]
    ph, pw = grad.shape[2], grad.shape[3]
    grad = grad.contiguous()
    argmax = argmax.to(torch.int32).contiguous()
    row_span, col_span, window = _launch.span_tables(k_total, ph, pw, device)
    block_p = _launch.triton_next_pow2(ph * pw)
    if k_total:
        _argmax_spans_kernel[(k_total,)](
            argmax,
            row_span,
            col_span,
            window,
            channels,
            height,
            width,
            POOLED_H=ph,
            POOLED_W=pw,
            BLOCK_C=_launch.channel_block(channels, block_p),
            BLOCK_P=block_p,
        )
    tiles, tiles_w = _launch.tile_grid(height, width)
    block_c = _launch.channel_block(channels, _launch.TILE_H * _launch.TILE_W, _launch.TUNING["backward_lanes"])
    grid = (tiles, triton.cdiv(channels, block_c), batch_size)
    acc = tl.float64 if acc_dtype == torch.float64 else tl.float32
    if _launch.TUNING["backward"] == "lists":
        pairs, starts = _launch.tile_lists(rois, row_span, col_span, batch_size, height, width)
        _roi_pool_backward_lists_kernel[grid](
            grad, argmax, pairs, starts, grad_input, channels, height, width, tiles, tiles_w,
            BINS=ph * pw, BLOCK_C=block_c, TILE_H=_launch.TILE_H, TILE_W=_launch.TILE_W, ACC_DTYPE=acc,
            num_warps=_launch.TUNING["backward_warps"],
        )  # fmt: skip
        return grad_input
    order, starts = _launch.rois_by_image(rois, batch_size)
    _roi_pool_backward_kernel[grid](
        grad,
        argmax,
        order,
        starts,
        row_span,
        col_span,
        window,
        grad_input,
        channels,
        height,
        width,
        tiles_w,
        POOLED_H=ph,
        POOLED_W=pw,
        BLOCK_C=block_c,
        BLOCK_PH=_launch.triton_next_pow2(ph),
        BLOCK_PW=_launch.triton_next_pow2(pw),
        TILE_H=_launch.TILE_H,
        TILE_W=_launch.TILE_W,
        ACC_DTYPE=acc,
        num_warps=_launch.TUNING["backward_warps"],
    )
    return grad_input

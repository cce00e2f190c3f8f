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
feature map). It walks the RoIs of its image in ascending index order,
skips those whose maxima all miss the tile (per-RoI and per-bin spans of the
argmax positions, from one pass over ``argmax``), and adds
``grad_output[k, c, ph, pw]`` to the tile cell that ``argmax`` names. Each
input cell is written by exactly one program and summed in the CPU path's
order (RoI, then bin), so the result is the CPU path's bits, run after run,
without atomics and with O(K * PH * PW) extra memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch
from ._common import cast_rne, clamp_image, div_exact, pool_bin_edges, rounded_box, spans_overlap


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
    best = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    best_at = tl.full((BLOCK_C, BLOCK_P), -1, tl.int32)
    for i in range(tl.max(rows, axis=0)):
        for j in range(tl.max(cols, axis=0)):
            ok = (i < rows) & (j < cols)
            cell = (hstart + i) * width + (wstart + j)
            v = tl.load(
                input_ptr + plane[:, None] + cell[None, :],
                mask=c_ok[:, None] & ok[None, :],
                other=0.0,
            ).to(scale.dtype)
            # strictly greater wins; a NaN beats a number; nothing beats a NaN
            wins = (best_at < 0) | (v > best) | ((v != v) & (best == best))
            wins = wins & ok[None, :]
            best = tl.where(wins, v, best)
            best_at = tl.where(wins, cell.to(tl.int32)[None, :], best_at)

    out = (k.to(tl.int64) * channels + c.to(tl.int64))[:, None] * (POOLED_H * POOLED_W) + p[None, :]
    out_ok = c_ok[:, None] & p_ok[None, :]
    tl.store(output_ptr + out, cast_rne(best, output_ptr.dtype.element_ty), mask=out_ok)
    if WITH_ARGMAX:
        tl.store(argmax_ptr + out, best_at, mask=out_ok)


@triton.jit
def _argmax_spans_kernel(
    argmax_ptr,  # (K, C, PH * PW) int32
    bin_span_ptr,  # (K, PH * PW, 4) int32: first row, last row, first col, last col of the bin's maxima
    window_ptr,  # (K, 4) int32: the same over all bins of the RoI
    channels,
    height,
    width,
    BINS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Where each bin's maxima lie, over all channels (empty: first > last).

    Read from ``argmax`` itself, so the backward needs no geometry and is
    exact for any argmax; the spans let the gather skip bins that cannot
    reach its tile.
    """
    k = tl.program_id(0)
    p = tl.arange(0, BLOCK_P)
    p_ok = p < BINS
    big = 2147483647
    r_first = tl.full((BLOCK_P,), big, tl.int32)
    r_last = tl.full((BLOCK_P,), -1, tl.int32)
    c_first = tl.full((BLOCK_P,), big, tl.int32)
    c_last = tl.full((BLOCK_P,), -1, tl.int32)
    for c0 in range(0, channels, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        at = (k.to(tl.int64) * channels + c.to(tl.int64))[:, None] * BINS + p[None, :]
        a = tl.load(argmax_ptr + at, mask=(c < channels)[:, None] & p_ok[None, :], other=-1)
        used = (a >= 0) & (a < height * width)
        row = tl.where(used, a // width, 0)
        col = tl.where(used, a % width, 0)
        r_first = tl.minimum(r_first, tl.min(tl.where(used, row, big), axis=0))
        r_last = tl.maximum(r_last, tl.max(tl.where(used, row, -1), axis=0))
        c_first = tl.minimum(c_first, tl.min(tl.where(used, col, big), axis=0))
        c_last = tl.maximum(c_last, tl.max(tl.where(used, col, -1), axis=0))
    span = bin_span_ptr + (k * BINS + p) * 4
    tl.store(span, r_first, mask=p_ok)
    tl.store(span + 1, r_last, mask=p_ok)
    tl.store(span + 2, c_first, mask=p_ok)
    tl.store(span + 3, c_last, mask=p_ok)
    tl.store(window_ptr + k * 4, tl.min(tl.where(p_ok, r_first, big), axis=0))
    tl.store(window_ptr + k * 4 + 1, tl.max(tl.where(p_ok, r_last, -1), axis=0))
    tl.store(window_ptr + k * 4 + 2, tl.min(tl.where(p_ok, c_first, big), axis=0))
    tl.store(window_ptr + k * 4 + 3, tl.max(tl.where(p_ok, c_last, -1), axis=0))


@triton.jit
def _roi_pool_backward_kernel(
    grad_ptr,  # (K, C, PH * PW)
    argmax_ptr,  # (K, C, PH * PW) int32
    order_ptr,  # (K,) int32: RoIs grouped by image, ascending
    starts_ptr,  # (N + 1,) int32
    bin_span_ptr,  # (K, PH * PW, 4) int32
    window_ptr,  # (K, 4) int32
    grad_input_ptr,  # (N, C, H, W)
    channels,
    height,
    width,
    tiles_w,
    BINS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    tile = tl.program_id(0)
    n = tl.program_id(2)
    row0 = (tile // tiles_w) * TILE_H
    col0 = (tile % tiles_w) * TILE_W
    row1 = row0 + TILE_H - 1
    col1 = col0 + TILE_W - 1
    s = tl.arange(0, TILE_H * TILE_W)
    hh = row0 + s // TILE_W
    ww = col0 + s % TILE_W
    cell = hh * width + ww
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < channels

    acc = tl.zeros((BLOCK_C, TILE_H * TILE_W), ACC_DTYPE)
    for i in range(tl.load(starts_ptr + n), tl.load(starts_ptr + n + 1)):
        k = tl.load(order_ptr + i)
        win = window_ptr + k * 4
        near = spans_overlap(tl.load(win), tl.load(win + 1), row0, row1)
        near = near & spans_overlap(tl.load(win + 2), tl.load(win + 3), col0, col1)
        if near:
            base = (k.to(tl.int64) * channels + c.to(tl.int64)) * BINS
            # bins in row-major order, as the CPU path adds them
            for p in range(BINS):
                span = bin_span_ptr + (k * BINS + p) * 4
                hit_rows = spans_overlap(tl.load(span), tl.load(span + 1), row0, row1)
                if hit_rows & spans_overlap(tl.load(span + 2), tl.load(span + 3), col0, col1):
                    source = tl.load(argmax_ptr + base + p, mask=c_ok, other=-1)
                    g = tl.load(grad_ptr + base + p, mask=c_ok, other=0.0).to(ACC_DTYPE)
                    acc = tl.where(source[:, None] == cell[None, :], acc + g[:, None], acc)

    plane = (n.to(tl.int64) * channels + c.to(tl.int64)) * height * width
    ok = c_ok[:, None] & ((hh < height) & (ww < width))[None, :]
    tl.store(grad_input_ptr + plane[:, None] + cell[None, :], cast_rne(acc, grad_input_ptr.dtype.element_ty), mask=ok)


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
    block_c = _launch.channel_block(channels, block_p)
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
        enable_fp_fusion=False,
    )
    return output, argmax


def roi_pool_backward(grad, argmax, rois, batch_size, channels, height, width):
    """Gradient with respect to the input: ``grad (K, C, PH, PW)`` routed through ``argmax``.

    ``rois`` gives each RoI's image (column 0). Deterministic, and the CPU
    path's bits: each cell sums its gradients in ascending RoI, then bin,
    order. Extra memory: the RoI order and ``(K, PH * PW, 4)`` int32 spans.
    """
    device = _launch.check_device(grad=grad, rois=rois, argmax=argmax)
    acc_dtype = _launch.compute_dtype(grad.dtype)
    _launch.check_batch_index(rois, batch_size)
    # every cell is written by the program that owns its tile, so no zero fill
    grad_input = torch.empty((batch_size, channels, height, width), dtype=grad.dtype, device=device)
    if grad_input.numel() == 0:
        return grad_input
    k_total = rois.shape[0]
    bins = grad.shape[2] * grad.shape[3]
    grad = grad.contiguous()
    argmax = argmax.to(torch.int32).contiguous()
    bin_span = torch.empty((k_total, bins, 4), dtype=torch.int32, device=device)
    window = torch.empty((k_total, 4), dtype=torch.int32, device=device)
    block_p = _launch.triton_next_pow2(bins)
    if k_total:
        _argmax_spans_kernel[(k_total,)](
            argmax,
            bin_span,
            window,
            channels,
            height,
            width,
            BINS=bins,
            BLOCK_C=_launch.channel_block(channels, block_p),
            BLOCK_P=block_p,
        )
    order, starts = _launch.rois_by_image(rois, batch_size)
    tiles, tiles_w = _launch.tile_grid(height, width)
    block_c = _launch.channel_block(channels, _launch.TILE_H * _launch.TILE_W)
    grid = (tiles, triton.cdiv(channels, block_c), batch_size)
    _roi_pool_backward_kernel[grid](
        grad,
        argmax,
        order,
        starts,
        bin_span,
        window,
        grad_input,
        channels,
        height,
        width,
        tiles_w,
        BINS=bins,
        BLOCK_C=block_c,
        TILE_H=_launch.TILE_H,
        TILE_W=_launch.TILE_W,
        ACC_DTYPE=tl.float64 if acc_dtype == torch.float64 else tl.float32,
    )
    return grad_input

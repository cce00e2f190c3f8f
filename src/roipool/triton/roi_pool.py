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
skips those whose bins miss the tile (per-RoI and per-bin cell spans come
from a small table computed once), and adds ``grad_output[k, c, ph, pw]`` to
the tile cell that ``argmax`` names. Each input cell is written by exactly one
program and summed in the CPU path's order (RoI, then bin), so the result is
the CPU path's bits, run after run, without atomics and with O(K) extra memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch
from ._common import cast_rne, div_exact, pool_bin_edges, round_half_away, spans_overlap, store_spans


@triton.jit
def _roi_box(rois_ptr, k, scale, POOLED_H: tl.constexpr, POOLED_W: tl.constexpr):
    """Batch index, first cell ``(y1, x1)`` and bin sizes of RoI ``k``."""
    row = rois_ptr + k * 5
    n = tl.load(row).to(tl.int32)
    x1 = round_half_away(tl.load(row + 1) * scale)
    y1 = round_half_away(tl.load(row + 2) * scale)
    x2 = round_half_away(tl.load(row + 3) * scale)
    y2 = round_half_away(tl.load(row + 4) * scale)
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
def _roi_pool_spans_kernel(
    rois_ptr,
    scale_ptr,
    row_span_ptr,  # (K, PH, 2) int32: inclusive [first, last] row of each bin
    col_span_ptr,  # (K, PW, 2) int32
    window_ptr,  # (K, 4) int32: first row, last row, first col, last col of all bins
    height,
    width,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_PH: tl.constexpr,
    BLOCK_PW: tl.constexpr,
):
    k = tl.program_id(0)
    scale = tl.load(scale_ptr)
    n, y1, x1, size_h, size_w = _roi_box(rois_ptr, k, scale, POOLED_H, POOLED_W)
    ph = tl.arange(0, BLOCK_PH)
    pw = tl.arange(0, BLOCK_PW)
    h_ok = ph < POOLED_H
    w_ok = pw < POOLED_W
    hstart, hend = pool_bin_edges(ph, size_h, y1, height)
    wstart, wend = pool_bin_edges(pw, size_w, x1, width)
    store_spans(row_span_ptr, window_ptr, k, ph, h_ok, hstart, hend - 1, POOLED_H, 0)
    store_spans(col_span_ptr, window_ptr, k, pw, w_ok, wstart, wend - 1, POOLED_W, 2)


@triton.jit
def _roi_pool_backward_kernel(
    grad_ptr,  # (K, C, PH, PW)
    argmax_ptr,  # (K, C, PH, PW) int32
    order_ptr,  # (K,) int32: RoIs grouped by image, ascending
    starts_ptr,  # (N + 1,) int32
    row_span_ptr,
    col_span_ptr,
    window_ptr,
    grad_input_ptr,  # (N, C, H, W)
    channels,
    height,
    width,
    tiles_w,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    tile = tl.program_id(0)
    n = tl.program_id(2)
    row0 = (tile // tiles_w) * TILE_H
    col0 = (tile % tiles_w) * TILE_W
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
        near = spans_overlap(tl.load(win), tl.load(win + 1), row0, row0 + TILE_H - 1)
        near = near & spans_overlap(tl.load(win + 2), tl.load(win + 3), col0, col0 + TILE_W - 1)
        if near:
            bins = (k.to(tl.int64) * channels + c.to(tl.int64)) * (POOLED_H * POOLED_W)
            for ph in range(POOLED_H):
                rs = row_span_ptr + (k * POOLED_H + ph) * 2
                if spans_overlap(tl.load(rs), tl.load(rs + 1), row0, row0 + TILE_H - 1):
                    for pw in range(POOLED_W):
                        cs = col_span_ptr + (k * POOLED_W + pw) * 2
                        if spans_overlap(tl.load(cs), tl.load(cs + 1), col0, col0 + TILE_W - 1):
                            at = bins + (ph * POOLED_W + pw)
                            source = tl.load(argmax_ptr + at, mask=c_ok, other=-1)
                            g = tl.load(grad_ptr + at, mask=c_ok, other=0.0).to(ACC_DTYPE)
                            hit = source[:, None] == cell[None, :]
                            acc = tl.where(hit, acc + g[:, None], acc)

    plane = (n.to(tl.int64) * channels + c.to(tl.int64)) * height * width
    ok = c_ok[:, None] & ((hh < height) & (ww < width))[None, :]
    tl.store(grad_input_ptr + plane[:, None] + cell[None, :], cast_rne(acc, grad_input_ptr.dtype.element_ty), mask=ok)


def roi_pool_forward(input, rois, spatial_scale, pooled_height, pooled_width, with_argmax=True):
    """RoI max pooling of ``input (N, C, H, W)`` over ``rois (K, 5)``.

    Returns ``(output (K, C, PH, PW), argmax (K, C, PH, PW) int32)`` (argmax
    ``None`` when ``with_argmax`` is false); ``output`` has the input's dtype.
    """
    device = _launch.check_device(input=input, rois=rois)
    dtype = _launch.compute_dtype(input.dtype)
    input = input.contiguous()
    rois = _launch.prepare_rois(rois, dtype)
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
        input, rois, _launch.scale_tensor(spatial_scale, dtype, device), output,
        argmax if with_argmax else output,
        channels, height, width,
        POOLED_H=ph, POOLED_W=pw, BLOCK_C=block_c, BLOCK_P=block_p, WITH_ARGMAX=with_argmax,
        enable_fp_fusion=False,
    )
    return output, argmax


def roi_pool_backward(grad, rois, argmax, spatial_scale, pooled_height, pooled_width,
                      batch_size, channels, height, width):
    """Gradient with respect to the input: ``grad (K, C, PH, PW)`` routed through ``argmax``.

    Deterministic: the same bits on every run, equal to the CPU path's. Extra
    memory: the RoI order and the bin-span tables, ``O(K * (PH + PW))``.
    """
    device = _launch.check_device(grad=grad, rois=rois, argmax=argmax)
    acc_dtype = _launch.compute_dtype(grad.dtype)
    rois = _launch.prepare_rois(rois, acc_dtype)
    # every cell is written by the program that owns its tile, so no zero fill
    grad_input = torch.empty((batch_size, channels, height, width), dtype=grad.dtype, device=device)
    if grad_input.numel() == 0:
        return grad_input
    ph, pw = int(pooled_height), int(pooled_width)
    k_total = rois.shape[0]
    grad = grad.contiguous()
    argmax = argmax.to(torch.int32).contiguous()
    row_span = torch.empty((k_total, ph, 2), dtype=torch.int32, device=device)
    col_span = torch.empty((k_total, pw, 2), dtype=torch.int32, device=device)
    window = torch.empty((k_total, 4), dtype=torch.int32, device=device)
    if k_total:
        _roi_pool_spans_kernel[(k_total,)](
            rois, _launch.scale_tensor(spatial_scale, acc_dtype, device), row_span, col_span, window,
            height, width,
            POOLED_H=ph, POOLED_W=pw,
            BLOCK_PH=_launch.triton_next_pow2(ph), BLOCK_PW=_launch.triton_next_pow2(pw),
            enable_fp_fusion=False,
        )
    order, starts = _launch.rois_by_image(rois, batch_size)
    tile_h, tile_w = _launch.TILE_H, _launch.TILE_W
    block_c = _launch.channel_block(channels, tile_h * tile_w)
    tiles_w = triton.cdiv(width, tile_w)
    grid = (triton.cdiv(height, tile_h) * tiles_w, triton.cdiv(channels, block_c), batch_size)
    _roi_pool_backward_kernel[grid](
        grad, argmax, order, starts, row_span, col_span, window, grad_input,
        channels, height, width, tiles_w,
        POOLED_H=ph, POOLED_W=pw, BLOCK_C=block_c, TILE_H=tile_h, TILE_W=tile_w,
        ACC_DTYPE=tl.float64 if acc_dtype == torch.float64 else tl.float32,
        enable_fp_fusion=False,
    )
    return grad_input

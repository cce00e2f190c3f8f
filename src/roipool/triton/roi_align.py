"""RoIAlign in Triton: forward and a deterministic backward.

Semantics are torchvision's ``roi_align`` (``docs/semantics.md``): box corners
scaled (and shifted by -0.5 when ``aligned``), bins of ``roi_size / pooled``
sampled on a ``grid_h x grid_w`` grid (``sampling_ratio``, or
``ceil(bin size)`` when it is <= 0), bilinear interpolation that counts a
sample outside ``[-1, size]`` as zero, and the mean over the samples.
float16 and bfloat16 compute in float32.

Forward: one program per (RoI, block of channels); lanes are ``BLOCK_C``
channels x ``BLOCK_P`` bins, the sampling grid a loop (its size is per RoI).

Backward (gather): one program per (image, block of channels, 8x8 tile). It
walks its image's RoIs in ascending order, 64 at a time, and visits only the
RoIs and bins whose samples touch a cell of the tile (spans from a small
per-RoI table, read as vectors), adding
``grad / count * wy * wx`` to the tile, where ``wy`` (``wx``) is the summed
weight that the bin's row (column) samples give each cell: bilinear weights
factor by axis. No atomics: each cell is summed by one program in a fixed
order, so the bits are the same on every run; extra memory is O(K * (PH + PW)).

Box gradient: one program per RoI. It loops over blocks of channels and the
sampling grid, accumulates each sample's ``grad * d(sample)/d(position) *
d(position)/d(corner)`` on ``BLOCK_C x BLOCK_P`` lanes, and reduces the
lanes once at the end: a fixed order, no atomics (``docs/semantics.md``,
gradient with respect to the boxes).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch
from ._common import (
    GRID_LIMIT,
    NONE_LEFT,
    SCAN,
    add_box_slopes,
    axis_step,
    axis_weights,
    cast_rne,
    clamp_image,
    div_exact,
    lane_value,
    next_set,
    rois_near_tile,
    sample_spans,
    sample_window,
    spans_hit,
    store_box_gradient,
    store_spans,
    store_tile,
    tile_cells,
)


@triton.jit
def _align_box(
    rois_ptr, k, scale, sampling_ratio, ALIGNED: tl.constexpr, POOLED_H: tl.constexpr, POOLED_W: tl.constexpr
):
    """Batch index, first corner, bin sizes, sampling grid and sample count of RoI ``k``."""
    row = rois_ptr + k * 5
    n = tl.load(row).to(tl.int32)
    if ALIGNED:
        offset = 0.5
    else:
        offset = 0.0
    start_w = tl.load(row + 1) * scale - offset
    start_h = tl.load(row + 2) * scale - offset
    roi_w = (tl.load(row + 3) * scale - offset) - start_w
    roi_h = (tl.load(row + 4) * scale - offset) - start_h
    if not ALIGNED:
        # a malformed box becomes 1x1
        roi_w = tl.maximum(roi_w, 1.0)
        roi_h = tl.maximum(roi_h, 1.0)
    size_h = div_exact(roi_h, tl.full((), POOLED_H, scale.dtype))
    size_w = div_exact(roi_w, tl.full((), POOLED_W, scale.dtype))
    grid_h = tl.where(sampling_ratio > 0, sampling_ratio, _adaptive_grid(size_h))
    grid_w = tl.where(sampling_ratio > 0, sampling_ratio, _adaptive_grid(size_w))
    # the exact product (below 2**62), rounded once, as the CPU path
    count = tl.cast(tl.maximum(grid_h.to(tl.int64) * grid_w.to(tl.int64), 1), scale.dtype)
    return n, start_h, start_w, size_h, size_w, grid_h, grid_w, count


@triton.jit
def _adaptive_grid(size):
    """Adaptive samples per bin side, int32: about one per cell, ``ceil(size)``, none for a zero or
    negative extent, at most ``GRID_LIMIT`` (``roipool.cpu.geometry._grid``).

    The float is capped before the cast, at ``2**31`` (float32 has no ``2**31 - 1``), then the int.
    """
    whole = tl.minimum(tl.maximum(tl.ceil(size), 0.0), 2147483648.0).to(tl.int64)
    return tl.minimum(whole, GRID_LIMIT).to(tl.int32)


@triton.jit
def _roi_align_forward_kernel(
    input_ptr,  # (N, C, H, W), contiguous
    rois_ptr,  # (K, 5), compute dtype
    scale_ptr,  # (1,), compute dtype
    output_ptr,  # (K, C, PH, PW), input dtype
    sampling_ratio,
    num_images,
    channels,
    height,
    width,
    ALIGNED: tl.constexpr,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    k = tl.program_id(0)
    scale = tl.load(scale_ptr)
    n, start_h, start_w, size_h, size_w, grid_h, grid_w, count = _align_box(
        rois_ptr, k, scale, sampling_ratio, ALIGNED, POOLED_H, POOLED_W
    )
    n = clamp_image(n, num_images)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tl.arange(0, BLOCK_P)
    c_ok = c < channels
    p_ok = p < POOLED_H * POOLED_W
    ph = p // POOLED_W
    pw = p % POOLED_W
    plane = ((n.to(tl.int64) * channels + c.to(tl.int64)) * height * width)[:, None]

    acc = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    # only the samples that can land on the map; a run of them at one position once, weighed by its length
    iy0, iy_end, y_steps, y_runs = sample_window(start_h, size_h, ph, grid_h, height)
    ix0, ix_end, x_steps, x_runs = sample_window(start_w, size_w, pw, grid_w, width)
    iy = iy0
    for _ in range(tl.max(y_steps, axis=0)):
        iy_next, y_ok, y_low, y_high, wy_low, wy_high = axis_step(
            start_h, size_h, ph, grid_h, iy, iy_end, y_runs, height
        )
        ix = ix0
        for _ in range(tl.max(x_steps, axis=0)):
            ix_next, x_ok, x_low, x_high, wx_low, wx_high = axis_step(
                start_w, size_w, pw, grid_w, ix, ix_end, x_runs, width
            )
            ok = p_ok & y_ok & x_ok
            m = c_ok[:, None] & ok[None, :]
            v1 = tl.load(input_ptr + plane + (y_low * width + x_low)[None, :], mask=m, other=0.0).to(scale.dtype)
            v2 = tl.load(input_ptr + plane + (y_low * width + x_high)[None, :], mask=m, other=0.0).to(scale.dtype)
            v3 = tl.load(input_ptr + plane + (y_high * width + x_low)[None, :], mask=m, other=0.0).to(scale.dtype)
            v4 = tl.load(input_ptr + plane + (y_high * width + x_high)[None, :], mask=m, other=0.0).to(scale.dtype)
            w1 = (wy_low * wx_low)[None, :]
            w2 = (wy_low * wx_high)[None, :]
            w3 = (wy_high * wx_low)[None, :]
            w4 = (wy_high * wx_high)[None, :]
            acc = tl.where(ok[None, :], acc + (w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4), acc)
            ix = ix_next
        iy = iy_next

    out = (k.to(tl.int64) * channels + c.to(tl.int64))[:, None] * (POOLED_H * POOLED_W) + p[None, :]
    tl.store(
        output_ptr + out,
        cast_rne(div_exact(acc, count), output_ptr.dtype.element_ty),
        mask=c_ok[:, None] & p_ok[None, :],
    )


@triton.jit
def _roi_align_spans_kernel(
    rois_ptr,
    scale_ptr,
    row_span_ptr,  # (K, PH, 2) int32: inclusive first and last row the bin's samples touch
    col_span_ptr,  # (K, PW, 2) int32
    window_ptr,  # (K, 4) int32: union over bins
    sampling_ratio,
    height,
    width,
    ALIGNED: tl.constexpr,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_PH: tl.constexpr,
    BLOCK_PW: tl.constexpr,
):
    k = tl.program_id(0)
    scale = tl.load(scale_ptr)
    n, start_h, start_w, size_h, size_w, grid_h, grid_w, count = _align_box(
        rois_ptr, k, scale, sampling_ratio, ALIGNED, POOLED_H, POOLED_W
    )
    ph = tl.arange(0, BLOCK_PH)
    pw = tl.arange(0, BLOCK_PW)
    first, last = sample_spans(start_h, size_h, grid_h, ph, height)
    store_spans(row_span_ptr, window_ptr, k, ph, ph < POOLED_H, first, last, POOLED_H, 0)
    first, last = sample_spans(start_w, size_w, grid_w, pw, width)
    store_spans(col_span_ptr, window_ptr, k, pw, pw < POOLED_W, first, last, POOLED_W, 2)


@triton.jit
def _roi_align_backward_kernel(
    grad_ptr,  # (K, C, PH, PW), contiguous
    rois_ptr,
    scale_ptr,
    order_ptr,  # (K,) int32: RoIs grouped by image, ascending
    starts_ptr,  # (N + 1,) int32
    row_span_ptr,
    col_span_ptr,
    window_ptr,
    grad_input_ptr,  # (N, C, H, W)
    sampling_ratio,
    channels,
    height,
    width,
    tiles_w,
    ALIGNED: tl.constexpr,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_PH: tl.constexpr,
    BLOCK_PW: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
):
    tile = tl.program_id(0)
    n = tl.program_id(2)
    row0, col0, hh, ww = tile_cells(tile, tiles_w, TILE_H, TILE_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < channels
    scale = tl.load(scale_ptr)

    row1 = row0 + TILE_H - 1
    col1 = col0 + TILE_W - 1
    lanes = tl.arange(0, SCAN)
    ph_lanes = tl.arange(0, BLOCK_PH)
    pw_lanes = tl.arange(0, BLOCK_PW)
    acc = tl.zeros((BLOCK_C, TILE_H * TILE_W), scale.dtype)
    end = tl.load(starts_ptr + n + 1)
    for i0 in range(tl.load(starts_ptr + n), end, SCAN):
        ks, near = rois_near_tile(order_ptr, window_ptr, i0, end, lanes, row0, row1, col0, col1)
        at = next_set(near, lanes, -1)
        while at < NONE_LEFT:
            k = lane_value(ks, lanes, at)
            _, start_h, start_w, size_h, size_w, grid_h, grid_w, count = _align_box(
                rois_ptr, k, scale, sampling_ratio, ALIGNED, POOLED_H, POOLED_W
            )
            bins = (k.to(tl.int64) * channels + c.to(tl.int64)) * (POOLED_H * POOLED_W)
            rows_hit = spans_hit(row_span_ptr, k, ph_lanes, POOLED_H, row0, row1)
            cols_hit = spans_hit(col_span_ptr, k, pw_lanes, POOLED_W, col0, col1)
            # bins in row-major order, as the CPU path adds them
            ph = next_set(rows_hit, ph_lanes, -1)
            while ph < NONE_LEFT:
                wy, ty = axis_weights(start_h, size_h, grid_h, ph, hh, height, scale.dtype)
                pw = next_set(cols_hit, pw_lanes, -1)
                while pw < NONE_LEFT:
                    wx, tx = axis_weights(start_w, size_w, grid_w, pw, ww, width, scale.dtype)
                    g = tl.load(grad_ptr + bins + (ph * POOLED_W + pw), mask=c_ok, other=0.0)
                    g = div_exact(g.to(scale.dtype), count)
                    w = (wy * wx)[None, :]
                    acc = tl.where((ty & tx)[None, :], acc + g[:, None] * w, acc)
                    pw = next_set(cols_hit, pw_lanes, pw)
                ph = next_set(rows_hit, ph_lanes, ph)
            at = next_set(near, lanes, at)

    store_tile(grad_input_ptr, acc, n, c, c_ok, hh, ww, channels, height, width)


@triton.jit
def _roi_align_backward_lists_kernel(
    grad_ptr,  # (K, C, PH, PW), contiguous
    rois_ptr,
    scale_ptr,
    pairs_ptr,  # int32 k * PH * PW + p, grouped by tile (_launch.tile_lists)
    starts_ptr,  # (N * tiles + 1,) int32
    grad_input_ptr,  # (N, C, H, W)
    sampling_ratio,
    channels,
    height,
    width,
    tiles,
    tiles_w,
    ALIGNED: tl.constexpr,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
):
    """The gather of :func:`_roi_align_backward_kernel` over a prepared list of the tile's (RoI, bin) pairs."""
    tile = tl.program_id(0)
    n = tl.program_id(2)
    row0, col0, hh, ww = tile_cells(tile, tiles_w, TILE_H, TILE_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < channels
    scale = tl.load(scale_ptr)
    acc = tl.zeros((BLOCK_C, TILE_H * TILE_W), scale.dtype)
    at = n * tiles + tile
    for j in range(tl.load(starts_ptr + at), tl.load(starts_ptr + at + 1)):
        pair = tl.load(pairs_ptr + j)
        k = pair // (POOLED_H * POOLED_W)
        ph = (pair // POOLED_W) % POOLED_H
        pw = pair % POOLED_W
        _, start_h, start_w, size_h, size_w, grid_h, grid_w, count = _align_box(
            rois_ptr, k, scale, sampling_ratio, ALIGNED, POOLED_H, POOLED_W
        )
        wy, ty = axis_weights(start_h, size_h, grid_h, ph, hh, height, scale.dtype)
        wx, tx = axis_weights(start_w, size_w, grid_w, pw, ww, width, scale.dtype)
        bins = (k.to(tl.int64) * channels + c.to(tl.int64)) * (POOLED_H * POOLED_W)
        g = tl.load(grad_ptr + bins + (ph * POOLED_W + pw), mask=c_ok, other=0.0)
        g = div_exact(g.to(scale.dtype), count)
        w = (wy * wx)[None, :]
        acc = tl.where((ty & tx)[None, :], acc + g[:, None] * w, acc)

    store_tile(grad_input_ptr, acc, n, c, c_ok, hh, ww, channels, height, width)


def roi_align_forward(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    """RoIAlign of ``input (N, C, H, W)`` over ``rois (K, 5)``: ``(K, C, PH, PW)`` of the input's dtype."""
    input, rois, device, dtype = _launch.forward_inputs(input, rois)
    k_total = rois.shape[0]
    _, channels, height, width = input.shape
    ph, pw = int(pooled_height), int(pooled_width)
    output = torch.empty((k_total, channels, ph, pw), dtype=input.dtype, device=device)
    if output.numel() == 0:
        return output
    if height == 0 or width == 0:
        return output.zero_()
    block_p = _launch.triton_next_pow2(ph * pw)
    block_c = _launch.channel_block(channels, block_p, _launch.TUNING["forward_lanes"])
    grid = (k_total, triton.cdiv(channels, block_c))
    _roi_align_forward_kernel[grid](
        input,
        rois,
        _launch.scale_tensor(spatial_scale, dtype, device),
        output,
        int(sampling_ratio),
        input.shape[0],
        channels,
        height,
        width,
        ALIGNED=bool(aligned),
        POOLED_H=ph,
        POOLED_W=pw,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        num_warps=_launch.TUNING["forward_warps"],
        enable_fp_fusion=False,
    )
    return output


def roi_align_backward(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio, aligned
):
    """Gradient of :func:`roi_align_forward` with respect to its input, ``(N, C, H, W)``.

    Deterministic (a fixed summation order, no atomics); extra memory
    ``O(K * (PH + PW))`` for the RoI order and the span tables.
    """
    device = _launch.check_device(grad=grad, rois=rois)
    dtype = _launch.compute_dtype(grad.dtype)
    _launch.check_batch_index(rois, batch_size)
    rois = _launch.prepare_rois(rois, dtype)
    # every cell is written by the program that owns its tile, so no zero fill
    grad_input = torch.empty((batch_size, channels, height, width), dtype=grad.dtype, device=device)
    if grad_input.numel() == 0:
        return grad_input
    ph, pw = int(pooled_height), int(pooled_width)
    k_total = rois.shape[0]
    grad = grad.contiguous()
    scale = _launch.scale_tensor(spatial_scale, dtype, device)
    row_span, col_span, window = _launch.span_tables(k_total, ph, pw, device)
    if k_total:
        _roi_align_spans_kernel[(k_total,)](
            rois,
            scale,
            row_span,
            col_span,
            window,
            int(sampling_ratio),
            height,
            width,
            ALIGNED=bool(aligned),
            POOLED_H=ph,
            POOLED_W=pw,
            BLOCK_PH=_launch.triton_next_pow2(ph),
            BLOCK_PW=_launch.triton_next_pow2(pw),
            enable_fp_fusion=False,
        )
    tiles, tiles_w = _launch.tile_grid(height, width)
    block_c = _launch.channel_block(channels, _launch.TILE_H * _launch.TILE_W, _launch.TUNING["backward_lanes"])
    grid = (tiles, triton.cdiv(channels, block_c), batch_size)
    if _launch.TUNING["backward"] == "lists":
        pairs, starts = _launch.tile_lists(rois, row_span, col_span, batch_size, height, width)
        _roi_align_backward_lists_kernel[grid](
            grad, rois, scale, pairs, starts, grad_input, int(sampling_ratio), channels, height, width, tiles,
            tiles_w, ALIGNED=bool(aligned), POOLED_H=ph, POOLED_W=pw, BLOCK_C=block_c, TILE_H=_launch.TILE_H,
            TILE_W=_launch.TILE_W, num_warps=_launch.TUNING["backward_warps"], enable_fp_fusion=False,
        )  # fmt: skip
        return grad_input
    order, starts = _launch.rois_by_image(rois, batch_size)
    _roi_align_backward_kernel[grid](
        grad,
        rois,
        scale,
        order,
        starts,
        row_span,
        col_span,
        window,
        grad_input,
        int(sampling_ratio),
        channels,
        height,
        width,
        tiles_w,
        ALIGNED=bool(aligned),
        POOLED_H=ph,
        POOLED_W=pw,
        BLOCK_C=block_c,
        BLOCK_PH=_launch.triton_next_pow2(ph),
        BLOCK_PW=_launch.triton_next_pow2(pw),
        TILE_H=_launch.TILE_H,
        TILE_W=_launch.TILE_W,
        num_warps=_launch.TUNING["backward_warps"],
        enable_fp_fusion=False,
    )
    return grad_input


@triton.jit
def _roi_align_boxes_kernel(
    grad_ptr,  # (K, C, PH, PW), contiguous
    input_ptr,  # (N, C, H, W), contiguous
    rois_ptr,  # (K, 5), compute dtype
    scale_ptr,  # (1,), compute dtype
    grad_rois_ptr,  # (K, 5), compute dtype, zeroed
    sampling_ratio,
    num_images,
    channels,
    height,
    width,
    ALIGNED: tl.constexpr,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    k = tl.program_id(0)
    scale = tl.load(scale_ptr)
    n, start_h, start_w, size_h, size_w, grid_h, grid_w, count = _align_box(
        rois_ptr, k, scale, sampling_ratio, ALIGNED, POOLED_H, POOLED_W
    )
    n = clamp_image(n, num_images)
    row = rois_ptr + k * 5
    if ALIGNED:
        free_w = tl.full((), 1, tl.int1)
        free_h = tl.full((), 1, tl.int1)
    else:
        # the legacy one-cell extent does not follow the box
        free_w = (tl.load(row + 3) * scale) - (tl.load(row + 1) * scale) >= 1.0
        free_h = (tl.load(row + 4) * scale) - (tl.load(row + 2) * scale) >= 1.0
    p = tl.arange(0, BLOCK_P)
    p_ok = p < POOLED_H * POOLED_W
    ph = p // POOLED_W
    pw = p % POOLED_W
    acc_x1 = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    acc_y1 = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    acc_x2 = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    acc_y2 = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    for c0 in range(0, channels, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < channels
        plane = ((n.to(tl.int64) * channels + c.to(tl.int64)) * height * width)[:, None]
        g_at = (k.to(tl.int64) * channels + c.to(tl.int64))[:, None] * (POOLED_H * POOLED_W) + p[None, :]
        g = tl.load(grad_ptr + g_at, mask=c_ok[:, None] & p_ok[None, :], other=0.0).to(scale.dtype)
        acc_x1, acc_y1, acc_x2, acc_y2 = add_box_slopes(
            acc_x1, acc_y1, acc_x2, acc_y2, input_ptr, plane, g, c_ok, p_ok, ph, pw,
            start_h, size_h, grid_h, start_w, size_w, grid_w, height, width, scale,
            free_h, free_w, True, True, True, True,
            POOLED_H, POOLED_W,
        )  # fmt: skip
    store_box_gradient(grad_rois_ptr, k, acc_x1, acc_y1, acc_x2, acc_y2, count)


def roi_align_boxes_backward(grad, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    """Gradient of :func:`roi_align_forward` with respect to ``rois``: ``(K, 5)`` of ``rois``' dtype, column 0 zero.

    Computed in the input's compute dtype, the adaptive grid held fixed;
    deterministic (one program per RoI, a fixed reduction order).
    """
    return _launch.box_gradient(
        _roi_align_boxes_kernel,
        grad,
        input,
        rois,
        spatial_scale,
        (pooled_height, pooled_width),
        sampling_ratio,
        input.shape[1],
        ALIGNED=bool(aligned),
    )

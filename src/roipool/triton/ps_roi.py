"""Position-sensitive RoI pooling (R-FCN) in Triton: ``ps_roi_pool`` and ``ps_roi_align``.

Output channel ``c`` of bin ``(ph, pw)`` reads input channel
``c_in = (c * PH + ph) * PW + pw``, so the input has ``C_out * PH * PW``
channels. Semantics are torchvision's ``ps_roi_pool`` (box rounded half away
from zero, size ``max(end - start, 1)``, bins ``floor``/``ceil`` clipped to
``[0, H - 1] x [0, W - 1]`` as torchvision's forward does, mean over the bin,
0 for an empty bin; the backward uses the same bins, so it is the forward's
exact adjoint) and ``ps_roi_align`` (box scaled and shifted by -0.5, no
minimum size, bilinear samples, mean over ``grid_h * grid_w`` samples with an
adaptive grid of at least one sample per side, so never 0 / 0). float16 and
bfloat16 compute in float32. ``roipool.reference`` states both in loops.

Forward: one program per (RoI, block of output channels); lanes are
``BLOCK_C`` output channels x ``BLOCK_P`` bins, each lane reading its own
input channel.

Backward (gather): since an input channel belongs to one bin, a program owns
(image, bin, block of output channels, 8x8 tile): its lanes are the input
channels ``c * PH * PW + bin`` of that bin. It walks its image's RoIs in
ascending order, 64 at a time (the bin's spans read as one vector), and adds
the bin gradient of each RoI whose bin reaches the tile to the cells it covers
(``ps_roi_pool``: ``grad / area`` on every cell of the bin; ``ps_roi_align``:
``grad / count * wy * wx``, the bilinear weights factored by axis). No
atomics, one writer per cell, a fixed order: the same bits on every run;
extra memory ``O(K * (PH + PW))``.

Box gradient (``ps_roi_align``): one program per RoI, lanes as in the
forward; each sample's slope along its bilinear piece, times how its position
moves with each corner, summed in a fixed order (deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch
from ._common import (
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
    pool_bin_edges,
    rounded_box,
    sample_spans,
    sample_window,
    span_meets,
    store_box_gradient,
    store_spans,
)


@triton.jit
def _ps_pool_box(rois_ptr, k, scale, POOLED_H: tl.constexpr, POOLED_W: tl.constexpr):
    """Batch index, first cell ``(y1, x1)`` and bin sizes of RoI ``k`` for ``ps_roi_pool``."""
    n, x1, y1, x2, y2 = rounded_box(rois_ptr, k, scale)
    # exclusive end here (no +1, unlike roi_pool); a degenerate box becomes one cell
    roi_h = tl.maximum(y2 - y1, 1)
    roi_w = tl.maximum(x2 - x1, 1)
    size_h = div_exact(tl.cast(roi_h, scale.dtype), tl.full((), POOLED_H, scale.dtype))
    size_w = div_exact(tl.cast(roi_w, scale.dtype), tl.full((), POOLED_W, scale.dtype))
    return n, y1, x1, size_h, size_w


@triton.jit
def _ps_align_box(rois_ptr, k, scale, sampling_ratio, POOLED_H: tl.constexpr, POOLED_W: tl.constexpr):
    """Batch index, first corner, bin sizes, sampling grid and count of RoI ``k`` for ``ps_roi_align``."""
    row = rois_ptr + k * 5
    n = tl.load(row).to(tl.int32)
    # scaled corners are clamped to +-(largest float / 8), which keeps every extent finite
    if scale.dtype == tl.float64:
        limit = 2.2471164185778946e307
    else:
        limit = 4.2535293329816107e37
    start_w = tl.minimum(tl.maximum(tl.load(row + 1) * scale, -limit), limit) - 0.5
    start_h = tl.minimum(tl.maximum(tl.load(row + 2) * scale, -limit), limit) - 0.5
    roi_w = (tl.minimum(tl.maximum(tl.load(row + 3) * scale, -limit), limit) - 0.5) - start_w
    roi_h = (tl.minimum(tl.maximum(tl.load(row + 4) * scale, -limit), limit) - 0.5) - start_h
    size_h = div_exact(roi_h, tl.full((), POOLED_H, scale.dtype))
    size_w = div_exact(roi_w, tl.full((), POOLED_W, scale.dtype))
    # adaptive grids take at least one sample per side, so no bin divides by zero; they are not
    # capped (roipool.cpu.ps_geometry), so the grid is a whole number in the compute type
    grid_h = tl.where(sampling_ratio > 0, tl.cast(sampling_ratio, scale.dtype), tl.maximum(tl.ceil(size_h), 1.0))
    grid_w = tl.where(sampling_ratio > 0, tl.cast(sampling_ratio, scale.dtype), tl.maximum(tl.ceil(size_w), 1.0))
    # the product in float64, as the CPU path (exact below 2**53), rounded to the compute type
    count = (grid_h.to(tl.float64) * grid_w.to(tl.float64)).to(scale.dtype)
    return n, start_h, start_w, size_h, size_w, grid_h, grid_w, count


@triton.jit
def _input_planes(n, c, p, channels_out, height, width, BINS: tl.constexpr):
    """Offsets ``(BLOCK_C, BLOCK_P)`` of the input planes: output channel ``c``, bin ``p`` -> ``c * BINS + p``."""
    return (n.to(tl.int64) * (channels_out * BINS) + (c.to(tl.int64) * BINS)[:, None] + p[None, :]) * height * width


@triton.jit
def _ps_forward_kernel(
    input_ptr,  # (N, C_out * PH * PW, H, W), contiguous
    rois_ptr,  # (K, 5), compute dtype
    scale_ptr,  # (1,), compute dtype
    output_ptr,  # (K, C_out, PH, PW), input dtype
    sampling_ratio,
    num_images,
    channels_out,
    height,
    width,
    ALIGN: tl.constexpr,  # False: ps_roi_pool, True: ps_roi_align
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    k = tl.program_id(0)
    scale = tl.load(scale_ptr)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tl.arange(0, BLOCK_P)
    c_ok = c < channels_out
    p_ok = p < POOLED_H * POOLED_W
    ph = p // POOLED_W
    pw = p % POOLED_W
    bins: tl.constexpr = POOLED_H * POOLED_W
    acc = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)

    if ALIGN:
        n, start_h, start_w, size_h, size_w, grid_h, grid_w, count = _ps_align_box(
            rois_ptr, k, scale, sampling_ratio, POOLED_H, POOLED_W
        )
        n = clamp_image(n, num_images)
        plane = _input_planes(n, c, p, channels_out, height, width, bins)
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
                v1 = tl.load(input_ptr + plane + (y_low * width + x_low)[None, :], mask=m, other=0.0)
                v2 = tl.load(input_ptr + plane + (y_low * width + x_high)[None, :], mask=m, other=0.0)
                v3 = tl.load(input_ptr + plane + (y_high * width + x_low)[None, :], mask=m, other=0.0)
                v4 = tl.load(input_ptr + plane + (y_high * width + x_high)[None, :], mask=m, other=0.0)
                val = (
                    (wy_low * wx_low)[None, :] * v1.to(scale.dtype)
                    + (wy_low * wx_high)[None, :] * v2.to(scale.dtype)
                    + (wy_high * wx_low)[None, :] * v3.to(scale.dtype)
                    + (wy_high * wx_high)[None, :] * v4.to(scale.dtype)
                )
                acc = tl.where(ok[None, :], acc + val, acc)
                ix = ix_next
            iy = iy_next
        result = div_exact(acc, count)
    else:
        n, y1, x1, size_h, size_w = _ps_pool_box(rois_ptr, k, scale, POOLED_H, POOLED_W)
        n = clamp_image(n, num_images)
        plane = _input_planes(n, c, p, channels_out, height, width, bins)
        # bins are clipped to [0, H - 1] x [0, W - 1]: the last row and column are never read
        hstart, hend = pool_bin_edges(ph, size_h, y1, height - 1)
        wstart, wend = pool_bin_edges(pw, size_w, x1, width - 1)
        rows = tl.where(p_ok, tl.maximum(hend - hstart, 0), 0)
        cols = tl.where(p_ok, tl.maximum(wend - wstart, 0), 0)
        for i in range(tl.max(rows, axis=0)):
            for j in range(tl.max(cols, axis=0)):
                ok = (i < rows) & (j < cols)
                cell = (hstart + i) * width + (wstart + j)
                v = tl.load(input_ptr + plane + cell[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
                acc = tl.where(ok[None, :], acc + v.to(scale.dtype), acc)
        area = tl.cast(rows * cols, scale.dtype)[None, :]
        result = tl.where(area > 0, div_exact(acc, tl.maximum(area, 1.0)), 0.0)

    out = (k.to(tl.int64) * channels_out + c.to(tl.int64))[:, None] * bins + p[None, :]
    tl.store(output_ptr + out, cast_rne(result, output_ptr.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])


@triton.jit
def _ps_spans_kernel(
    rois_ptr,
    scale_ptr,
    row_span_ptr,  # (K, PH, 2) int32: inclusive first and last row of each bin
    col_span_ptr,  # (K, PW, 2) int32
    window_ptr,  # (K, 4) int32: union over bins
    sampling_ratio,
    height,
    width,
    ALIGN: tl.constexpr,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_PH: tl.constexpr,
    BLOCK_PW: tl.constexpr,
):
    k = tl.program_id(0)
    scale = tl.load(scale_ptr)
    ph = tl.arange(0, BLOCK_PH)
    pw = tl.arange(0, BLOCK_PW)
    if ALIGN:
        n, start_h, start_w, size_h, size_w, grid_h, grid_w, count = _ps_align_box(
            rois_ptr, k, scale, sampling_ratio, POOLED_H, POOLED_W
        )
        row_first, row_last = sample_spans(start_h, size_h, grid_h, ph, height)
        col_first, col_last = sample_spans(start_w, size_w, grid_w, pw, width)
    else:
        n, y1, x1, size_h, size_w = _ps_pool_box(rois_ptr, k, scale, POOLED_H, POOLED_W)
        row_first, row_end = pool_bin_edges(ph, size_h, y1, height - 1)
        col_first, col_end = pool_bin_edges(pw, size_w, x1, width - 1)
        row_last = row_end - 1
        col_last = col_end - 1
    store_spans(row_span_ptr, window_ptr, k, ph, ph < POOLED_H, row_first, row_last, POOLED_H, 0)
    store_spans(col_span_ptr, window_ptr, k, pw, pw < POOLED_W, col_first, col_last, POOLED_W, 2)


@triton.jit
def _ps_backward_kernel(
    grad_ptr,  # (K, C_out, PH, PW), contiguous
    rois_ptr,
    scale_ptr,
    order_ptr,  # (K,) int32: RoIs grouped by image, ascending
    starts_ptr,  # (N + 1,) int32
    row_span_ptr,
    col_span_ptr,
    window_ptr,
    grad_input_ptr,  # (N, C_out * PH * PW, H, W)
    sampling_ratio,
    channels_out,
    channel_blocks,
    height,
    width,
    tiles_w,
    ALIGN: tl.constexpr,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
):
    tile = tl.program_id(0)
    b = tl.program_id(1) // channel_blocks  # the bin this program owns
    ph = b // POOLED_W
    pw = b % POOLED_W
    n = tl.program_id(2)
    row0 = (tile // tiles_w) * TILE_H
    col0 = (tile % tiles_w) * TILE_W
    s = tl.arange(0, TILE_H * TILE_W)
    hh = row0 + s // TILE_W
    ww = col0 + s % TILE_W
    c = (tl.program_id(1) % channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < channels_out
    bins: tl.constexpr = POOLED_H * POOLED_W
    scale = tl.load(scale_ptr)

    lanes = tl.arange(0, SCAN)
    acc = tl.zeros((BLOCK_C, TILE_H * TILE_W), scale.dtype)
    end = tl.load(starts_ptr + n + 1)
    for i0 in range(tl.load(starts_ptr + n), end, SCAN):
        # SCAN RoIs at a time: which of them have this bin reach the tile
        live = i0 + lanes < end
        ks = tl.load(order_ptr + i0 + lanes, mask=live, other=0)
        near = span_meets(row_span_ptr + (ks * POOLED_H + ph) * 2, live, row0, row0 + TILE_H - 1)
        near = near & span_meets(col_span_ptr + (ks * POOLED_W + pw) * 2, live, col0, col0 + TILE_W - 1)
        at = next_set(near, lanes, -1)
        while at < NONE_LEFT:
            k = lane_value(ks, lanes, at)
            at = next_set(near, lanes, at)
            g = tl.load(grad_ptr + (k.to(tl.int64) * channels_out + c.to(tl.int64)) * bins + b, mask=c_ok, other=0.0)
            g = g.to(scale.dtype)
            if ALIGN:
                _, start_h, start_w, size_h, size_w, grid_h, grid_w, count = _ps_align_box(
                    rois_ptr, k, scale, sampling_ratio, POOLED_H, POOLED_W
                )
                wy, ty = axis_weights(start_h, size_h, grid_h, ph, hh, height, scale.dtype)
                wx, tx = axis_weights(start_w, size_w, grid_w, pw, ww, width, scale.dtype)
                acc = tl.where((ty & tx)[None, :], acc + div_exact(g, count)[:, None] * (wy * wx)[None, :], acc)
            else:
                r_first = tl.load(row_span_ptr + (k * POOLED_H + ph) * 2)
                r_last = tl.load(row_span_ptr + (k * POOLED_H + ph) * 2 + 1)
                c_first = tl.load(col_span_ptr + (k * POOLED_W + pw) * 2)
                c_last = tl.load(col_span_ptr + (k * POOLED_W + pw) * 2 + 1)
                area = tl.cast((r_last - r_first + 1) * (c_last - c_first + 1), scale.dtype)
                inside = (hh >= r_first) & (hh <= r_last) & (ww >= c_first) & (ww <= c_last)
                acc = tl.where(inside[None, :], acc + div_exact(g, area)[:, None], acc)

    plane = (n.to(tl.int64) * (channels_out * bins) + c.to(tl.int64) * bins + b) * height * width
    ok = c_ok[:, None] & ((hh < height) & (ww < width))[None, :]
    tl.store(
        grad_input_ptr + plane[:, None] + (hh * width + ww)[None, :],
        cast_rne(acc, grad_input_ptr.dtype.element_ty),
        mask=ok,
    )


def _out_channels(channels, ph, pw):
    if channels % (ph * pw):
        raise ValueError(
            f"input channels ({channels}) must be a multiple of output_size[0] * output_size[1] ({ph * pw})"
        )
    return channels // (ph * pw)


def _forward(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, align):
    input, rois, device, dtype = _launch.forward_inputs(input, rois)
    k_total = rois.shape[0]
    _, channels, height, width = input.shape
    ph, pw = int(pooled_height), int(pooled_width)
    channels_out = _out_channels(channels, ph, pw)
    output = torch.empty((k_total, channels_out, ph, pw), dtype=input.dtype, device=device)
    if output.numel() == 0:
        return output
    if height == 0 or width == 0:
        return output.zero_()
    block_p = _launch.triton_next_pow2(ph * pw)
    block_c = _launch.channel_block(channels_out, block_p)
    _ps_forward_kernel[(k_total, triton.cdiv(channels_out, block_c))](
        input,
        rois,
        _launch.scale_tensor(spatial_scale, dtype, device),
        output,
        int(sampling_ratio),
        input.shape[0],
        channels_out,
        height,
        width,
        ALIGN=align,
        POOLED_H=ph,
        POOLED_W=pw,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        enable_fp_fusion=False,
    )
    return output


def _backward(
    grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, align, batch_size, channels, height, width
):
    device = _launch.check_device(grad=grad, rois=rois)
    dtype = _launch.compute_dtype(grad.dtype)
    _launch.check_batch_index(rois, batch_size)
    rois = _launch.prepare_rois(rois, dtype)
    ph, pw = int(pooled_height), int(pooled_width)
    channels_out = _out_channels(channels, ph, pw)
    # every cell is written by the program that owns its tile, so no zero fill
    grad_input = torch.empty((batch_size, channels, height, width), dtype=grad.dtype, device=device)
    if grad_input.numel() == 0:
        return grad_input
    k_total = rois.shape[0]
    grad = grad.contiguous()
    scale = _launch.scale_tensor(spatial_scale, dtype, device)
    row_span, col_span, window = _launch.span_tables(k_total, ph, pw, device)
    if k_total:
        _ps_spans_kernel[(k_total,)](
            rois,
            scale,
            row_span,
            col_span,
            window,
            int(sampling_ratio),
            height,
            width,
            ALIGN=align,
            POOLED_H=ph,
            POOLED_W=pw,
            BLOCK_PH=_launch.triton_next_pow2(ph),
            BLOCK_PW=_launch.triton_next_pow2(pw),
            enable_fp_fusion=False,
        )
    order, starts = _launch.rois_by_image(rois, batch_size)
    tiles, tiles_w = _launch.tile_grid(height, width)
    block_c = _launch.channel_block(channels_out, _launch.TILE_H * _launch.TILE_W)
    channel_blocks = triton.cdiv(channels_out, block_c)
    grid = (tiles, ph * pw * channel_blocks, batch_size)
    _ps_backward_kernel[grid](
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
        channels_out,
        channel_blocks,
        height,
        width,
        tiles_w,
        ALIGN=align,
        POOLED_H=ph,
        POOLED_W=pw,
        BLOCK_C=block_c,
        TILE_H=_launch.TILE_H,
        TILE_W=_launch.TILE_W,
        enable_fp_fusion=False,
    )
    return grad_input


@triton.jit
def _ps_align_boxes_kernel(
    grad_ptr,  # (K, C_out, PH, PW), contiguous
    input_ptr,  # (N, C_out * PH * PW, H, W), contiguous
    rois_ptr,  # (K, 5), compute dtype
    scale_ptr,  # (1,), compute dtype
    grad_rois_ptr,  # (K, 5), compute dtype, zeroed
    sampling_ratio,
    num_images,
    channels_out,
    height,
    width,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    k = tl.program_id(0)
    scale = tl.load(scale_ptr)
    n, start_h, start_w, size_h, size_w, grid_h, grid_w, count = _ps_align_box(
        rois_ptr, k, scale, sampling_ratio, POOLED_H, POOLED_W
    )
    n = clamp_image(n, num_images)
    # a corner held at the coordinate limit (_ps_align_box) does not follow the box
    if scale.dtype == tl.float64:
        limit = 2.2471164185778946e307
    else:
        limit = 4.2535293329816107e37
    row = rois_ptr + k * 5
    moves_x1 = tl.abs(tl.load(row + 1) * scale) < limit
    moves_y1 = tl.abs(tl.load(row + 2) * scale) < limit
    moves_x2 = tl.abs(tl.load(row + 3) * scale) < limit
    moves_y2 = tl.abs(tl.load(row + 4) * scale) < limit
    p = tl.arange(0, BLOCK_P)
    p_ok = p < POOLED_H * POOLED_W
    ph = p // POOLED_W
    pw = p % POOLED_W
    bins: tl.constexpr = POOLED_H * POOLED_W
    acc_x1 = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    acc_y1 = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    acc_x2 = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    acc_y2 = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    for c0 in range(0, channels_out, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < channels_out
        plane = _input_planes(n, c, p, channels_out, height, width, bins)
        g_at = (k.to(tl.int64) * channels_out + c.to(tl.int64))[:, None] * bins + p[None, :]
        g = tl.load(grad_ptr + g_at, mask=c_ok[:, None] & p_ok[None, :], other=0.0).to(scale.dtype)
        acc_x1, acc_y1, acc_x2, acc_y2 = add_box_slopes(
            acc_x1, acc_y1, acc_x2, acc_y2, input_ptr, plane, g, c_ok, p_ok, ph, pw,
            start_h, size_h, grid_h, start_w, size_w, grid_w, height, width, scale,
            True, True, moves_x1, moves_y1, moves_x2, moves_y2,
            POOLED_H, POOLED_W,
        )  # fmt: skip
    store_box_gradient(grad_rois_ptr, k, acc_x1, acc_y1, acc_x2, acc_y2, count)


def ps_roi_pool_forward(input, rois, spatial_scale, pooled_height, pooled_width):
    """PS-RoI pooling of ``input (N, C_out*PH*PW, H, W)``: ``(K, C_out, PH, PW)`` of the input's dtype."""
    return _forward(input, rois, spatial_scale, pooled_height, pooled_width, 0, False)


def ps_roi_pool_backward(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width):
    """Gradient of :func:`ps_roi_pool_forward` with respect to its input; deterministic."""
    return _backward(
        grad, rois, spatial_scale, pooled_height, pooled_width, 0, False, batch_size, channels, height, width
    )


def ps_roi_align_forward(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    """PS-RoIAlign of ``input (N, C_out*PH*PW, H, W)``: ``(K, C_out, PH, PW)`` of the input's dtype."""
    return _forward(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, True)


def ps_roi_align_backward(
    grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, batch_size, channels, height, width
):
    """Gradient of :func:`ps_roi_align_forward` with respect to its input; deterministic."""
    return _backward(
        grad,
        rois,
        spatial_scale,
        pooled_height,
        pooled_width,
        sampling_ratio,
        True,
        batch_size,
        channels,
        height,
        width,
    )


def ps_roi_align_boxes_backward(grad, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    """Gradient of :func:`ps_roi_align_forward` with respect to ``rois``: ``(K, 5)`` of ``rois``' dtype, column 0 zero.

    Computed in the input's compute dtype, the adaptive grid held fixed;
    deterministic (one program per RoI, a fixed reduction order).
    """
    channels_out = _out_channels(input.shape[1], int(pooled_height), int(pooled_width))
    return _launch.box_gradient(
        _ps_align_boxes_kernel,
        grad,
        input,
        rois,
        spatial_scale,
        (pooled_height, pooled_width),
        sampling_ratio,
        channels_out,
    )

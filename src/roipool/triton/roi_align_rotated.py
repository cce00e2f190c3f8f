"""Rotated RoIAlign in Triton: forward and a deterministic input backward.

Semantics: ``docs/semantics.md`` (Rotated RoIAlign), as the CPU kernels. The
per-RoI frame (centre, bin sizes, cos and sin of the angle, sample grid) is
computed once by torch in the compute dtype (:func:`frames`), so every
sample lies where the reference puts it; the kernels then do the sample
arithmetic in the reference's order with fused multiply-adds off.

Forward: one program per (RoI, block of channels); lanes are ``BLOCK_C``
channels x ``BLOCK_P`` bins, the sampling grid a loop.

Backward (gather): one program per (image, block of channels, 8x8 tile of the
map). It walks its image's RoIs in ascending order, skips those whose
rotated bounding window misses the tile, and adds each sample's bilinear
weights (a product of per-axis weights) times ``grad / count`` to the tile's
cells. No atomics: each cell is summed by one program in a fixed order.

Each row of samples is clipped, as on the CPU, to the columns that can land
within a cell of the map (:func:`_row_span`), so huge adaptive grids visit
only the samples near the map. Not done here: the box gradient (CPU only for now).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from . import _launch
from ._common import bilinear_axis, cast_rne, clamp_image, div_exact

# frame columns (compute dtype)
_BATCH, _CY, _CX, _START_H, _START_W, _BIN_H, _BIN_W, _COS, _SIN = range(9)
_COLUMNS = 9


def frames(rois, num_images, dtype, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, clockwise):
    """``(frames (K, 9), grids (K, 2) int32, window (K, 4) int32)`` of checked rotated rois.

    The rois are checked on the host by the CPU path's rules (``_checks``), one
    small copy per call. ``window`` is each box's rotated bounding box in whole
    cells ``[row0, row1, col0, col1]``, widened by two cells, for the backward's culling.
    """
    from .. import _checks

    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    host = rois.detach().cpu()
    if host.dtype == torch.bfloat16:
        host = host.float()
    checked = _checks.rotated_rois_array(host.numpy(), num_images, np_dtype)
    _checks.rotated_scaled_boxes(checked, spatial_scale, pooled_height, pooled_width, sampling_ratio <= 0)
    r = rois.detach().to(dtype)
    scale = torch.tensor(spatial_scale, dtype=dtype, device=r.device)
    offset = 0.5 if aligned else 0.0
    roi_w, roi_h = r[:, 3] * scale, r[:, 4] * scale
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    theta = -r[:, 5] if clockwise else r[:, 5]
    f = torch.stack(
        [
            r[:, 0],
            r[:, 2] * scale - offset,
            r[:, 1] * scale - offset,
            -roi_h / 2,
            -roi_w / 2,
            roi_h / pooled_height,
            roi_w / pooled_width,
            torch.cos(theta),
            torch.sin(theta),
        ],
        dim=1,
    ).contiguous()
    if sampling_ratio > 0:
        grids = torch.full((r.shape[0], 2), sampling_ratio, dtype=torch.int32, device=r.device)
    else:
        grids = torch.stack([torch.ceil(roi_h / pooled_height), torch.ceil(roi_w / pooled_width)], 1)
        grids = grids.clamp(min=0).to(torch.int32)
    ext_h = (roi_h / 2 * f[:, _COS]).abs() + (roi_w / 2 * f[:, _SIN]).abs()
    ext_w = (roi_h / 2 * f[:, _SIN]).abs() + (roi_w / 2 * f[:, _COS]).abs()
    lim = 2.0**30
    window = (
        torch.stack(
            [
                torch.floor(f[:, _CY] - ext_h) - 2,
                torch.ceil(f[:, _CY] + ext_h) + 2,
                torch.floor(f[:, _CX] - ext_w) - 2,
                torch.ceil(f[:, _CX] + ext_w) + 2,
            ],
            dim=1,
        )
        .clamp(-lim, lim)
        .to(torch.int32)
    )
    return f, grids.contiguous(), window.contiguous()


@triton.jit
def _sample(f, ph, pw, iy, ix, gh, gw):
    """Map position ``(y, x)`` of sample ``(iy, ix)`` of bins ``(ph, pw)``, rounded op by op as the reference."""
    bin_h = tl.load(f + 5)
    bin_w = tl.load(f + 6)
    cos = tl.load(f + 7)
    sin = tl.load(f + 8)
    v = (tl.load(f + 3) + ph * bin_h) + div_exact((iy + 0.5) * bin_h, tl.cast(gh, bin_h.dtype))
    u = (tl.load(f + 4) + pw * bin_w) + div_exact((ix + 0.5) * bin_w, tl.cast(gw, bin_w.dtype))
    y = (v * cos - u * sin) + tl.load(f + 1)
    x = (v * sin + u * cos) + tl.load(f + 2)
    return y, x


@triton.jit
def _axis_span(p, q, limit, lo, hi):
    """Narrow ``[lo, hi]`` (floats, per lane) to the ``i`` with ``-1 <= p + q * i <= limit``, widened by a sample."""
    safe_q = tl.where(q == 0.0, 1.0, q)
    i0 = (-1.0 - p) / safe_q
    i1 = (limit - p) / safe_q
    lo = tl.where(
        q == 0.0, tl.where((p >= -2.0) & (p <= limit + 1.0), lo, hi + 8.0), tl.maximum(lo, tl.minimum(i0, i1))
    )
    hi = tl.where(q == 0.0, hi, tl.minimum(hi, tl.maximum(i0, i1)))
    return lo, hi


@triton.jit
def _row_span(f, v, pw, gw, ok, height, width):
    """Columns ``[lo, hi)`` of sample row ``v`` (per lane; lanes ``ok``) that can land within a cell of the map.

    The CPU kernels' clipping: a huge adaptive grid visits only the samples near the map.
    """
    bin_w = tl.load(f + 6).to(tl.float64)
    cos = tl.load(f + 7).to(tl.float64)
    sin = tl.load(f + 8).to(tl.float64)
    d = bin_w / tl.maximum(gw, 1)
    a = tl.load(f + 4).to(tl.float64) + pw.to(tl.float64) * bin_w + 0.5 * d
    v = v.to(tl.float64)
    lo = tl.zeros_like(v)
    hi = lo + (gw - 1.0)
    lo, hi = _axis_span(v * sin + a * cos + tl.load(f + 2).to(tl.float64), d * cos, width * 1.0, lo, hi)
    lo, hi = _axis_span(v * cos - a * sin + tl.load(f + 1).to(tl.float64), -d * sin, height * 1.0, lo, hi)
    keep = ok & (lo <= hi + 4.0)
    lo_i = tl.min(tl.where(keep, tl.maximum(tl.floor(lo) - 2.0, 0.0), gw * 1.0), axis=0).to(tl.int32)
    hi_i = tl.max(tl.where(keep, tl.minimum(tl.ceil(hi) + 3.0, gw * 1.0), 0.0), axis=0).to(tl.int32)
    small = gw <= 8
    return tl.where(small, 0, lo_i), tl.where(small, gw, hi_i)


@triton.jit
def _forward_kernel(
    input_ptr,  # (N, C, H, W), contiguous
    frames_ptr,  # (K, 9), compute dtype
    grids_ptr,  # (K, 2) int32
    output_ptr,  # (K, C, PH, PW), input dtype
    num_images,
    channels,
    height,
    width,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    k = tl.program_id(0)
    f = frames_ptr + k * 9
    n = clamp_image(tl.load(f).to(tl.int32), num_images)
    gh = tl.load(grids_ptr + k * 2)
    gw = tl.load(grids_ptr + k * 2 + 1)
    dt = tl.load(f + 1).dtype
    count = tl.cast(tl.maximum(gh * gw, 1), dt)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tl.arange(0, BLOCK_P)
    c_ok = c < channels
    p_ok = p < POOLED_H * POOLED_W
    ph = tl.cast(p // POOLED_W, dt)
    pw = tl.cast(p % POOLED_W, dt)
    plane = ((n.to(tl.int64) * channels + c.to(tl.int64)) * height * width)[:, None]
    acc = tl.zeros((BLOCK_C, BLOCK_P), dt)
    for iy in range(gh):
        v = (tl.load(f + 3) + ph * tl.load(f + 5)) + div_exact((iy + 0.5) * tl.load(f + 5), tl.cast(gh, dt))
        ix_lo, ix_hi = _row_span(f, v, pw, gw, p_ok, height, width)
        for ix in range(ix_lo, ix_hi):
            y, x = _sample(f, ph, pw, tl.cast(iy, dt), tl.cast(ix, dt), gh, gw)
            y_ok, y_low, y_high, wy_low, wy_high = bilinear_axis(y, height)
            x_ok, x_low, x_high, wx_low, wx_high = bilinear_axis(x, width)
            ok = p_ok & y_ok & x_ok
            m = c_ok[:, None] & ok[None, :]
            v1 = tl.load(input_ptr + plane + (y_low * width + x_low)[None, :], mask=m, other=0.0).to(dt)
            v2 = tl.load(input_ptr + plane + (y_low * width + x_high)[None, :], mask=m, other=0.0).to(dt)
            v3 = tl.load(input_ptr + plane + (y_high * width + x_low)[None, :], mask=m, other=0.0).to(dt)
            v4 = tl.load(input_ptr + plane + (y_high * width + x_high)[None, :], mask=m, other=0.0).to(dt)
            w1 = (wy_low * wx_low)[None, :]
            w2 = (wy_low * wx_high)[None, :]
            w3 = (wy_high * wx_low)[None, :]
            w4 = (wy_high * wx_high)[None, :]
            acc = tl.where(ok[None, :], acc + (((w1 * v1 + w2 * v2) + w3 * v3) + w4 * v4), acc)
    out = (k.to(tl.int64) * channels + c.to(tl.int64))[:, None] * (POOLED_H * POOLED_W) + p[None, :]
    tl.store(output_ptr + out, cast_rne(div_exact(acc, count), output_ptr.dtype.element_ty),
             mask=c_ok[:, None] & p_ok[None, :])  # fmt: skip


@triton.jit
def _backward_kernel(
    grad_ptr,  # (K, C, PH, PW), contiguous
    frames_ptr,
    grids_ptr,
    window_ptr,  # (K, 4) int32
    order_ptr,  # (K,) int32: RoIs grouped by image, ascending
    starts_ptr,  # (N + 1,) int32
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
):
    tile = tl.program_id(0)
    n = tl.program_id(2)
    row0 = (tile // tiles_w) * TILE_H
    col0 = (tile % tiles_w) * TILE_W
    s = tl.arange(0, TILE_H * TILE_W)
    hh = row0 + s // TILE_W
    ww = col0 + s % TILE_W
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < channels
    dt = tl.load(frames_ptr + 1).dtype
    acc = tl.zeros((BLOCK_C, TILE_H * TILE_W), dt)
    for i in range(tl.load(starts_ptr + n), tl.load(starts_ptr + n + 1)):
        k = tl.load(order_ptr + i)
        win = window_ptr + k * 4
        near = (tl.load(win) <= row0 + TILE_H - 1) & (tl.load(win + 1) >= row0)
        near = near & (tl.load(win + 2) <= col0 + TILE_W - 1) & (tl.load(win + 3) >= col0)
        if near:
            f = frames_ptr + k * 9
            gh = tl.load(grids_ptr + k * 2)
            gw = tl.load(grids_ptr + k * 2 + 1)
            count = tl.cast(tl.maximum(gh * gw, 1), dt)
            bins = (k.to(tl.int64) * channels + c.to(tl.int64)) * (POOLED_H * POOLED_W)
            for b in range(POOLED_H * POOLED_W):
                g = div_exact(tl.load(grad_ptr + bins + b, mask=c_ok, other=0.0).to(dt), count)
                ph = tl.cast(b // POOLED_W, dt)
                pw = tl.cast(b % POOLED_W, dt)
                for iy in range(gh):
                    v = (tl.load(f + 3) + ph * tl.load(f + 5)) + div_exact((iy + 0.5) * tl.load(f + 5), tl.cast(gh, dt))
                    ix_lo, ix_hi = _row_span(f, v[None], pw[None], gw, tl.full((1,), 1, tl.int1), height, width)
                    for ix in range(ix_lo, ix_hi):
                        y, x = _sample(f, ph, pw, tl.cast(iy, dt), tl.cast(ix, dt), gh, gw)
                        y_ok, y_low, y_high, wy_low, wy_high = bilinear_axis(y, height)
                        x_ok, x_low, x_high, wx_low, wx_high = bilinear_axis(x, width)
                        wy = tl.where(hh == y_low, wy_low, 0.0) + tl.where(hh == y_high, wy_high, 0.0)
                        wx = tl.where(ww == x_low, wx_low, 0.0) + tl.where(ww == x_high, wx_high, 0.0)
                        w = tl.where(y_ok & x_ok, wy * wx, 0.0)
                        acc = acc + g[:, None] * w[None, :]
    plane = (n.to(tl.int64) * channels + c.to(tl.int64)) * height * width
    ok = c_ok[:, None] & ((hh < height) & (ww < width))[None, :]
    tl.store(grad_input_ptr + plane[:, None] + (hh * width + ww)[None, :],
             cast_rne(acc, grad_input_ptr.dtype.element_ty), mask=ok)  # fmt: skip


def roi_align_rotated_forward(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
                              clockwise):  # fmt: skip
    """Rotated RoIAlign of ``input (N, C, H, W)`` over ``rois (K, 6)``: ``(K, C, PH, PW)`` of the input's dtype."""
    device = _launch.check_device(input=input, rois=rois)
    dtype = _launch.compute_dtype(input.dtype)
    ph, pw = int(pooled_height), int(pooled_width)
    f, grids, _ = frames(rois, input.shape[0], dtype, spatial_scale, ph, pw, int(sampling_ratio), aligned, clockwise)
    input = input.contiguous()
    k_total = rois.shape[0]
    _, channels, height, width = input.shape
    output = torch.empty((k_total, channels, ph, pw), dtype=input.dtype, device=device)
    if output.numel() == 0:
        return output
    if height == 0 or width == 0:
        return output.zero_()
    block_p = _launch.triton_next_pow2(ph * pw)
    block_c = _launch.channel_block(channels, block_p)
    grid = (k_total, triton.cdiv(channels, block_c))
    _forward_kernel[grid](
        input, f, grids, output, input.shape[0], channels, height, width,
        POOLED_H=ph, POOLED_W=pw, BLOCK_C=block_c, BLOCK_P=block_p, enable_fp_fusion=False,
    )  # fmt: skip
    return output


def roi_align_rotated_backward(grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
                               clockwise, batch_size, channels, height, width):  # fmt: skip
    """Gradient of :func:`roi_align_rotated_forward` with respect to its input, ``(N, C, H, W)``; deterministic."""
    device = _launch.check_device(grad=grad, rois=rois)
    dtype = _launch.compute_dtype(grad.dtype)
    ph, pw = int(pooled_height), int(pooled_width)
    f, grids, window = frames(rois, batch_size, dtype, spatial_scale, ph, pw, int(sampling_ratio), aligned, clockwise)
    grad_input = torch.empty((batch_size, channels, height, width), dtype=grad.dtype, device=device)
    if grad_input.numel() == 0:
        return grad_input
    if rois.shape[0] == 0:
        return grad_input.zero_()  # (the kernel reads its compute dtype from the first frame)
    order, starts = _launch.rois_by_image(f, batch_size)
    tiles, tiles_w = _launch.tile_grid(height, width)
    block_c = _launch.channel_block(channels, _launch.TILE_H * _launch.TILE_W)
    grid = (tiles, triton.cdiv(channels, block_c), batch_size)
    _backward_kernel[grid](
        grad.contiguous(), f, grids, window, order, starts, grad_input, channels, height, width, tiles_w,
        POOLED_H=ph, POOLED_W=pw, BLOCK_C=block_c, TILE_H=_launch.TILE_H, TILE_W=_launch.TILE_W,
        enable_fp_fusion=False,
    )  # fmt: skip
    return grad_input

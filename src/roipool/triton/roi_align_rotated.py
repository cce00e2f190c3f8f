"""Rotated RoIAlign in Triton: forward, a deterministic input backward, the box backward.

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
only the samples near the map.

Box backward: one program per RoI sums its five derivatives in float64 in a
fixed order (the CPU kernel's rule, ``reference.roi_align_rotated_box_grad``).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from . import _launch
from ._common import bilinear_axis, cast_rne, clamp_image, div_exact

# frame columns (compute dtype); the kernels address them by number
_BATCH, _CY, _CX, _START_H, _START_W, _BIN_H, _BIN_W, _COS, _SIN, _FREE_W, _FREE_H = range(11)
_COLUMNS = 11


def frames(rois, num_images, dtype, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, clockwise):
    """``(frames (K, 11), grids (K, 2) int32, window (K, 4) int32)`` of checked rotated rois.

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
    # a size raised to one cell by the legacy rule has no derivative
    free_w = (roi_w > 1).to(dtype) if not aligned else torch.ones_like(roi_w)
    free_h = (roi_h > 1).to(dtype) if not aligned else torch.ones_like(roi_h)
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
            free_w,
            free_h,
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
def _axis_span(p, q, size, limit, lo, hi):
    """Narrow ``[lo, hi]`` (floats, per lane) to the ``i`` with ``-1 <= p + q * i <= limit``, widened by a sample.

    As the CPU kernels' ``_row_span``: the bounds are first widened by 1e-5 of ``size``, the
    largest term of the samples' own arithmetic, far more than its rounding (where ``q`` is
    tiny, as at a quarter turn, one rounding is millions of samples).
    """
    slack = 1e-5 * size
    safe_q = tl.where(q == 0.0, 1.0, q)
    i0 = (-1.0 - slack - p) / safe_q
    i1 = (limit + slack - p) / safe_q
    lo = tl.where(
        q == 0.0,
        tl.where((p >= -2.0 - slack) & (p <= limit + 1.0 + slack), lo, hi + 8.0),
        tl.maximum(lo, tl.minimum(i0, i1)),
    )
    hi = tl.where(q == 0.0, hi, tl.minimum(hi, tl.maximum(i0, i1)))
    return lo, hi


@triton.jit
def _row_span(f, v, pw, gw, ok, height, width):
    """Columns ``[lo, hi)`` of sample row ``v`` that can land within a cell of the map, over all
    lanes ``ok`` (the union of :func:`_lane_spans`)."""
    lo, hi = _lane_spans(f, v, pw, gw, ok, height, width)
    return tl.min(lo, axis=0), tl.max(hi, axis=0)


@triton.jit
def _lane_spans(f, v, pw, gw, ok, height, width):
    """Per lane, the columns ``[lo, hi)`` of sample row ``v`` of bin column ``pw`` that can land
    within a cell of the map (empty, ``lo = gw``, ``hi = 0``, for lanes not ``ok``).

    The CPU kernels' clipping: a huge adaptive grid visits only the samples near the map.
    """
    bin_w = tl.load(f + 6).to(tl.float64)
    cos = tl.load(f + 7).to(tl.float64)
    sin = tl.load(f + 8).to(tl.float64)
    d = bin_w / tl.maximum(gw, 1)
    a = tl.load(f + 4).to(tl.float64) + pw.to(tl.float64) * bin_w + 0.5 * d
    v = v.to(tl.float64)
    cx = tl.load(f + 2).to(tl.float64)
    cy = tl.load(f + 1).to(tl.float64)
    reach = tl.abs(a) + tl.abs(d) * gw  # the largest |u| of the row
    lo = tl.zeros_like(v)
    hi = lo + (gw - 1.0)
    size_x = tl.abs(v * sin) + reach * tl.abs(cos) + tl.abs(cx)
    size_y = tl.abs(v * cos) + reach * tl.abs(sin) + tl.abs(cy)
    lo, hi = _axis_span(v * sin + a * cos + cx, d * cos, size_x, width * 1.0, lo, hi)
    lo, hi = _axis_span(v * cos - a * sin + cy, -d * sin, size_y, height * 1.0, lo, hi)
    keep = ok & (lo <= hi + 4.0)
    lo_i = tl.where(keep, tl.maximum(tl.floor(lo) - 2.0, 0.0), gw * 1.0).to(tl.int32)
    hi_i = tl.where(keep, tl.minimum(tl.ceil(hi) + 3.0, gw * 1.0), 0.0).to(tl.int32)
    small = gw <= 8
    return tl.where(small, 0, lo_i), tl.where(small, gw, hi_i)


@triton.jit
def _forward_kernel(
    input_ptr,  # (N, C, H, W), contiguous
    frames_ptr,  # (K, 11), compute dtype
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
    f = frames_ptr + k * 11
    n = clamp_image(tl.load(f).to(tl.int32), num_images)
    gh = tl.load(grids_ptr + k * 2)
    gw = tl.load(grids_ptr + k * 2 + 1)
    dt = tl.load(f + 1).dtype
    # the exact product, rounded once: grids of up to 2**20 a side overflow an int32 product
    count = tl.cast(tl.maximum(gh.to(tl.int64) * gw.to(tl.int64), 1), dt)
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
        # each bin (lane) walks its own columns, in ascending order: a long box whose bins meet
        # on the map would walk every sample of the row through the union of their spans
        ix_lo, ix_hi = _lane_spans(f, v, pw, gw, p_ok, height, width)
        for j in range(tl.max(ix_hi - ix_lo, axis=0)):
            ix = ix_lo + j
            y, x = _sample(f, ph, pw, tl.cast(iy, dt), tl.cast(ix, dt), gh, gw)
            y_ok, y_low, y_high, wy_low, wy_high = bilinear_axis(y, height)
            x_ok, x_low, x_high, wx_low, wx_high = bilinear_axis(x, width)
            ok = p_ok & (ix < ix_hi) & y_ok & x_ok
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
            f = frames_ptr + k * 11
            gh = tl.load(grids_ptr + k * 2)
            gw = tl.load(grids_ptr + k * 2 + 1)
            count = tl.cast(tl.maximum(gh.to(tl.int64) * gw.to(tl.int64), 1), dt)
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


@triton.jit
def _box_backward_kernel(
    input_ptr,  # (N, C, H, W), contiguous
    grad_ptr,  # (K, C, PH, PW), contiguous
    frames_ptr,
    grids_ptr,
    out_ptr,  # (K, 6) float64: column 0 stays 0
    scale_ptr,  # (1,) float64
    num_images,
    channels,
    height,
    width,
    SIGN: tl.constexpr,
    POOLED_H: tl.constexpr,
    POOLED_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program per RoI: d loss / d [cx, cy, w, h, angle], summed in float64 in a fixed order."""
    k = tl.program_id(0)
    f = frames_ptr + k * 11
    n = clamp_image(tl.load(f).to(tl.int32), num_images)
    gh = tl.load(grids_ptr + k * 2)
    gw = tl.load(grids_ptr + k * 2 + 1)
    cy = tl.load(f + 1).to(tl.float64)
    cx = tl.load(f + 2).to(tl.float64)
    roi_h = -2.0 * tl.load(f + 3).to(tl.float64)
    roi_w = -2.0 * tl.load(f + 4).to(tl.float64)
    cos = tl.load(f + 7).to(tl.float64)
    sin = tl.load(f + 8).to(tl.float64)
    count = tl.maximum(gh.to(tl.int64) * gw.to(tl.int64), 1).to(tl.float64)
    s_cx = tl.zeros((), tl.float64)
    s_cy = tl.zeros((), tl.float64)
    s_w = tl.zeros((), tl.float64)
    s_h = tl.zeros((), tl.float64)
    s_a = tl.zeros((), tl.float64)
    cc = tl.arange(0, BLOCK_C)
    image = input_ptr + n.to(tl.int64) * channels * height * width
    for b in range(POOLED_H * POOLED_W):
        ph = b // POOLED_W
        pw = b % POOLED_W
        # the fractions in float64 from the start (Triton computes an int plus 0.5, divided by an
        # int32, in float32: a position a rounding off the reference's takes the other piece at
        # a whole cell); iy + 0.5 and ix + 0.5 are counted in float64, exactly
        zero = tl.zeros((), tl.float64)
        fy = zero + 0.5
        for _iy in range(gh):
            fv = -0.5 + ((zero + ph) + fy / (zero + gh)) / POOLED_H
            v = fv * roi_h
            # only the columns of the row that can land on the map, as the forward (a huge adaptive
            # grid would otherwise be visited whole); the span is widened by samples, so the
            # rounding between this v and the forward's does not matter
            ix_lo, ix_hi = _row_span(f, v[None], (zero + pw)[None], gw, tl.full((1,), 1, tl.int1), height, width)
            fx = (zero + ix_lo) + 0.5
            for _ix in range(ix_lo, ix_hi):
                fu = -0.5 + ((zero + pw) + fx / (zero + gw)) / POOLED_W
                u = fu * roi_w
                y = v * cos - u * sin + cy
                x = v * sin + u * cos + cx
                ok = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
                y_free = ok & (y > 0.0) & (y < height - 1.0)
                x_free = ok & (x > 0.0) & (x < width - 1.0)
                yc = tl.minimum(tl.maximum(y, 0.0), height - 1.0)
                xc = tl.minimum(tl.maximum(x, 0.0), width - 1.0)
                y0 = tl.minimum(yc.to(tl.int32), tl.maximum(height - 2, 0))
                x0 = tl.minimum(xc.to(tl.int32), tl.maximum(width - 2, 0))
                y1 = tl.minimum(y0 + 1, height - 1)
                x1 = tl.minimum(x0 + 1, width - 1)
                ly = yc - y0
                lx = xc - x0
                gy = tl.zeros((), tl.float64)
                gx = tl.zeros((), tl.float64)
                if ok:
                    for c0 in range(0, channels, BLOCK_C):
                        c = c0 + cc
                        m = c < channels
                        plane = image + c.to(tl.int64) * height * width
                        g = tl.load(grad_ptr + (k.to(tl.int64) * channels + c) * (POOLED_H * POOLED_W) + b, mask=m,
                                    other=0.0).to(tl.float64) / count  # fmt: skip
                        a = tl.load(plane + y0 * width + x0, mask=m, other=0.0).to(tl.float64)
                        bb = tl.load(plane + y0 * width + x1, mask=m, other=0.0).to(tl.float64)
                        c3 = tl.load(plane + y1 * width + x0, mask=m, other=0.0).to(tl.float64)
                        d = tl.load(plane + y1 * width + x1, mask=m, other=0.0).to(tl.float64)
                        gy += tl.sum(g * ((1.0 - lx) * (c3 - a) + lx * (d - bb)), axis=0)
                        gx += tl.sum(g * ((1.0 - ly) * (bb - a) + ly * (d - c3)), axis=0)
                gy = tl.where(y_free, gy, 0.0)
                gx = tl.where(x_free, gx, 0.0)
                s_cx += gx
                s_cy += gy
                s_w += fu * (gx * cos - gy * sin)
                s_h += fv * (gy * cos + gx * sin)
                s_a += gx * (v * cos - u * sin) - gy * (v * sin + u * cos)
                fx += 1.0
            fy += 1.0
    scale = tl.load(scale_ptr)
    row = out_ptr + k * 6
    tl.store(row + 1, s_cx * scale)
    tl.store(row + 2, s_cy * scale)
    tl.store(row + 3, s_w * scale * tl.load(f + 9).to(tl.float64))
    tl.store(row + 4, s_h * scale * tl.load(f + 10).to(tl.float64))
    tl.store(row + 5, s_a * SIGN)


def roi_align_rotated_box_backward(grad, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                                   aligned, clockwise):  # fmt: skip
    """Gradient of :func:`roi_align_rotated_forward` with respect to ``rois (K, 6)`` (column 0 gets 0); deterministic.

    Each row of samples is clipped to the columns that can land on the map,
    as in the forward, so a huge adaptive grid visits only the samples near it.
    """
    device = _launch.check_device(grad=grad, input=input, rois=rois)
    _launch.compute_dtype(input.dtype)  # checks the dtype
    ph, pw = int(pooled_height), int(pooled_width)
    # the frame in float64 whatever the input's dtype, as the CPU kernel and the reference (docs/semantics.md)
    f, grids, _ = frames(
        rois, input.shape[0], torch.float64, spatial_scale, ph, pw, int(sampling_ratio), aligned, clockwise
    )
    out = torch.zeros((rois.shape[0], 6), dtype=torch.float64, device=device)
    _, channels, height, width = input.shape
    if rois.shape[0] and input.numel():
        scale = torch.full((1,), float(spatial_scale), dtype=torch.float64, device=device)
        block_c = min(_launch.triton_next_pow2(channels), 128)
        _box_backward_kernel[(rois.shape[0],)](
            input.contiguous(), grad.contiguous(), f, grids, out, scale, input.shape[0], channels, height, width,
            SIGN=-1.0 if clockwise else 1.0, POOLED_H=ph, POOLED_W=pw, BLOCK_C=block_c, enable_fp_fusion=False,
        )  # fmt: skip
    return out.to(rois.dtype)

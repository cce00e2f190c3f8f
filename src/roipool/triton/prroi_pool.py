"""Precise RoI Pooling in Triton: forward, deterministic input backward, box backward.

Semantics: ``docs/semantics.md`` (prroi_pool), the same closed form as
``cpu/prroi_pool.py``: a bin ``[ya, yb] x [xa, xb]`` is
``sum of wy[i] * wx[j] * input[i, j]`` with ``wy[i]`` the mean of
``hat(y - i)`` over ``[ya, yb]`` (:func:`hat_mean`, which also gives the
derivatives with respect to the two ends, without cancellation). float16
and bfloat16 compute in float32.

Forward: one program per (RoI, block of channels); lanes are ``BLOCK_C``
channels x ``BLOCK_P`` bins; loops over the at most ``ceil(bin) + 3`` rows and
columns a bin's hat functions reach.

Input backward (gather): one program per (8x8 tile, block of channels,
image); it walks its image's RoIs in ascending order and adds
``grad * wy * wx`` for every bin whose support meets the tile, the weights
evaluated at the tile's cells in closed form. No atomics: each cell is summed
by one program in a fixed order.

Box backward: one program per RoI sums ``grad * (d weights) * input`` over its
bins and all channels (a loop over channel blocks), so no two programs write
the same box and the order is fixed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch
from ._common import cast_rne, clamp_image, div_exact, spans_overlap


@triton.jit
def hat_mean(a, b, d, i):
    """``(w, dw/da, dw/db)``: the mean of ``hat(t - i)`` over ``[a, b]`` of length ``d`` and its
    derivatives with respect to the ends (``cpu/prroi_pool._hat_average``); ``d == 0`` takes the
    limit (the value at ``a``, derivatives ``+-1/2`` of the slope right of ``a``)."""
    sa = tl.maximum(a, i - 1.0)
    ea = tl.minimum(b, i)
    sb = tl.maximum(a, i)
    eb = tl.minimum(b, i + 1.0)
    la = tl.maximum(ea - sa, 0.0)
    lb = tl.maximum(eb - sb, 0.0)
    dd = tl.where(d > 0, d, 1.0)
    fa = div_exact(la, dd)
    fb = div_exact(lb, dd)
    w = fa * ((sa - (i - 1.0)) + 0.5 * la) + fb * (((i + 1.0) - eb) + 0.5 * lb)
    dwb = fa * div_exact((sa - a) + 0.5 * la, dd) - fb * div_exact((sb - a) + 0.5 * lb, dd)
    dwa = fa * div_exact((b - ea) + 0.5 * la, dd) - fb * div_exact((b - eb) + 0.5 * lb, dd)
    point = tl.maximum(1.0 - tl.abs(a - i), 0.0)
    slope = tl.where(i > a, 0.5, -0.5)
    w = tl.where(d > 0, w, point)
    dwa = tl.where(d > 0, dwa, slope)
    dwb = tl.where(d > 0, dwb, slope)
    return w, dwa, dwb


@triton.jit
def _box(rois_ptr, k, scale, POOLED_H: tl.constexpr, POOLED_W: tl.constexpr, height, width):
    """Batch index, first corner, bin sizes and the most rows / columns a bin reaches, of RoI ``k``.

    A RoI of zero width or height gets bin sizes 0 and reaches nothing."""
    row = rois_ptr + k * 5
    n = tl.load(row).to(tl.int32)
    x1 = tl.load(row + 1) * scale
    y1 = tl.load(row + 2) * scale
    bin_w = div_exact(tl.maximum(tl.load(row + 3) * scale - x1, 0.0), tl.full((), POOLED_W, scale.dtype))
    bin_h = div_exact(tl.maximum(tl.load(row + 4) * scale - y1, 0.0), tl.full((), POOLED_H, scale.dtype))
    valid = (bin_h > 0) & (bin_w > 0)
    bin_h = tl.where(valid, bin_h, 0.0)
    bin_w = tl.where(valid, bin_w, 0.0)
    ny = tl.where(valid, tl.minimum(tl.ceil(bin_h) + 3.0, height * 1.0), 0.0).to(tl.int32)
    nx = tl.where(valid, tl.minimum(tl.ceil(bin_w) + 3.0, width * 1.0), 0.0).to(tl.int32)
    return n, y1, x1, bin_h, bin_w, ny, nx


@triton.jit
def _edges(start, size, p, limit):
    """Bin ``p``'s ends ``a``, ``b = a + size``, length ``b - a``, and the first and last cell its
    hat functions reach within ``[0, limit)`` (int32; ``last < first``: none)."""
    a = start + size * p
    b = a + size
    d = b - a
    lo = tl.minimum(tl.maximum(tl.floor(a), 0.0), limit * 1.0)
    hi = tl.where(d > 0, tl.ceil(b), tl.floor(a) + 1.0)
    hi = tl.maximum(tl.minimum(hi, limit - 1.0), -1.0)
    return a, b, d, lo.to(tl.int32), hi.to(tl.int32)


@triton.jit
def _forward_kernel(
    input_ptr, rois_ptr, scale_ptr, output_ptr, num_images, channels, height, width,
    POOLED_H: tl.constexpr, POOLED_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    k = tl.program_id(0)
    scale = tl.load(scale_ptr)
    n, y1, x1, bin_h, bin_w, ny, nx = _box(rois_ptr, k, scale, POOLED_H, POOLED_W, height, width)
    n = clamp_image(n, num_images)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tl.arange(0, BLOCK_P)
    c_ok = c < channels
    p_ok = p < POOLED_H * POOLED_W
    ya, yb, yd, r0, r1 = _edges(y1, bin_h, (p // POOLED_W).to(scale.dtype), height)
    xa, xb, xd, c0, c1 = _edges(x1, bin_w, (p % POOLED_W).to(scale.dtype), width)
    plane = ((n.to(tl.int64) * channels + c.to(tl.int64)) * height * width)[:, None]
    acc = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    for ty in range(ny):
        i = r0 + ty
        wy, _dya, _dyb = hat_mean(ya, yb, yd, i.to(scale.dtype))
        for tx in range(nx):
            j = c0 + tx
            wx, _dxa, _dxb = hat_mean(xa, xb, xd, j.to(scale.dtype))
            ok = p_ok & (i <= r1) & (j <= c1)
            v = tl.load(input_ptr + plane + (i * width + j)[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
            acc += tl.where(ok, wy * wx, 0.0)[None, :] * v.to(scale.dtype)
    out = (k.to(tl.int64) * channels + c.to(tl.int64))[:, None] * (POOLED_H * POOLED_W) + p[None, :]
    tl.store(output_ptr + out, cast_rne(acc, output_ptr.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])


@triton.jit
def _backward_kernel(
    grad_ptr, rois_ptr, scale_ptr, order_ptr, starts_ptr, grad_input_ptr, channels, height, width, tiles_w,
    POOLED_H: tl.constexpr, POOLED_W: tl.constexpr, BLOCK_C: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    n = tl.program_id(2)
    row0 = (tile // tiles_w) * TILE_H
    col0 = (tile % tiles_w) * TILE_W
    s = tl.arange(0, TILE_H * TILE_W)
    hh = row0 + s // TILE_W
    ww = col0 + s % TILE_W
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < channels
    scale = tl.load(scale_ptr)
    acc = tl.zeros((BLOCK_C, TILE_H * TILE_W), scale.dtype)
    for r in range(tl.load(starts_ptr + n), tl.load(starts_ptr + n + 1)):
        k = tl.load(order_ptr + r)
        _n, y1, x1, bin_h, bin_w, ny, nx = _box(rois_ptr, k, scale, POOLED_H, POOLED_W, height, width)
        bins = (k.to(tl.int64) * channels + c.to(tl.int64)) * (POOLED_H * POOLED_W)
        if ny > 0:
            for ph in range(POOLED_H):
                ya, yb, yd, r0, r1 = _edges(y1, bin_h, ph * 1.0, height)
                if spans_overlap(r0, r1, row0, row0 + TILE_H - 1):
                    wy, _dya, _dyb = hat_mean(ya, yb, yd, hh.to(scale.dtype))
                    wy = tl.where((hh >= r0) & (hh <= r1), wy, 0.0)
                    for pw in range(POOLED_W):
                        xa, xb, xd, c0, c1 = _edges(x1, bin_w, pw * 1.0, width)
                        if spans_overlap(c0, c1, col0, col0 + TILE_W - 1):
                            wx, _dxa, _dxb = hat_mean(xa, xb, xd, ww.to(scale.dtype))
                            wx = tl.where((ww >= c0) & (ww <= c1), wx, 0.0)
                            g = tl.load(grad_ptr + bins + (ph * POOLED_W + pw), mask=c_ok, other=0.0)
                            acc += g.to(scale.dtype)[:, None] * (wy * wx)[None, :]
    plane = (n.to(tl.int64) * channels + c.to(tl.int64)) * height * width
    ok = c_ok[:, None] & ((hh < height) & (ww < width))[None, :]
    tl.store(
        grad_input_ptr + plane[:, None] + (hh * width + ww)[None, :],
        cast_rne(acc, grad_input_ptr.dtype.element_ty),
        mask=ok,
    )


@triton.jit
def _boxes_backward_kernel(
    grad_ptr, input_ptr, rois_ptr, scale_ptr, grad_rois_ptr, num_images, channels, height, width,
    POOLED_H: tl.constexpr, POOLED_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    k = tl.program_id(0)
    scale = tl.load(scale_ptr)
    n, y1, x1, bin_h, bin_w, ny, nx = _box(rois_ptr, k, scale, POOLED_H, POOLED_W, height, width)
    n = clamp_image(n, num_images)
    p = tl.arange(0, BLOCK_P)
    p_ok = p < POOLED_H * POOLED_W
    ph = (p // POOLED_W).to(scale.dtype)
    pw = (p % POOLED_W).to(scale.dtype)
    ya, yb, yd, r0, r1 = _edges(y1, bin_h, ph, height)
    xa, xb, xd, c0, c1 = _edges(x1, bin_w, pw, width)
    # how the bin's ends move with the box's corners: a = y1' + ph * (y2' - y1') / PH, b = a + bin
    fh = tl.full((), POOLED_H, scale.dtype)
    fw = tl.full((), POOLED_W, scale.dtype)
    ya_1 = scale * (1.0 - div_exact(ph, fh))
    yb_1 = scale * (1.0 - div_exact(ph + 1.0, fh))
    ya_2 = scale * div_exact(ph, fh)
    yb_2 = scale * div_exact(ph + 1.0, fh)
    xa_1 = scale * (1.0 - div_exact(pw, fw))
    xb_1 = scale * (1.0 - div_exact(pw + 1.0, fw))
    xa_2 = scale * div_exact(pw, fw)
    xb_2 = scale * div_exact(pw + 1.0, fw)
    acc_x1 = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    acc_y1 = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    acc_x2 = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    acc_y2 = tl.zeros((BLOCK_C, BLOCK_P), scale.dtype)
    for cb in range(0, channels, BLOCK_C):
        c = cb + tl.arange(0, BLOCK_C)
        c_ok = c < channels
        m = c_ok[:, None] & p_ok[None, :]
        bins = (k.to(tl.int64) * channels + c.to(tl.int64))[:, None] * (POOLED_H * POOLED_W) + p[None, :]
        g = tl.load(grad_ptr + bins, mask=m, other=0.0).to(scale.dtype)
        plane = ((n.to(tl.int64) * channels + c.to(tl.int64)) * height * width)[:, None]
        for ty in range(ny):
            i = r0 + ty
            wy, dya, dyb = hat_mean(ya, yb, yd, i.to(scale.dtype))
            wy1 = dya * ya_1 + dyb * yb_1
            wy2 = dya * ya_2 + dyb * yb_2
            for tx in range(nx):
                j = c0 + tx
                wx, dxa, dxb = hat_mean(xa, xb, xd, j.to(scale.dtype))
                wx1 = dxa * xa_1 + dxb * xb_1
                wx2 = dxa * xa_2 + dxb * xb_2
                ok = p_ok & (i <= r1) & (j <= c1)
                v = tl.load(input_ptr + plane + (i * width + j)[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
                gv = g * v.to(scale.dtype)
                acc_x1 += gv * tl.where(ok, wy * wx1, 0.0)[None, :]
                acc_y1 += gv * tl.where(ok, wy1 * wx, 0.0)[None, :]
                acc_x2 += gv * tl.where(ok, wy * wx2, 0.0)[None, :]
                acc_y2 += gv * tl.where(ok, wy2 * wx, 0.0)[None, :]
    out = grad_rois_ptr + k * 5
    ty_out = grad_rois_ptr.dtype.element_ty  # column 0 (the batch index) stays 0
    tl.store(out + 1, cast_rne(tl.sum(tl.sum(acc_x1, axis=1), axis=0), ty_out))
    tl.store(out + 2, cast_rne(tl.sum(tl.sum(acc_y1, axis=1), axis=0), ty_out))
    tl.store(out + 3, cast_rne(tl.sum(tl.sum(acc_x2, axis=1), axis=0), ty_out))
    tl.store(out + 4, cast_rne(tl.sum(tl.sum(acc_y2, axis=1), axis=0), ty_out))


def prroi_pool_forward(input, rois, spatial_scale, pooled_height, pooled_width):
    """PrRoI pooling of ``input (N, C, H, W)`` over ``rois (K, 5)``: ``(K, C, PH, PW)`` of the input's dtype."""
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
    block_c = _launch.channel_block(channels, block_p)
    _forward_kernel[(k_total, triton.cdiv(channels, block_c))](
        input, rois, _launch.scale_tensor(spatial_scale, dtype, device), output, input.shape[0], channels, height, width,
        POOLED_H=ph, POOLED_W=pw, BLOCK_C=block_c, BLOCK_P=block_p, enable_fp_fusion=False,
    )  # fmt: skip
    return output


def prroi_pool_backward(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width):
    """Gradient of :func:`prroi_pool_forward` with respect to its input, ``(N, C, H, W)``; deterministic."""
    device = _launch.check_device(grad=grad, rois=rois)
    dtype = _launch.compute_dtype(grad.dtype)
    _launch.check_batch_index(rois, batch_size)
    rois = _launch.prepare_rois(rois, dtype)
    grad_input = torch.empty((batch_size, channels, height, width), dtype=grad.dtype, device=device)
    if grad_input.numel() == 0:
        return grad_input
    ph, pw = int(pooled_height), int(pooled_width)
    order, starts = _launch.rois_by_image(rois, batch_size)
    tiles, tiles_w = _launch.tile_grid(height, width)
    block_c = _launch.channel_block(channels, _launch.TILE_H * _launch.TILE_W)
    _backward_kernel[(tiles, triton.cdiv(channels, block_c), batch_size)](
        grad.contiguous(), rois, _launch.scale_tensor(spatial_scale, dtype, device), order, starts, grad_input,
        channels, height, width, tiles_w,
        POOLED_H=ph, POOLED_W=pw, BLOCK_C=block_c, TILE_H=_launch.TILE_H, TILE_W=_launch.TILE_W, enable_fp_fusion=False,
    )  # fmt: skip
    return grad_input


def prroi_pool_boxes_backward(grad, input, rois, spatial_scale, pooled_height, pooled_width):
    """Gradient of :func:`prroi_pool_forward` with respect to ``rois``: ``(K, 5)``, column 0 zero;
    in ``rois``' dtype (``input``'s if ``rois`` are integers). Deterministic."""
    out_dtype = rois.dtype if rois.dtype.is_floating_point else input.dtype
    input, rois, device, dtype = _launch.forward_inputs(input, rois)
    k_total = rois.shape[0]
    _, channels, height, width = input.shape
    grad_rois = torch.zeros((k_total, 5), dtype=out_dtype, device=device)
    if k_total == 0 or channels == 0 or height == 0 or width == 0:
        return grad_rois
    ph, pw = int(pooled_height), int(pooled_width)
    block_p = _launch.triton_next_pow2(ph * pw)
    block_c = _launch.channel_block(channels, block_p)
    _boxes_backward_kernel[(k_total,)](
        grad.contiguous(), input, rois, _launch.scale_tensor(spatial_scale, dtype, device), grad_rois,
        input.shape[0], channels, height, width,
        POOLED_H=ph, POOLED_W=pw, BLOCK_C=block_c, BLOCK_P=block_p, enable_fp_fusion=False,
    )  # fmt: skip
    return grad_rois

"""roi_align_rotated in pure XLA, and its CPU-callback twin (both ``jax.custom_vjp``).

A rotated box's samples do not split into a row weight times a column weight
as ``roi_align``'s do (``_align``), so here every sample is a point: its
position is computed in the compute dtype ``T`` in the order of
``reference.roi_align_rotated`` (``docs/semantics.md``, steps 1 to 5), its
four bilinear taps are gathered from the map in channels-last order (one
``C``-vector per tap) and summed, and each bin's sum is divided by its
sample count.

The adaptive grid (``ceil(roi size / pooled)`` samples per bin side) has no
static bound, so no fixed-size array can hold a bin's samples. Instead:

- Only samples within a cell of the map (``[-1, H] x [-1, W]``) read
  anything. That rectangle, mapped into the box's frame, bounds the frame
  coordinates ``v`` (down the box) and ``u`` (across it); since samples are
  evenly spaced in ``v`` and ``u``, this gives for each bin a range of sample
  rows and one of sample columns, widened by two samples and by a margin of
  several ulps of the coordinates for rounding. Samples outside the ranges
  read 0 in the reference too; every sample of the grid still counts in the
  divisor. Adaptive sample spacing is over half a cell (or one sample per
  side), so a box of any size has at most about ``(2 * diagonal + 8)**2``
  samples per bin in range.
- The samples in range are visited in a ``lax.fori_loop`` with a traced trip
  count, ``S`` per bin per step (``S = sampling_ratio**2`` up to 64 for a
  fixed grid, 16 for the adaptive one: the grids of boxes up to 4 x 4
  samples per bin take one step); the trip count is the largest any box of
  a chunk needs.
- Boxes go through in chunks of bounded memory (``chunk_bytes``).

The result is exact (to float rounding of the sums) for every box, however
large. The loops have traced trip counts, which reverse-mode autodiff cannot
go through, so the gradients are written out (a ``custom_vjp``):

- input: the adjoint, each output's gradient divided by the count and added
  to every tap by its weight (a scatter-add);
- boxes: the torch op's box gradient (``cpu.roi_align_rotated.box_backward``
  and ``reference.roi_align_rotated_box_grad``): each sample moves with
  ``cx, cy, w, h, angle`` and the value changes at the bilinear
  interpolant's slope; the grid size is held fixed; a size raised to one cell
  (``aligned=False``) has derivative 0; the batch index gets 0.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import roipool

from .. import _checks
from ._ops import _callback_op, _same_channels
from ._prepare import batch_index, box_is_valid, chunk_bytes, exact_div, scale_in

_HIGHEST = lax.Precision.HIGHEST
# Sample counts are int32: they hold a fixed grid of up to 46340 samples per side, and the public
# function refuses more than _checks.MAX_ROTATED_SAMPLING_RATIO (1024).


def samples_per_step(sampling_ratio: int) -> int:
    """``S``: samples of one bin visited per loop step."""
    return min(sampling_ratio * sampling_ratio, 64) if sampling_ratio > 0 else 16


def _index_range(start, bin_size, grid, pooled: int, lo, hi):
    """Samples ``[i0, i0 + n)`` of each bin (``(B, pooled)`` int32) whose frame coordinate may lie in ``[lo, hi]``.

    Sample ``i`` of bin ``p`` is at ``start + p * bin + (i + 0.5) * bin / grid``
    (up to rounding, which the caller's margin covers); two more samples on
    each side. A spacing of 0 or a bound that is not finite takes the whole grid.
    """
    dtype = start.dtype
    g = grid.astype(dtype)[:, None]
    step = bin_size[:, None] / jnp.maximum(g, 1)
    first = start[:, None] + jnp.arange(pooled, dtype=dtype) * bin_size[:, None] + 0.5 * step
    f0 = jnp.clip(jnp.ceil((lo[:, None] - first) / step) - 2, 0, g)
    f1 = jnp.clip(jnp.floor((hi[:, None] - first) / step) + 3, 0, g)
    ok = jnp.isfinite(f0) & jnp.isfinite(f1) & (step > 0)
    i0 = jnp.where(ok, f0, 0).astype(jnp.int32)
    i1 = jnp.where(ok, f1, g).astype(jnp.int32)
    return i0, jnp.maximum(i1 - i0, 0)


def frames(rois, num_images, height, width, static):
    """Per-RoI geometry in the compute dtype (``cpu.roi_align_rotated.Frames``' rules) and sample ranges.

    Returns a dict of ``(K, ...)`` arrays. A box that the NumPy path would
    refuse (reachable only under ``jit``: batch index, non-finite or negative
    values, overflow, an adaptive grid over the limit) is marked invalid and
    takes no samples.
    """
    (pooled_h, pooled_w), spatial_scale, sampling_ratio, aligned, clockwise, _ = static
    dtype = np.dtype(rois.dtype)
    t = dtype.type
    scale = scale_in(dtype, spatial_scale)
    offset = t(0.5) if aligned else t(0)
    c = jnp.nan_to_num(rois[:, 1:], nan=0.0, posinf=0.0, neginf=0.0)
    cx = c[:, 0] * scale - offset
    cy = c[:, 1] * scale - offset
    roi_w = c[:, 2] * scale
    roi_h = c[:, 3] * scale
    valid = box_is_valid(rois, num_images) & jnp.all(c[:, 2:4] >= 0, axis=1)
    valid &= jnp.isfinite(cx) & jnp.isfinite(cy) & jnp.isfinite(roi_w) & jnp.isfinite(roi_h)
    free_w = free_h = jnp.ones_like(roi_w)
    if not aligned:
        # legacy rule: a box smaller than one cell is read as one cell (that size has no derivative)
        free_w, free_h = (roi_w > 1).astype(dtype), (roi_h > 1).astype(dtype)
        roi_w = jnp.where(roi_w > 1, roi_w, t(1))
        roi_h = jnp.where(roi_h > 1, roi_h, t(1))
    theta = -c[:, 4] if clockwise else c[:, 4]
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    bin_h = exact_div(roi_h, t(pooled_h))
    bin_w = exact_div(roi_w, t(pooled_w))
    if sampling_ratio > 0:
        grid_h = grid_w = jnp.full(roi_h.shape, sampling_ratio, jnp.int32)
    else:
        limit = _checks.MAX_ADAPTIVE_GRID
        valid &= (jnp.ceil(bin_h) <= limit) & (jnp.ceil(bin_w) <= limit)
        grid_h = jnp.clip(jnp.ceil(bin_h), 0, limit).astype(jnp.int32)
        grid_w = jnp.clip(jnp.ceil(bin_w), 0, limit).astype(jnp.int32)
    grid_h = jnp.where(valid, grid_h, 0)
    grid_w = jnp.where(valid, grid_w, 0)
    count = jnp.maximum(grid_h.astype(dtype) * grid_w.astype(dtype), t(1))
    start_h, start_w = -roi_h / t(2), -roi_w / t(2)

    # the map's rectangle [-1, H] x [-1, W], widened for rounding, in the box's frame (v, u)
    margin = t(16 * np.finfo(dtype).eps) * (jnp.abs(cx) + jnp.abs(cy) + roi_h + roi_w + t(height + width + 4))
    ys = jnp.stack([t(-1) - margin, t(height) + margin], axis=1) - cy[:, None]
    xs = jnp.stack([t(-1) - margin, t(width) + margin], axis=1) - cx[:, None]
    v = ys[:, :, None] * cos[:, None, None] + xs[:, None, :] * sin[:, None, None]
    u = xs[:, None, :] * cos[:, None, None] - ys[:, :, None] * sin[:, None, None]
    v, u = v.reshape(-1, 4), u.reshape(-1, 4)
    iy0, ny = _index_range(start_h, bin_h, grid_h, pooled_h, v.min(1) - margin, v.max(1) + margin)
    ix0, nx = _index_range(start_w, bin_w, grid_w, pooled_w, u.min(1) - margin, u.max(1) + margin)
    return {
        "batch": batch_index(rois, num_images),
        "valid": valid,
        "cx": cx,
        "cy": cy,
        "roi_h": roi_h,
        "roi_w": roi_w,
        "cos": cos,
        "sin": sin,
        "bin_h": bin_h,
        "bin_w": bin_w,
        "start_h": start_h,
        "start_w": start_w,
        "grid_h": grid_h,
        "grid_w": grid_w,
        "count": count,
        "free_h": free_h,
        "free_w": free_w,
        "iy0": iy0,
        "ny": ny,
        "ix0": ix0,
        "nx": nx,
    }


def _e(a):
    """A ``(B,)`` per-RoI array broadcast against ``(B, PH, PW, S)`` samples."""
    return a[:, None, None, None]


def _samples(f, step, per_step):
    """Step ``step``'s samples of every bin: ``(iy, ix, live)``, each ``(B, PH, PW, S)``."""
    j = step * per_step + jnp.arange(per_step, dtype=jnp.int32)
    ny = f["ny"][:, :, None, None]
    nx = f["nx"][:, None, :, None]
    live = j < ny * nx
    cols = jnp.maximum(nx, 1)
    return f["iy0"][:, :, None, None] + j // cols, f["ix0"][:, None, :, None] + j % cols, live


def _steps(f, per_step):
    """Loop steps for a chunk of RoIs: the most any bin needs."""
    n = f["ny"][:, :, None] * f["nx"][:, None, :]
    return jnp.max((n + per_step - 1) // per_step, initial=0)


def _positions(f, iy, ix, dtype):
    """Sample positions ``(y, x)`` on the map in ``dtype``, rounded as in ``reference.roi_align_rotated_samples``."""
    t = dtype.type
    _, pooled_h, pooled_w, _ = iy.shape
    ph = jnp.arange(pooled_h, dtype=dtype)[None, :, None, None]
    pw = jnp.arange(pooled_w, dtype=dtype)[None, None, :, None]
    row0 = _e(f["start_h"]) + ph * _e(f["bin_h"])
    col0 = _e(f["start_w"]) + pw * _e(f["bin_w"])
    v = row0 + exact_div((iy.astype(dtype) + t(0.5)) * _e(f["bin_h"]), _e(f["grid_h"]).astype(dtype))
    u = col0 + exact_div((ix.astype(dtype) + t(0.5)) * _e(f["bin_w"]), _e(f["grid_w"]).astype(dtype))
    cos, sin = _e(f["cos"]), _e(f["sin"])
    return (v * cos - u * sin) + _e(f["cy"]), (v * sin + u * cos) + _e(f["cx"])


def _on_map(y, x, live, height, width):
    return live & (y >= -1) & (y <= height) & (x >= -1) & (x <= width)


def _taps(f, y, x, live, height, width, dtype):
    """The four bilinear taps of each sample (``reference.bilinear_taps``): flat cell indices into the
    ``(N * H * W, C)`` map and weights, each ``(B, PH, PW, S, 4)``, and ``inside (B, PH, PW, S)``;
    samples off the map weigh 0 and point at their image's first cell, which the forward must not
    read (the CPU kernel skips them: a NaN or inf there would otherwise leak in as 0 * inf)."""
    t = dtype.type
    inside = _on_map(y, x, live, height, width)

    def axis(p, size):
        p = jnp.where(inside & (p > 0), p, t(0))
        low = jnp.floor(p).astype(jnp.int32)
        at_end = low >= size - 1
        low = jnp.where(at_end, size - 1, low)
        high = jnp.where(at_end, size - 1, low + 1)
        frac = jnp.where(at_end, t(0), p - low.astype(dtype))
        return low, high, frac, t(1) - frac

    y0, y1, ly, hy = axis(y, height)
    x0, x1, lx, hx = axis(x, width)
    base = _e(f["batch"]) * (height * width)
    idx = jnp.stack([y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1], axis=-1) + base[..., None]
    w = jnp.stack([hy * hx, hy * lx, ly * hx, ly * lx], axis=-1)
    return idx, jnp.where(inside[..., None], w, t(0)), inside


def _chunked(f, num_rois, per_roi_bytes):
    """``f``'s arrays padded with empty RoIs and split into ``(chunks, B, ...)``, and ``B``."""
    b = max(1, min(num_rois, chunk_bytes() // max(per_roi_bytes, 1)))
    chunks = -(-num_rois // b)
    pad = chunks * b - num_rois

    def split(a):
        a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a
        return a.reshape(chunks, b, *a.shape[1:])

    return {k: split(a) for k, a in f.items()}, b


def _setup(x, rois, static):
    """Channels-last flat map ``(N * H * W, C)``, frames in chunks, and sizes."""
    n, channels, height, width = x.shape
    dtype = np.dtype(x.dtype)
    (pooled_h, pooled_w), _, sampling_ratio, *_ = static
    per_step = samples_per_step(sampling_ratio)
    f = frames(rois, n, height, width, static)
    per_roi = pooled_h * pooled_w * per_step * 4 * max(channels, 1) * dtype.itemsize * 3
    chunks, _ = _chunked(f, rois.shape[0], per_roi)
    xf = jnp.transpose(x, (0, 2, 3, 1)).reshape(n * height * width, channels)
    return xf, chunks, per_step, dtype


def forward(x, rois, static):
    """``(K, C, PH, PW)`` rotated RoIAlign of ``x (N, C, H, W)``; ``rois (K, 6)``; both in the compute dtype."""
    n, channels, height, width = x.shape
    k = rois.shape[0]
    (pooled_h, pooled_w), _, sampling_ratio, *_ = static
    dtype = np.dtype(x.dtype)
    if k == 0 or channels == 0 or height == 0 or width == 0:
        return jnp.zeros((k, channels, pooled_h, pooled_w), dtype)
    xf, chunks, per_step, dtype = _setup(x, rois, static)

    def chunk(f):
        def body(step, acc):
            iy, ix, live = _samples(f, step, per_step)
            y, xx = _positions(f, iy, ix, dtype)
            idx, w, inside = _taps(f, y, xx, live, height, width, dtype)
            values = jnp.where(inside[..., None, None], xf[idx], 0)
            return acc + jnp.einsum("bpqst,bpqstc->bpqc", w, values, precision=_HIGHEST)

        acc = jnp.zeros((f["cx"].shape[0], pooled_h, pooled_w, channels), dtype)
        acc = lax.fori_loop(0, _steps(f, per_step), body, acc)
        out = exact_div(acc, f["count"][:, None, None, None])
        return jnp.where(f["valid"][:, None, None, None], out, jnp.nan)

    out = lax.map(chunk, chunks).reshape(-1, pooled_h, pooled_w, channels)[:k]
    return jnp.transpose(out, (0, 3, 1, 2))


def _grad_bins(g, f, k, b, dtype):
    """``g (K, C, PH, PW)`` divided by each RoI's count, as ``(chunks, B, PH, PW, C)``."""
    g = jnp.transpose(g, (0, 2, 3, 1))
    pad = f["cx"].size - k
    g = jnp.concatenate([g, jnp.zeros((pad, *g.shape[1:]), dtype)]) if pad else g
    g = g.reshape(-1, b, *g.shape[1:])
    return exact_div(g, f["count"][:, :, None, None, None])


def input_grad(g, x, rois, static):
    """``(N, C, H, W)`` gradient with respect to ``x``: the adjoint of :func:`forward` applied to ``g``."""
    n, channels, height, width = x.shape
    k = rois.shape[0]
    if k == 0 or x.size == 0:
        return jnp.zeros_like(x)
    xf, chunks, per_step, dtype = _setup(x, rois, static)
    b = chunks["cx"].shape[1]
    gb = _grad_bins(g, chunks, k, b, dtype)

    def chunk(grad, fg):
        f, gc = fg

        def body(step, grad):
            iy, ix, live = _samples(f, step, per_step)
            y, xx = _positions(f, iy, ix, dtype)
            idx, w, _ = _taps(f, y, xx, live, height, width, dtype)
            contrib = w[..., None] * gc[:, :, :, None, None, :]
            return grad.at[idx.reshape(-1)].add(contrib.reshape(-1, channels))

        return lax.fori_loop(0, _steps(f, per_step), body, grad), None

    grad, _ = lax.scan(chunk, jnp.zeros_like(xf), (chunks, gb))
    return jnp.transpose(grad.reshape(n, height, width, channels), (0, 3, 1, 2))


def box_grad(g, x, rois, static):
    """``(K, 6)`` gradient with respect to ``rois``: ``[0, cx, cy, w, h, angle]`` (the torch op's rule)."""
    n, channels, height, width = x.shape
    k = rois.shape[0]
    (pooled_h, pooled_w), spatial_scale, _, _, clockwise, _ = static
    if k == 0 or x.size == 0:
        return jnp.zeros_like(rois)
    xf, chunks, per_step, dtype = _setup(x, rois, static)
    t = dtype.type
    b = chunks["cx"].shape[1]
    gb = _grad_bins(g, chunks, k, b, dtype)

    def chunk(fg):
        f, gc = fg

        def body(step, sums):
            iy, ix, live = _samples(f, step, per_step)
            # the sample's place as the box kernel computes it: fixed fractions of the box
            ph = jnp.arange(pooled_h, dtype=dtype)[None, :, None, None]
            pw = jnp.arange(pooled_w, dtype=dtype)[None, None, :, None]
            # (a grid of 0 has no live samples; 1 keeps their fractions finite: inf * 0 would be NaN)
            grid_h, grid_w = (jnp.maximum(_e(f[k]), 1).astype(dtype) for k in ("grid_h", "grid_w"))
            fv = exact_div(ph + exact_div(iy.astype(dtype) + t(0.5), grid_h), t(pooled_h))
            fu = exact_div(pw + exact_div(ix.astype(dtype) + t(0.5), grid_w), t(pooled_w))
            fv, fu = fv - t(0.5), fu - t(0.5)
            v, u = fv * _e(f["roi_h"]), fu * _e(f["roi_w"])
            cos, sin = _e(f["cos"]), _e(f["sin"])
            y = (v * cos - u * sin) + _e(f["cy"])
            xx = (v * sin + u * cos) + _e(f["cx"])
            inside = _on_map(y, xx, live, height, width)
            gy, gx = _slopes(xf, gc, f["batch"], y, xx, inside, height, width, dtype)
            terms = (
                gx,
                gy,
                fu * (gx * cos - gy * sin),
                fv * (gy * cos + gx * sin),
                gx * (v * cos - u * sin) - gy * (v * sin + u * cos),
            )
            return sums + jnp.stack([jnp.sum(a, axis=(1, 2, 3)) for a in terms], axis=1)

        sums = lax.fori_loop(0, _steps(f, per_step), body, jnp.zeros((f["cx"].shape[0], 5), dtype))
        factor = jnp.stack(
            [
                jnp.full_like(f["cx"], spatial_scale),
                jnp.full_like(f["cx"], spatial_scale),
                spatial_scale * f["free_w"],
                spatial_scale * f["free_h"],
                jnp.full_like(f["cx"], -1.0 if clockwise else 1.0),
            ],
            axis=1,
        )
        return jnp.where(f["valid"][:, None], sums * factor, t(0))

    sums = lax.map(chunk, (chunks, gb)).reshape(-1, 5)[:k]
    return jnp.concatenate([jnp.zeros((k, 1), dtype), sums], axis=1)


def _slopes(xf, gc, batch, y, x, inside, height, width, dtype):
    """``(sum_c g_c d value_c / dy, sum_c g_c d value_c / dx)`` of each sample (``cpu.roi_align_rotated._slope_dot``)."""
    t = dtype.type
    y_free = inside & (y > 0) & (y < height - 1)
    x_free = inside & (x > 0) & (x < width - 1)
    y = jnp.clip(jnp.where(inside, y, t(0)), t(0), t(height - 1))
    x = jnp.clip(jnp.where(inside, x, t(0)), t(0), t(width - 1))
    y0 = jnp.minimum(jnp.floor(y).astype(jnp.int32), max(height - 2, 0))
    x0 = jnp.minimum(jnp.floor(x).astype(jnp.int32), max(width - 2, 0))
    y1 = jnp.minimum(y0 + 1, height - 1)
    x1 = jnp.minimum(x0 + 1, width - 1)
    ly, lx = y - y0.astype(dtype), x - x0.astype(dtype)
    base = _e(batch) * (height * width)
    idx = jnp.stack([y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1], axis=-1) + base[..., None]
    dots = jnp.einsum("bpqstc,bpqc->bpqst", xf[idx], gc, precision=_HIGHEST)
    a, b, c, d = (dots[..., i] for i in range(4))
    gy = (t(1) - lx) * (c - a) + lx * (d - b)
    gx = (t(1) - ly) * (b - a) + ly * (d - c)
    return jnp.where(y_free, gy, t(0)), jnp.where(x_free, gx, t(0))


# ---- the two backends as custom_vjp ops: op(static, x, rois) ----
# static = ((pooled_h, pooled_w), spatial_scale, sampling_ratio, aligned, clockwise, input shape)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def roi_align_rotated_xla(static, x, rois):
    return forward(x, rois, static)


def _xla_fwd(static, x, rois):
    return forward(x, rois, static), (x, rois)


def _xla_bwd(static, res, g):
    x, rois = res
    return input_grad(g, x, rois, static), box_grad(g, x, rois, static)


roi_align_rotated_xla.defvjp(_xla_fwd, _xla_bwd)


def _numpy_box_grad(g, x, rois, static):
    """``(K, 6)`` box gradient from the CPU box kernel (the torch op's), in ``x``'s dtype."""
    # imported here: ``import roipool.jax`` loads no Numba kernels (an XLA-only user never needs them)
    from ..cpu import roi_align_rotated as _kernels
    from ..cpu._tiles import channels_last_copy

    (pooled_h, pooled_w), scale, sampling_ratio, aligned, clockwise, shape = static
    r = _checks.rotated_rois_array(rois, shape[0], x.dtype)
    _checks.rotated_scaled_boxes(r, scale, pooled_h, pooled_w, sampling_ratio <= 0)
    frames_ = _kernels.Frames(r, scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise)
    grad = np.zeros(r.shape, x.dtype)
    _kernels.launch_box_backward(channels_last_copy(x), g.astype(x.dtype), frames_, grad[:, 1:])
    return grad


# static = (size, spatial_scale, sampling_ratio, aligned, clockwise, shape): the NumPy functions take
# the middle four as they are
roi_align_rotated_callback = _callback_op(
    lambda x, r, s: roipool.roi_align_rotated(x, r, s[0], *s[1:-1]),
    lambda g, r, s: roipool.roi_align_rotated_backward(g, r, s[-1], s[0], *s[1:-1]),
    _same_channels,
    boxes_backward=_numpy_box_grad,
)

"""roi_align, ps_roi_align and ps_roi_pool in pure XLA, as separable weighted sums.

Every op here reads a bin as ``sum_r sum_c wy[r] wx[c] x[r, c]``: a bilinear
sample's weight is a row weight times a column weight, and the samples of a
bin form a grid, so the per-axis weights of all samples of a bin can be
summed first (``docs/semantics.md``, "How it is computed", says the same of the
NumPy kernels). One RoI is then two small matrix products,
``Wy (PH, H) @ x[n, c] (H, W) @ Wx (PW, W)^T``, which XLA runs well on every
device (MXU on TPU). Values agree with the sample-by-sample reference to float
rounding.

Sampling grids have no static bound (the adaptive grid is ``ceil(bin size)``),
but only samples within a cell of the map contribute: a bisection finds them
(sample positions are monotone in the sample index) and a ``lax.while_loop``
visits them in chunks of a static size (the adaptive grid of a box as large as
the map: one chunk for ordinary boxes). Every sample still counts in the
average, so the result is exact for every box.

Gradients with respect to the boxes: the weights are computed without
gradient, together with their derivatives with respect to the start corner
and the bin size (both per-sample sums, taken in the same loop), and joined to
the graph as ``w + dw/dstart * (start - sg(start)) + dw/dbin * (bin - sg(bin))``:
the value is unchanged and autodiff sees the exact derivative of the
piecewise-linear interpolant.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._pool import _clip_shifted, c_round
from ._prepare import batch_index, box_is_valid, chunk_bytes, exact_div, scale_in

sg = lax.stop_gradient
_GRID_LIMIT = 2**31 - 1  # torchvision's C int
_HIGHEST = lax.Precision.HIGHEST  # no TF32 / bf16 passes on GPU and TPU


def grid_size(bin_size: jax.Array, sampling_ratio: int, at_least: int) -> jax.Array:
    """Samples per bin side (int32): ``sampling_ratio`` if positive, else ``max(ceil(bin_size), at_least)``, capped."""
    if sampling_ratio > 0:
        return jnp.full(bin_size.shape, sampling_ratio, jnp.int32)
    g = jnp.ceil(bin_size)
    limit = float(_GRID_LIMIT)
    gi = jnp.where(g >= limit, _GRID_LIMIT, jnp.clip(g, at_least, 2.0**31 - 256).astype(jnp.int32))
    return jnp.maximum(gi, at_least)


def chunk_size(sampling_ratio: int, size: int, pooled: int) -> int:
    """Samples per bin side visited in one loop step: the grid of a box as large as the map (or the fixed grid)."""
    adaptive = math.ceil(size / pooled) + 2
    return max(1, min(sampling_ratio, adaptive) if sampling_ratio > 0 else adaptive)


def _position(base, bin_size, grid, i, dtype, half_once=False):
    """``base + (i + 0.5) * bin_size / grid`` in ``dtype``: sample ``i`` of a bin starting at ``base``.

    ``i + 0.5`` is roi_align's: ``i`` rounded to ``dtype``, then 0.5 added; with ``half_once``
    ps_roi_align's, rounded once (as ``2 i + 1``, exact in uint32 below ``2**31``, then
    halved), as the NumPy path rounds it from float64 (``docs/semantics.md``)."""
    t = dtype.type
    if half_once:
        half = (i.astype(jnp.uint32) * 2 + 1).astype(dtype) * t(0.5)
    else:
        half = i.astype(dtype) + t(0.5)
    return base + exact_div(half * bin_size, grid.astype(dtype))


def _first(pred, grid):
    """Smallest ``i`` in ``[0, grid]`` with ``pred(i)`` (``pred`` monotone false -> true); vectorised bisection."""
    lo = jnp.zeros_like(grid)
    hi = grid

    def step(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = pred(mid)
        return jnp.where(ok, lo, jnp.minimum(mid + 1, hi)), jnp.where(ok, mid, hi)

    lo, hi = lax.fori_loop(0, 32, step, (lo, hi))
    return lo


def axis_weights(start, bin_size, grid, pooled: int, size: int, chunk: int, dtype, half_once=False):
    """Row (or column) weights of every bin of one RoI: ``(pooled, size)``, plus their derivatives.

    ``start``, ``bin_size`` are ``T`` scalars (no gradient flows through
    here), ``grid`` the int32 samples per side. Returns ``(w, d_start, d_bin)``,
    each ``(pooled, size)``: ``w[p, r]`` sums the bilinear weights of row ``r``
    over the samples of bin ``p`` (not yet divided by ``grid``). ``half_once``: samples placed as
    ps_roi_align places them (:func:`_position`).
    """
    t = dtype.type
    base = start + jnp.arange(pooled, dtype=dtype) * bin_size  # (P,)
    grid_p = jnp.broadcast_to(grid, (pooled,))
    rising = bin_size >= 0

    def pos(i):
        return _position(base, bin_size, grid_p, i, dtype, half_once)

    # samples [i0, i1) are those within a cell of the map (the rest read 0)
    i0 = _first(lambda i: jnp.where(rising, pos(i) >= -1, pos(i) <= size), grid_p)
    i1 = _first(lambda i: jnp.where(rising, pos(i) > size, pos(i) < -1), grid_p)
    i1 = jnp.maximum(i1, i0)
    steps = jnp.max((i1 - i0 + chunk - 1) // chunk)
    cells = jnp.arange(size)
    offsets = jnp.arange(chunk, dtype=jnp.int32)

    def body(s, acc):
        i = i0[:, None] + s * chunk + offsets  # (P, S)
        live = i < i1[:, None]
        y = _position(base[:, None], bin_size, grid_p[:, None], i, dtype, half_once)
        live = live & (y >= -1) & (y <= size)
        y0 = jnp.where(y <= 0, t(0), y)
        low = jnp.floor(y0).astype(jnp.int32)
        at_end = low >= size - 1
        low = jnp.where(at_end, size - 1, low)
        high = jnp.where(at_end, size - 1, low + 1)
        y0 = jnp.where(at_end, low.astype(dtype), y0)
        ly = y0 - low.astype(dtype)
        hy = t(1) - ly
        on_low = (low[..., None] == cells) & live[..., None]  # (P, S, L)
        on_high = (high[..., None] == cells) & live[..., None]
        w = jnp.sum(jnp.where(on_low, hy[..., None], 0) + jnp.where(on_high, ly[..., None], 0), axis=1)
        # d(ly)/dy is 1 where y moves freely (not clamped at either edge), else 0
        moving = (y > 0) & ~at_end
        slope = jnp.where(on_high, t(1), t(0)) - jnp.where(on_low, t(1), t(0))
        slope = jnp.where(moving[..., None], slope, 0)
        # dy/dbin = p + (i + 0.5) / grid
        dy_dbin = jnp.arange(pooled, dtype=dtype)[:, None] + exact_div(
            i.astype(dtype) + t(0.5), grid_p[:, None].astype(dtype)
        )
        return _compensated_add(acc, (w, jnp.sum(slope, axis=1), jnp.sum(slope * dy_dbin[..., None], axis=1)))

    zeros = jnp.zeros((pooled, size), dtype)
    sums, _ = lax.fori_loop(0, steps, body, ((zeros, zeros, zeros), (zeros, zeros, zeros)))
    return sums


def _compensated_add(acc, terms):
    """``(sums, errors)`` of ``acc`` with ``terms`` added, compensated (Kahan): a large grid's weights
    build up over many loop steps (``2**20`` samples a side: 1e-3 relative in float32 if added
    plainly, where the NumPy path sums in float64), and the error a step rounds away is carried
    into the next."""
    sums, errors = acc
    new_sums, new_errors = [], []
    for total, error, term in zip(sums, errors, terms):
        term = term - error
        new = total + term
        new_errors.append((new - total) - term)
        new_sums.append(new)
    return tuple(new_sums), tuple(new_errors)


def _differentiable(weights, start, bin_size, grid, dtype):
    """Weights divided by the grid, carrying the exact derivative with respect to ``start`` and ``bin_size``."""
    w, d_start, d_bin = weights
    w = w + d_start * (start - sg(start)) + d_bin * (bin_size - sg(bin_size))
    return exact_div(w, jnp.maximum(grid, 1).astype(dtype))


def _one_roi_weights(
    start_y, start_x, bin_h, bin_w, grid_h, grid_w, pooled_h, pooled_w, height, width, chunks, dtype, half_once=False
):
    wy = axis_weights(sg(start_y), sg(bin_h), grid_h, pooled_h, height, chunks[0], dtype, half_once)
    wx = axis_weights(sg(start_x), sg(bin_w), grid_w, pooled_w, width, chunks[1], dtype, half_once)
    return (
        _differentiable(wy, start_y, bin_h, grid_h, dtype),
        _differentiable(wx, start_x, bin_w, grid_w, dtype),
    )


def _map_rois(one, args, per_roi_bytes: int, num_rois: int):
    """``lax.map`` over RoIs in chunks of bounded memory, rematerialised in the backward pass."""
    chunk = max(1, min(num_rois, chunk_bytes() // max(per_roi_bytes, 1)))
    return lax.map(jax.checkpoint(one), args, batch_size=chunk)


def roi_align(x, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    """``(K, C, PH, PW)`` RoIAlign of ``x (N, C, H, W)``; ``rois (K, 5)``, both in the compute dtype ``T``."""
    n_images, channels, height, width = x.shape
    k = rois.shape[0]
    dtype = np.dtype(x.dtype)
    t = dtype.type
    if k == 0 or channels == 0 or height == 0 or width == 0:
        return jnp.zeros((k, channels, pooled_h, pooled_w), dtype)
    scale = scale_in(dtype, spatial_scale)
    offset = t(0.5) if aligned else t(0)
    coords = jnp.nan_to_num(rois[:, 1:], nan=0.0, posinf=0.0, neginf=0.0)
    x0 = coords[:, 0] * scale - offset
    y0 = coords[:, 1] * scale - offset
    roi_w = (coords[:, 2] * scale - offset) - x0
    roi_h = (coords[:, 3] * scale - offset) - y0
    if not aligned:
        # legacy rule: an extent below one cell (or negative) counts as one cell
        roi_w = jnp.where(roi_w < 1, t(1), roi_w)
        roi_h = jnp.where(roi_h < 1, t(1), roi_h)
    bin_h, bin_w = exact_div(roi_h, t(pooled_h)), exact_div(roi_w, t(pooled_w))
    grid_h = grid_size(sg(bin_h), sampling_ratio, 0)
    grid_w = grid_size(sg(bin_w), sampling_ratio, 0)
    valid = box_is_valid(rois, n_images) & jnp.isfinite(sg(bin_h)) & jnp.isfinite(sg(bin_w))
    chunks = (chunk_size(sampling_ratio, height, pooled_h), chunk_size(sampling_ratio, width, pooled_w))

    def one(args):
        n, y_start, x_start, bh, bw, gh, gw = args
        wy, wx = _one_roi_weights(y_start, x_start, bh, bw, gh, gw, pooled_h, pooled_w, height, width, chunks, dtype)
        rows = jnp.einsum("pr,crw->cpw", wy, x[n], precision=_HIGHEST)
        return jnp.einsum("cpw,qw->cpq", rows, wx, precision=_HIGHEST)

    args = (batch_index(rois, n_images), y0, x0, bin_h, bin_w, grid_h, grid_w)
    out = _map_rois(one, args, channels * height * width * dtype.itemsize * 2, k)
    return jnp.where(valid[:, None, None, None], out, jnp.nan)


def ps_roi_align(x, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio):
    """``(K, C / (PH * PW), PH, PW)`` position-sensitive RoIAlign; arguments as :func:`roi_align`."""
    n_images, channels, height, width = x.shape
    k = rois.shape[0]
    dtype = np.dtype(x.dtype)
    t = dtype.type
    channels_out = channels // (pooled_h * pooled_w)
    if k == 0 or channels == 0 or height == 0 or width == 0:
        return jnp.zeros((k, channels_out, pooled_h, pooled_w), dtype)
    scale = scale_in(dtype, spatial_scale)
    limit = t(np.finfo(dtype).max / 8)  # keeps every extent finite, as the NumPy path
    coords = jnp.nan_to_num(rois[:, 1:], nan=0.0, posinf=0.0, neginf=0.0)
    corners = jnp.clip(coords * scale, -limit, limit) - t(0.5)
    x0, y0 = corners[:, 0], corners[:, 1]
    bin_h = exact_div(corners[:, 3] - y0, t(pooled_h))
    bin_w = exact_div(corners[:, 2] - x0, t(pooled_w))
    grid_h = grid_size(sg(bin_h), sampling_ratio, 1)
    grid_w = grid_size(sg(bin_w), sampling_ratio, 1)
    valid = box_is_valid(rois, n_images)
    chunks = (chunk_size(sampling_ratio, height, pooled_h), chunk_size(sampling_ratio, width, pooled_w))

    def one(args):
        n, y_start, x_start, bh, bw, gh, gw = args
        wy, wx = _one_roi_weights(
            y_start, x_start, bh, bw, gh, gw, pooled_h, pooled_w, height, width, chunks, dtype, half_once=True
        )
        image = x[n].reshape(channels_out, pooled_h, pooled_w, height, width)
        rows = jnp.einsum("pr,cpqrw->cpqw", wy, image, precision=_HIGHEST)
        return jnp.einsum("cpqw,qw->cpq", rows, wx, precision=_HIGHEST)

    args = (batch_index(rois, n_images), y0, x0, bin_h, bin_w, grid_h, grid_w)
    out = _map_rois(one, args, channels * height * width * dtype.itemsize * 2, k)
    return jnp.where(valid[:, None, None, None], out, jnp.nan)


def _ps_pool_edges(start, end, pooled: int, limit: int, dtype):
    """ps_roi_pool bins along one axis: ``[lo, hi)`` ``(K, pooled)``, clipped to ``[0, limit - 1]``."""
    span = end.astype(jnp.uint32) - start.astype(jnp.uint32)  # up to 2**31: exact in uint32
    extent = jnp.where(end > start, span.astype(dtype), jnp.ones((), dtype))
    size = exact_div(extent, dtype.type(pooled))
    p = jnp.arange(pooled, dtype=dtype)
    lo = _clip_shifted(jnp.floor(p * size[:, None]), start[:, None], limit - 1)
    hi = _clip_shifted(jnp.ceil((p + 1) * size[:, None]), start[:, None], limit - 1)
    return lo, hi


def ps_roi_pool(x, rois, pooled_h, pooled_w, spatial_scale):
    """``(K, C / (PH * PW), PH, PW)`` position-sensitive average pooling (indicator weights, exact bins)."""
    n_images, channels, height, width = x.shape
    k = rois.shape[0]
    dtype = np.dtype(x.dtype)
    channels_out = channels // (pooled_h * pooled_w)
    if k == 0 or channels == 0 or height == 0 or width == 0:
        return jnp.zeros((k, channels_out, pooled_h, pooled_w), dtype)
    scale = scale_in(dtype, spatial_scale)
    coords = jnp.nan_to_num(rois[:, 1:], nan=0.0, posinf=0.0, neginf=0.0)
    corners = c_round(jnp.clip(coords * scale, -(2.0**31), 2.0**31))
    hs, he = _ps_pool_edges(corners[:, 1], corners[:, 3], pooled_h, height, dtype)
    ws, we = _ps_pool_edges(corners[:, 0], corners[:, 2], pooled_w, width, dtype)
    valid = box_is_valid(rois, n_images)

    def one(args):
        n, hs, he, ws, we = args
        rows, cols = jnp.arange(height), jnp.arange(width)
        wy = ((rows >= hs[:, None]) & (rows < he[:, None])).astype(dtype)
        wx = ((cols >= ws[:, None]) & (cols < we[:, None])).astype(dtype)
        area = (jnp.maximum(he - hs, 0)[:, None] * jnp.maximum(we - ws, 0)[None, :]).astype(dtype)
        image = x[n].reshape(channels_out, pooled_h, pooled_w, height, width)
        total = jnp.einsum("pr,cpqrw,qw->cpq", wy, image, wx, precision=_HIGHEST)
        return jnp.where(area > 0, exact_div(total, jnp.maximum(area, 1)), 0)

    out = _map_rois(one, (batch_index(rois, n_images), hs, he, ws, we), channels * height * width * dtype.itemsize, k)
    return jnp.where(valid[:, None, None, None], out, jnp.nan)

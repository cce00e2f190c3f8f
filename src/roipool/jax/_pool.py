"""roi_pool in pure XLA (jnp/lax): bin edges, windowed max with argmax, routed gradient.

Semantics: ``docs/semantics.md`` (roi_pool), bit for bit. Every step is done
in the compute dtype ``T`` in the NumPy path's order, so the bin edges are the
same integers and the maximum is the same element.

Static bound: a bin is read through a window of ``BH x BW`` cells,
``BH = min(H, ceil(H / PH) + 1)`` (``BW`` likewise), which holds every bin of
a box no larger than the map. A bin larger than the window (a box larger than
the map) is read in several windows, one after the other, in a
``lax.while_loop`` whose trip count is the largest number of windows any bin
of the call needs (1 for ordinary boxes): the result is exact for every box.
Windows are combined by value, then by the flat index ``h * W + w``, so the
first maximum in row-major order wins as in the reference (ties, ``-0.0``,
NaN, ``-inf``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._prepare import batch_index, box_is_valid, chunk_bytes, exact_div, scale_in

# Rounded corners are clamped to +-2**30 (as ``_geometry.COORD_LIMIT``).
_COORD_LIMIT = 2.0**30
# Largest float that is an int32 in both float32 and float64 (a multiple of 128).
_INT_SAFE = 2.0**31 - 128.0
# Bytes of gathered windows one lax.map step may hold.


def c_round(v: jax.Array) -> jax.Array:
    """C's ``round`` (half away from zero) of a float array, clamped to +-2**30, as int32."""
    a = jnp.abs(v)
    r = jnp.floor(a)
    r = jnp.where(a - r >= 0.5, r + 1, r)  # a - floor(a) is exact
    r = jnp.minimum(r, _COORD_LIMIT).astype(jnp.int32)
    return jnp.where(v >= 0, r, -r)


def _clip_shifted(f: jax.Array, start: jax.Array, limit: int) -> jax.Array:
    """``min(max(f + start, 0), limit)`` for an integral float ``f >= 0`` and int32 ``start``, without overflow."""
    fi = jnp.minimum(f, _INT_SAFE).astype(jnp.int32)
    return jnp.clip(fi, -start, limit - start) + start


def bin_edges(start: jax.Array, end: jax.Array, pooled: int, limit: int, dtype) -> tuple[jax.Array, jax.Array]:
    """``[lo, hi)`` of each of the ``pooled`` bins of RoIs spanning cells ``start..end``: ``(K, pooled)`` int32 each.

    ``T(max(end - start + 1, 1)) / T(pooled)``, then floor/ceil of ``p`` and
    ``p + 1`` times it, shifted by ``start`` and clipped to ``[0, limit]``.
    """
    # end - start + 1 reaches 2**31 + 1: exact in uint32 (wrapping arithmetic), then one rounding to T
    span = end.astype(jnp.uint32) - start.astype(jnp.uint32) + jnp.uint32(1)
    extent = jnp.where(end >= start, span.astype(dtype), jnp.ones((), dtype))
    size = exact_div(extent, dtype.type(pooled))
    p = jnp.arange(pooled, dtype=dtype)
    lo = jnp.floor(p * size[:, None])
    hi = jnp.ceil((p + 1) * size[:, None])
    return _clip_shifted(lo, start[:, None], limit), _clip_shifted(hi, start[:, None], limit)


def geometry(rois: jax.Array, spatial_scale: float, pooled_h: int, pooled_w: int, height: int, width: int):
    """Bin edges of every RoI: ``hs, he (K, PH)`` and ``ws, we (K, PW)`` int32, clipped to the map."""
    dtype = np.dtype(rois.dtype)
    scale = scale_in(dtype, spatial_scale)
    corners = jnp.nan_to_num(rois[:, 1:], nan=0.0) * scale  # NaN only in invalid boxes, masked later
    x1, y1, x2, y2 = (c_round(corners[:, i]) for i in range(4))
    hs, he = bin_edges(y1, y2, pooled_h, height, dtype)
    ws, we = bin_edges(x1, x2, pooled_w, width, dtype)
    return hs, he, ws, we


def window(size: int, pooled: int) -> int:
    """Cells per side of the window a bin is read through (see the module docstring)."""
    return min(size, math.ceil(size / pooled) + 1)


def _beats(v, i, best, best_i):
    """Whether candidate ``(v, i)`` replaces ``(best, best_i)``: larger, NaN, or equal with a smaller index."""
    v_nan, b_nan = jnp.isnan(v), jnp.isnan(best)
    larger = (v > best) | (v_nan & ~b_nan)
    tie = (v == best) | (v_nan & b_nan)
    return larger | (tie & (i < best_i))


def _one_roi(x_nhwc, n, hs, he, ws, we, bh: int, bw: int):
    """Max and argmax of every bin of one RoI: ``(PH, PW, C)`` values and flat indices (-1: empty bin)."""
    _, height, width, channels = x_nhwc.shape
    pooled_h, pooled_w = hs.shape[0], ws.shape[0]
    rows, cols = jnp.maximum(he - hs, 0), jnp.maximum(we - ws, 0)
    tiles_h = jnp.max((rows + bh - 1) // bh)
    tiles_w = jnp.max((cols + bw - 1) // bw)
    image = x_nhwc[n]
    ih, iw = jnp.arange(bh), jnp.arange(bw)

    def tile(t, state):
        best, best_i, found = state
        t = jnp.asarray(t, jnp.int32)
        ti, tj = t // tiles_w, t % tiles_w
        r = hs[:, None] + ti * bh + ih  # (PH, BH)
        c = ws[:, None] + tj * bw + iw  # (PW, BW)
        r_in, c_in = r < he[:, None], c < we[:, None]
        vals = image[jnp.clip(r, 0, height - 1)[:, None, :, None], jnp.clip(c, 0, width - 1)[None, :, None, :]]
        inside = (r_in[:, None, :, None] & c_in[None, :, None, :])[..., None]
        masked = jnp.where(inside, vals, -jnp.inf).reshape(pooled_h, pooled_w, bh * bw, channels)
        k = jnp.argmax(masked, axis=2).astype(jnp.int32)  # first maximum, NaN first, in the window's row-major order
        v = jnp.take_along_axis(masked, k[:, :, None, :], axis=2)[:, :, 0, :]
        # a bin of only -inf: its first cell (the window's first) is the maximum
        k = jnp.where(v == -jnp.inf, 0, k)
        h = hs[:, None, None] + ti * bh + k // bw
        w = ws[None, :, None] + tj * bw + k % bw
        flat = h * width + w
        nonempty = ((ti * bh < rows)[:, None] & (tj * bw < cols)[None, :])[..., None]
        take = nonempty & (~found | _beats(v, flat, best, best_i))
        return jnp.where(take, v, best), jnp.where(take, flat, best_i), found | nonempty

    shape = (pooled_h, pooled_w, channels)
    init = (jnp.zeros(shape, x_nhwc.dtype), jnp.full(shape, -1, jnp.int32), jnp.zeros(shape, bool))
    best, best_i, found = lax.fori_loop(0, tiles_h * tiles_w, tile, init)
    return jnp.where(found, best, 0), jnp.where(found, best_i, -1)


def forward(x: jax.Array, rois: jax.Array, pooled_h: int, pooled_w: int, spatial_scale: float):
    """``(output, argmax)``, both ``(K, C, PH, PW)``; ``x (N, C, H, W)`` and ``rois (K, 5)`` in the compute dtype.

    A box whose batch index or coordinates are invalid (possible only under
    jit, where they cannot be checked) gives NaN and argmax -1.
    """
    n_images, channels, height, width = x.shape
    k = rois.shape[0]
    shape = (k, channels, pooled_h, pooled_w)
    if k == 0 or height == 0 or width == 0 or channels == 0:
        return jnp.zeros(shape, x.dtype), jnp.full(shape, -1, jnp.int32)
    hs, he, ws, we = geometry(rois, spatial_scale, pooled_h, pooled_w, height, width)
    batch = batch_index(rois, n_images)
    bh, bw = window(height, pooled_h), window(width, pooled_w)
    x_nhwc = jnp.transpose(x, (0, 2, 3, 1))

    def one(args):
        return _one_roi(x_nhwc, *args, bh, bw)

    per_roi = pooled_h * pooled_w * bh * bw * channels * np.dtype(x.dtype).itemsize
    chunk = max(1, min(k, chunk_bytes() // max(per_roi, 1)))
    out, argmax = lax.map(one, (batch, hs, he, ws, we), batch_size=chunk)
    valid = box_is_valid(rois, n_images)[:, None, None, None]
    out = jnp.where(valid, out, jnp.nan)
    argmax = jnp.where(valid, argmax, -1)
    return jnp.transpose(out, (0, 3, 1, 2)), jnp.transpose(argmax, (0, 3, 1, 2))


def backward(grad_out: jax.Array, argmax: jax.Array, batch: jax.Array, input_shape) -> jax.Array:
    """``grad_input (N, C, H, W)``: each output's gradient added at its argmax (empty bins add nothing).

    One scatter-add in ``(RoI, channel, bin)`` order; on the CPU XLA applies
    the updates in that order, so the sums are the NumPy path's, bit for bit.
    """
    n_images, channels, height, width = input_shape
    cells = height * width
    shape = argmax.shape
    image = jnp.broadcast_to(batch[:, None, None, None], shape)
    channel = jnp.broadcast_to(jnp.arange(channels)[None, :, None, None], shape)
    cell = jnp.where(argmax >= 0, argmax, cells)  # -1 (empty bin) lands out of range and is dropped
    grad = jnp.zeros((n_images, channels, cells), grad_out.dtype)
    grad = grad.at[image, channel, cell].add(grad_out, mode="drop")
    return grad.reshape(input_shape)

"""prroi_pool (Precise RoI Pooling, IoU-Net) in pure XLA: closed-form per-axis weights.

A bin's value is the mean of the map's bilinear interpolant over the bin
(``docs/semantics.md``, prroi_pool). The integral is separable, so the bin is
``sum_r sum_c wy[r] wx[c] x[r, c]`` with ``wy[r]`` the mean of ``hat(y - r)``
over the bin's rows, in closed form; one RoI is then
``Wy (PH, H) @ x[n, c] (H, W) @ Wx (PW, W)^T``, as in ``_align``. The weights
of every cell of the map are computed for every bin (a cell the bin does not
reach gets 0), so the shapes are static and the result is exact for every box:
no sampling grid, no loop over samples.

The weights and their derivatives with respect to the bin's two ends follow
``cpu/prroi_pool.py`` formula for formula (the cancellation-free form of its
docstring, the limit taken by a bin whose end rounds to its start, nothing for
a box of zero area), so values and gradients agree with the NumPy path to float
rounding. The derivatives are joined to the graph as
``w + dw/dc1 * (c1 - sg(c1)) + dw/dc2 * (c2 - sg(c2))`` for the box's two
coordinates on that axis: the value is unchanged and autodiff gives the NumPy
path's box gradient (``prroi_pool_boxes_backward``), ``spatial_scale`` included.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from ._align import _map_rois
from ._prepare import batch_index, box_is_valid, exact_div, scale_in

sg = lax.stop_gradient
_HIGHEST = lax.Precision.HIGHEST


def axis_weights(start, bin_size, pooled: int, size: int, scale, dtype):
    """Weights of every bin of every RoI along one axis, and their derivatives.

    ``start``, ``bin_size``: ``(K,)`` scaled first corner and bin size (``T``,
    no gradient; ``bin_size`` 0 for a box of zero area, which gets no weights).
    Returns ``(w, d1, d2)``, each ``(K, pooled, size)``: ``w[k, p, r]`` the mean
    of ``hat(t - r)`` over bin ``p``, ``d1``/``d2`` its derivatives with respect
    to the box's first and second coordinate on this axis (before scaling).
    """
    t = dtype.type
    one, half = t(1), t(0.5)
    p = np.arange(pooled, dtype=dtype)
    # the bin's ends move with the corners: a = c1' + p * (c2' - c1') / P, b = a + (c2' - c1') / P
    da_1 = scale * (one - p / t(pooled))
    db_1 = scale * (one - (p + one) / t(pooled))
    da_2 = scale * (p / t(pooled))
    db_2 = scale * ((p + one) / t(pooled))
    a = (start[:, None] + bin_size[:, None] * p)[..., None]  # (K, P, 1)
    b = a + bin_size[:, None, None]
    d = b - a  # the bin's length as computed (may differ from bin_size by a rounding)
    i = jnp.arange(size, dtype=dtype)  # (L,)
    wide = d > 0
    safe_d = jnp.where(wide, d, one)

    # pieces [sa, ea] (rising side of the hat of cell i) and [sb, eb] (falling side)
    sa, ea = jnp.maximum(a, i - one), jnp.minimum(b, i)
    sb, eb = jnp.maximum(a, i), jnp.minimum(b, i + one)
    on_a, on_b = ea > sa, eb > sb
    la = jnp.where(on_a, ea - sa, 0)
    lb = jnp.where(on_b, eb - sb, 0)
    fa, fb = exact_div(la, safe_d), exact_div(lb, safe_d)
    # midpoints as offsets from the ends: (sa + ea) / 2 - a would lose a short piece's digits
    mid_a, mid_b = half * la, half * lb
    w = jnp.where(on_a, fa * ((sa - (i - one)) + mid_a), 0) + jnp.where(on_b, fb * (((i + one) - eb) + mid_b), 0)
    dwb_a = jnp.where(on_a, fa * exact_div((sa - a) + mid_a, safe_d), 0)
    dwb_b = jnp.where(on_b, fb * exact_div((sb - a) + mid_b, safe_d), 0)
    dwa_a = jnp.where(on_a, fa * exact_div((b - ea) + mid_a, safe_d), 0)
    dwa_b = jnp.where(on_b, fb * exact_div((b - eb) + mid_b, safe_d), 0)
    dwa, dwb = dwa_a - dwa_b, dwb_a - dwb_b

    # a bin narrower than the spacing of floats at a: the limit, the value at a
    # (derivatives +-1/2, the slope just right of a) on cells floor(a) and floor(a) + 1
    floor_a = jnp.floor(a)
    near = (i >= floor_a) & (i <= floor_a + one)
    w_limit = jnp.where(near, jnp.maximum(one - jnp.abs(a - i), 0), 0)
    dw_limit = jnp.where(near, jnp.where(i > a, half, -half), 0)
    w = jnp.where(wide, w, w_limit)
    dwa = jnp.where(wide, dwa, dw_limit)
    dwb = jnp.where(wide, dwb, dw_limit)

    live = (bin_size > 0)[:, None, None]
    d1 = dwa * da_1[:, None] + dwb * db_1[:, None]
    d2 = dwa * da_2[:, None] + dwb * db_2[:, None]
    return tuple(jnp.where(live, v, 0) for v in (w, d1, d2))


def _differentiable(weights, c1, c2):
    """Weights carrying their derivatives with respect to the box coordinates ``c1``, ``c2`` (``(K,)``)."""
    w, d1, d2 = weights
    return w + d1 * (c1 - sg(c1))[:, None, None] + d2 * (c2 - sg(c2))[:, None, None]


def prroi_pool(x, rois, pooled_h, pooled_w, spatial_scale):
    """``(K, C, PH, PW)`` Precise RoI pooling of ``x (N, C, H, W)``; ``rois (K, 5)``, both in the compute dtype ``T``.

    A box with an invalid batch index or with scaled corners or extent not
    finite in ``T`` (the NumPy path refuses it) gives NaN and no gradient.
    """
    n_images, channels, height, width = x.shape
    k = rois.shape[0]
    dtype = np.dtype(x.dtype)
    t = dtype.type
    if k == 0 or channels == 0 or height == 0 or width == 0:
        return jnp.zeros((k, channels, pooled_h, pooled_w), dtype)
    scale = scale_in(dtype, spatial_scale)
    corners = sg(rois[:, 1:]) * scale
    extents = corners[:, 2:] - corners[:, :2]
    valid = box_is_valid(rois, n_images) & jnp.all(jnp.isfinite(extents), axis=1)
    coords = jnp.where(valid[:, None], rois[:, 1:], 0)  # no NaN or inf reaches the weights or the gradient
    x1, y1, x2, y2 = (coords[:, j] for j in range(4))
    c = sg(coords) * scale
    bin_h = exact_div(jnp.maximum(c[:, 3] - c[:, 1], 0), t(pooled_h))
    bin_w = exact_div(jnp.maximum(c[:, 2] - c[:, 0], 0), t(pooled_w))
    live = (bin_h > 0) & (bin_w > 0)  # a box of zero area: 0 in every bin, no gradient
    bin_h, bin_w = jnp.where(live, bin_h, 0), jnp.where(live, bin_w, 0)
    wy = _differentiable(axis_weights(c[:, 1], bin_h, pooled_h, height, scale, dtype), y1, y2)
    wx = _differentiable(axis_weights(c[:, 0], bin_w, pooled_w, width, scale, dtype), x1, x2)

    def one(args):
        n, wy, wx = args
        rows = jnp.einsum("pr,crw->cpw", wy, x[n], precision=_HIGHEST)
        return jnp.einsum("cpw,qw->cpq", rows, wx, precision=_HIGHEST)

    out = _map_rois(one, (batch_index(rois, n_images), wy, wx), channels * height * width * dtype.itemsize * 2, k)
    return jnp.where(valid[:, None, None, None], out, jnp.nan)

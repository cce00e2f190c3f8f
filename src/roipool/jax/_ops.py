"""The differentiable JAX ops: one ``custom_vjp`` per op and backend.

Two backends compute the same function (``docs/jax.md``):

- ``"xla"``: pure jnp/lax (``_pool``, ``_align``, ``_prroi``), any device, any transform.
- ``"callback"``: roipool's NumPy functions (the Numba CPU kernels) through
  ``jax.experimental.buffer_callback``, which hands them XLA's output buffer
  to write into (``jax.pure_callback``, which copies the result into a new
  buffer, where a JAX has no ``buffer_callback``); CPU only. Gradients with
  respect to the input come from the NumPy backward; with respect to the boxes
  from the CPU box kernels (roi_align, prroi_pool, and roi_align_rotated, whose
  ops live in ``_rotated`` and are built here by :func:`_callback_op`) or, for
  ps_roi_align, from the XLA path (under ``jit`` XLA drops either when unused).

Each op is ``op(static, x, rois)``: ``static`` a hashable tuple of Python
numbers (output size, scale, ..., and the input shape), ``x`` and ``rois``
already checked and in the compute dtype.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import roipool

from . import _align, _pool, _prepare, _prroi

try:  # experimental, in newer JAX releases (0.10 has it); where it is missing, pure_callback
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:  # pragma: no cover - depends on the JAX installed
    _buffer_callback = None

# ---- roi_pool: the gradient goes to the argmax (kept from the forward) ----


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def roi_pool_xla(static, x, rois):
    (ph, pw), scale, _ = static
    return _pool.forward(x, rois, ph, pw, scale)[0]


def _roi_pool_xla_fwd(static, x, rois):
    (ph, pw), scale, shape = static
    out, argmax = _pool.forward(x, rois, ph, pw, scale)
    return out, (argmax, _pool.batch_index(rois, shape[0]), rois)


def _roi_pool_xla_bwd(static, res, g):
    argmax, batch, rois = res
    return _pool.backward(g, argmax, batch, static[2]), jnp.zeros_like(rois)


roi_pool_xla.defvjp(_roi_pool_xla_fwd, _roi_pool_xla_bwd)


def _call(fn, shape, *args):
    """``fn`` (a NumPy function's call) on ``args`` as NumPy arrays, its result of ``shape`` (a
    ``jax.ShapeDtypeStruct``, or a tuple of them for a tuple of results) the op's output.

    Through ``buffer_callback`` the results' memory is XLA's output buffers: they are lent to
    the NumPy function (``_numpy._layout.results_into``), whose kernels write there directly,
    after asking for huge pages on them. A result allocated elsewhere is copied over. Under
    ``vmap`` one callback takes the whole batch (``expand_dims``) and calls ``fn`` once per
    example, each writing into its own slice of the buffers. Without ``buffer_callback``,
    ``pure_callback`` copies each result into a new buffer, and a ``vmap`` runs it once per
    example.
    """
    if _buffer_callback is None:
        return jax.pure_callback(lambda *a: fn(*map(np.asarray, a)), shape, *args, vmap_method="sequential")
    several = isinstance(shape, tuple)
    rank = len((shape[0] if several else shape).shape)

    def callback(ctx, out, *buffers):
        from .._numpy import _layout  # here: `import roipool.jax` loads no Numba
        from ..cpu._simd import advise_huge_pages

        outs = [np.asarray(o) for o in (out if several else (out,))]
        arrays = [np.asarray(b) for b in buffers]
        for o in outs:
            advise_huge_pages(o)
        lead = outs[0].ndim - rank  # vmapped axes; an argument not mapped over has 1 there
        for index in np.ndindex(outs[0].shape[:lead]):
            targets = [o[index] for o in outs]
            example = [a[tuple(i if n > 1 else 0 for i, n in zip(index, a.shape))] for a in arrays]
            with _layout.results_into(*targets):
                results = fn(*example)
            for target, result in zip(targets, results if several else (results,)):
                if result is not target:
                    if result.shape != target.shape:
                        raise ValueError(f"the callback's result has shape {result.shape}, its output {target.shape}")
                    np.copyto(target, result, casting="no")

    return _buffer_callback(callback, shape, vmap_method="expand_dims")(*args)


def _result(x, rois, channels, size):
    return jax.ShapeDtypeStruct((rois.shape[0], channels, *size), x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def roi_pool_callback(static, x, rois):
    size, scale, _ = static
    return _call(lambda x, r: roipool.roi_pool(x, r, size, scale), _result(x, rois, x.shape[1], size), x, rois)


def _roi_pool_callback_fwd(static, x, rois):
    # With buffer_callback the forward keeps its argmax (written into XLA's buffer, no copy) and
    # the backward scatters through it: on maskrcnn a NumPy step that way took 109 ms, against 383
    # for finding each bin's maximum again from the input (docs/benchmarks.md). Without it (each result
    # copied), the backward finds the maxima again, which spares handing an int32 array the size
    # of the output through two callbacks. The same bits either way.
    size, scale, _ = static
    if _buffer_callback is None:
        return roi_pool_callback(static, x, rois), (x, None, rois)
    out = _result(x, rois, x.shape[1], size)
    shapes = (out, jax.ShapeDtypeStruct(out.shape, jnp.int32))
    out, argmax = _call(lambda x, r: roipool.roi_pool_with_argmax(x, r, size, scale), shapes, x, rois)
    return out, (None, argmax, rois)


def _roi_pool_callback_bwd(static, res, g):
    x, argmax, rois = res
    _, scale, shape = static
    if argmax is None:

        def backward(g, x, r):
            return roipool.roi_pool_backward(g, None, r, shape, input=x, spatial_scale=scale)

        grad = _call(backward, jax.ShapeDtypeStruct(shape, g.dtype), g, x, rois)
    else:
        grad = _call(
            lambda g, a, r: roipool.roi_pool_backward(g, a, r, shape),
            jax.ShapeDtypeStruct(shape, g.dtype),
            g,
            argmax,
            rois,
        )
    return grad, jnp.zeros_like(rois)


roi_pool_callback.defvjp(_roi_pool_callback_fwd, _roi_pool_callback_bwd)


# ---- roi_align, ps_roi_align, ps_roi_pool ----
# XLA: plain autodiff through the separable sums (gradients for input and boxes).


def roi_align_xla(static, x, rois):
    size, scale, sampling_ratio, aligned, _ = static
    return _align.roi_align(x, rois, *size, scale, sampling_ratio, aligned)


def ps_roi_align_xla(static, x, rois):
    size, scale, sampling_ratio, _ = static
    return _align.ps_roi_align(x, rois, *size, scale, sampling_ratio)


def ps_roi_pool_xla(static, x, rois):
    size, scale, _ = static
    # piecewise constant in the boxes: no gradient for them
    return _align.ps_roi_pool(x, jax.lax.stop_gradient(rois), *size, scale)


def _callback_op(forward, backward, channels_out, boxes_backward=None):
    """A ``custom_vjp`` op whose forward and gradients are NumPy callbacks.

    ``forward(x, rois, static)`` and ``backward(g, rois, static)`` call the
    NumPy functions; the boxes' gradient comes from ``boxes_backward(g, x,
    rois, static)`` (a NumPy function returning ``(K, 5)``), or is zero
    without one (an op piecewise constant in the boxes).
    """

    @partial(jax.custom_vjp, nondiff_argnums=(0,))
    def op(static, x, rois):
        size = static[0]
        res = _result(x, rois, channels_out(x.shape[1], size), size)
        return _call(lambda x, r: forward(x, r, static), res, x, rois)

    def fwd(static, x, rois):
        return op(static, x, rois), (x, rois)

    def bwd(static, res, g):
        x, rois = res
        grad_x = _call(lambda g, r: backward(g, r, static), jax.ShapeDtypeStruct(x.shape, g.dtype), g, rois)
        if boxes_backward is not None:
            grad_rois = _call(
                lambda g, x, r: boxes_backward(g, x, r, static), jax.ShapeDtypeStruct(rois.shape, g.dtype), g, x, rois
            )
        else:
            grad_rois = jnp.zeros_like(rois)
        return grad_x, grad_rois

    op.defvjp(fwd, bwd)
    return op


def _same_channels(channels, size):
    return channels


def _ps_channels(channels, size):
    return channels // (size[0] * size[1])


roi_align_callback = _callback_op(
    lambda x, r, s: roipool.roi_align(x, r, s[0], s[1], s[2], s[3]),
    lambda g, r, s: roipool.roi_align_backward(g, r, s[4], s[0], s[1], s[2], s[3]),
    _same_channels,
    boxes_backward=lambda g, x, r, s: roipool.roi_align_boxes_backward(g, x, r, s[0], s[1], s[2], s[3]),
)
ps_roi_align_callback = _callback_op(
    lambda x, r, s: roipool.ps_roi_align(x, r, s[0], s[1], s[2]),
    lambda g, r, s: roipool.ps_roi_align_backward(g, r, s[3], s[0], s[1], s[2]),
    _ps_channels,
    boxes_backward=lambda g, x, r, s: roipool.ps_roi_align_boxes_backward(g, x, r, s[0], s[1], s[2]),
)
ps_roi_pool_callback = _callback_op(
    lambda x, r, s: roipool.ps_roi_pool(x, r, s[0], s[1]),
    lambda g, r, s: roipool.ps_roi_pool_backward(g, r, s[2], s[0], s[1]),
    _ps_channels,
)


# ---- prroi_pool: both gradients in closed form (XLA: autodiff of the weights; callback: NumPy) ----


def prroi_pool_xla(static, x, rois):
    size, scale, _ = static
    return _prroi.prroi_pool(x, rois, *size, scale)


prroi_pool_callback = _callback_op(
    lambda x, r, s: roipool.prroi_pool(x, r, s[0], s[1]),
    lambda g, r, s: roipool.prroi_pool_backward(g, r, s[2], s[0], s[1]),
    _same_channels,
    boxes_backward=lambda g, x, r, s: roipool.prroi_pool_boxes_backward(g, x, r, s[0], s[1]),
)


# ---- multi_scale_roi_align: each box pooled by roi_align (aligned=False) from the level its size picks ----
# static: (size, scales, sampling_ratio, (k_min, k_max), canonical_scale, canonical_level, shapes)


def box_levels(rois, level_range, canonical_scale, canonical_level):
    """Pyramid level index (0 = the finest level given) of every row of ``rois (K, 5)``, in the
    boxes' dtype: ``floor(canonical_level + log2(sqrt(w * h) / canonical_scale) + 1e-6)`` clamped
    to ``level_range``, torchvision's rule, every step correctly rounded where the level changes
    (:func:`_log2`); a box
    whose side is NaN (a box inverted in one axis) goes to the finest level, as in
    ``roipool.nn.MultiScaleRoIAlign``."""
    k_min, k_max = level_range
    side = jnp.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    # a true division (XLA would multiply by 1/224, an ulp off): the level's edge as torch computes it
    level = jnp.floor(
        canonical_level + _log2(_prepare.exact_div(side, canonical_scale)) + jnp.asarray(1e-6, side.dtype)
    )
    level = jnp.where(jnp.isnan(level), k_min, level)
    return (jnp.clip(level, k_min, k_max) - k_min).astype(jnp.int32)


def _log2(x):
    """``log2(x)`` of non-negative ``x``, correctly rounded near powers of two: XLA's ``log2`` is an
    ulp off on about 30% of float32 inputs, and a box whose side is within about 1e-7 of
    ``canonical_scale * 2**k`` then went to the other level. ``x = m * 2**e`` with ``m`` in
    ``[sqrt(1/2), sqrt(2))`` (exact), and ``log2(x) = e + log1p(m - 1) / ln 2`` (``m - 1``
    exact): near a power of two the second term is tiny, its error far below half an ulp of
    the sum, which is rounded once. Elsewhere it is within an ulp or two, which moves no box:
    the level changes only where ``log2`` crosses a whole number."""
    mant, expo = jnp.frexp(x)  # x = mant * 2**expo, 1/2 <= mant < 1
    low = mant < np.sqrt(0.5)
    m = jnp.where(low, mant * 2, mant)
    e = jnp.where(low, expo - 1, expo).astype(x.dtype)
    return e + jnp.log1p(m - 1) * jnp.asarray(1 / np.log(2), x.dtype)


def _levels_of(static, rois):
    _, _, _, level_range, canonical_scale, canonical_level, _ = static
    return jax.lax.stop_gradient(box_levels(rois, level_range, canonical_scale, canonical_level))


def _complete(static) -> bool:
    """Whether every level from the finest to the coarsest has a map: else the boxes of the
    levels past the last map get none and stay zero, as in torchvision."""
    _, _, _, (k_min, k_max), _, _, shapes = static
    return k_max - k_min + 1 == len(shapes)


def multi_scale_xla(static, features, rois):
    """Every box pooled from every level, each kept where its level is the box's (XLA has static
    shapes): ``L`` times the work of one level, differentiable by plain autodiff."""
    size, scales, sampling_ratio, *_ = static
    levels = _levels_of(static, rois)
    out = None
    for level, (feature, scale) in enumerate(zip(features, scales)):
        pooled = _align.roi_align(feature, rois, *size, scale, sampling_ratio, False)
        if out is None and _complete(static):
            out = pooled  # the finest level's rows, the others replaced below
        else:
            out = jnp.where((levels == level)[:, None, None, None], pooled, 0 if out is None else out)
    return out


def _per_level(levels, count):
    """Row indices of each level's boxes, in order."""
    return [np.flatnonzero(levels == level) for level in range(count)]


def _multi_scale_forward(static, levels, rois, *features):
    from .. import _checks
    from .._numpy import _layout

    size, scales, sampling_ratio, *_ = static
    _checks.rois_array(rois, features[0].shape[0], rois.dtype)  # a bad box named by its row among all
    out = _layout.empty((rois.shape[0], features[0].shape[1], *size), rois.dtype, False, zeros=not _complete(static))
    for feature, scale, rows in zip(features, scales, _per_level(levels, len(features))):
        out[rows] = roipool.roi_align(feature, rois[rows], size, scale, sampling_ratio, False)
    return out


def _multi_scale_input_grads(static, g, levels, rois):
    size, scales, sampling_ratio, *_, shapes = static
    return tuple(
        roipool.roi_align_backward(g[rows], rois[rows], shape, size, scale, sampling_ratio, False)
        for shape, scale, rows in zip(shapes, scales, _per_level(levels, len(shapes)))
    )


def _multi_scale_box_grads(static, g, levels, rois, *features):
    size, scales, sampling_ratio, *_ = static
    grad = np.zeros_like(rois)
    for feature, scale, rows in zip(features, scales, _per_level(levels, len(features))):
        grad[rows] = roipool.roi_align_boxes_backward(g[rows], feature, rois[rows], size, scale, sampling_ratio, False)
    return grad


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def multi_scale_callback(static, features, rois):
    """One callback for the whole pyramid: each level's boxes pooled by the NumPy ``roi_align``
    (the work of one level), written into XLA's output."""
    size = static[0]
    res = jax.ShapeDtypeStruct((rois.shape[0], features[0].shape[1], *size), rois.dtype)
    return _call(partial(_multi_scale_forward, static), res, _levels_of(static, rois), rois, *features)


def _multi_scale_callback_fwd(static, features, rois):
    return multi_scale_callback(static, features, rois), (features, rois)


def _multi_scale_callback_bwd(static, res, g):
    features, rois = res
    levels = _levels_of(static, rois)
    shapes = tuple(jax.ShapeDtypeStruct(f.shape, g.dtype) for f in features)
    grad_features = _call(partial(_multi_scale_input_grads, static), shapes, g, levels, rois)
    boxes = jax.ShapeDtypeStruct(rois.shape, g.dtype)
    grad_rois = _call(partial(_multi_scale_box_grads, static), boxes, g, levels, rois, *features)
    return tuple(grad_features), grad_rois


multi_scale_callback.defvjp(_multi_scale_callback_fwd, _multi_scale_callback_bwd)

"""Argument checks and box conversion for the JAX frontend.

Everything that can be checked from static shapes, dtypes and Python numbers
is checked here, with the same rules and messages as the NumPy path
(``roipool._checks``). Box *values* (batch index in range, finite
coordinates) are checked too when the boxes are concrete (an eager call); under
``jax.jit`` they are traced, and :func:`box_is_valid` gives the in-graph mask
the ops use to answer NaN for such a box instead of reading out of bounds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import _checks

_SUPPORTED = "bfloat16, float16, float32, float64"


def compute_dtype(dtype) -> np.dtype:
    """float32 for 16-bit inputs (float16, bfloat16), else the input's own dtype."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype


def feature_map(input, name: str = "input") -> jax.Array:
    """A real floating ``(N, C, H, W)`` array (a ``jax.Array``, or a NumPy array converted)."""
    if not isinstance(input, (jax.Array, np.ndarray)):
        raise TypeError(f"{name} must be a jax.Array, got {type(input).__name__}")
    dtype = np.dtype(input.dtype)
    floating = jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize in (2, 4, 8)
    _checks.feature_map_dtype_and_shape(floating, dtype, input.shape, name, _SUPPORTED)
    return jnp.asarray(input)


def _is_traced(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def rois(boxes, num_images: int, dtype, name: str = "boxes") -> jax.Array:
    """Boxes as a ``(K, 5)`` array of ``dtype`` with rows ``[batch_index, x1, y1, x2, y2]``.

    Accepts a ``(K, 5)`` array or a list of ``num_images`` arrays ``(L_i, 4)``
    (torchvision's two forms). Concrete boxes go through the NumPy path's
    rules (``_checks.rois_array``), values included; traced boxes get the
    shape and dtype rules only (see the module docstring).
    """
    return _assemble(
        boxes, num_images, dtype, name, _checks.rois_array, _checks.box_list_item_shape, _checks.rois_shape
    )


def rotated_rois(boxes, num_images: int, dtype, name: str = "boxes") -> jax.Array:
    """Rotated boxes as a ``(K, 6)`` array of ``dtype`` with rows ``[batch_index, cx, cy, w, h, angle]``.

    As :func:`rois`, for ``(K, 6)`` arrays or lists of ``num_images`` arrays
    ``(L_i, 5)``: concrete boxes go through ``_checks.rotated_rois_array``
    (values included), traced ones through the shape and dtype rules.
    """
    return _assemble(
        boxes,
        num_images,
        dtype,
        name,
        _checks.rotated_rois_array,
        _checks.rotated_box_list_item_shape,
        _checks.rotated_rois_shape,
    )


def _assemble(boxes, num_images: int, dtype, name: str, concrete, item_shape, rows_shape) -> jax.Array:
    """Rows with their batch index from an array or a list of per-image arrays: concrete boxes
    through the NumPy rules ``concrete`` (values included), traced ones through the shape checks
    ``item_shape`` (a list's arrays) or ``rows_shape`` (one array) and the dtype rules."""
    dtype = np.dtype(dtype)
    items = list(boxes) if isinstance(boxes, (list, tuple)) else [boxes]
    if not any(_is_traced(b) for b in items):
        listed = isinstance(boxes, (list, tuple))
        host = [_checks.real_array(b, f"{name}[{i}]" if listed else name) for i, b in enumerate(items)]
        return jnp.asarray(concrete(host if isinstance(boxes, (list, tuple)) else host[0], num_images, dtype, name))
    if isinstance(boxes, (list, tuple)):
        _checks.box_list_length(len(boxes), num_images, name)
        parts = []
        for i, b in enumerate(boxes):
            arr = _real(b, f"{name}[{i}]")
            item_shape(arr.shape, f"{name}[{i}]")
            parts.append(jnp.concatenate([jnp.full((arr.shape[0], 1), i, dtype), arr.astype(dtype)], axis=1))
        return jnp.concatenate(parts, axis=0)
    arr = _real(boxes, name)
    rows_shape(arr.shape, name)
    return arr.astype(dtype)


def _real(value, name: str):
    """A traced or concrete array of real numbers (not bool, not complex)."""
    if not isinstance(value, (jax.Array, np.ndarray)):
        value = _checks.real_array(value, name)
    dtype = np.dtype(value.dtype)
    _checks.real_numbers(dtype.kind in "fiu", dtype, name)
    return jnp.asarray(value)


def box_is_valid(rois: jax.Array, num_images: int) -> jax.Array:
    """``(K,)`` bool: batch index a whole number in ``[0, N)`` and coordinates finite (in-graph)."""
    batch = rois[:, 0]
    ok = (batch == jnp.floor(batch)) & (batch >= 0) & (batch < num_images)
    return ok & jnp.all(jnp.isfinite(rois[:, 1:]), axis=1)


def batch_index(rois: jax.Array, num_images: int) -> jax.Array:
    """``(K,)`` int32 batch indices, clamped into ``[0, N)`` so that no read leaves the map."""
    batch = jnp.nan_to_num(rois[:, 0], nan=0.0, posinf=0.0, neginf=0.0)
    return jnp.clip(batch, 0, max(num_images - 1, 0)).astype(jnp.int32)


def check_scaled_boxes(rois: jax.Array, scale, offset) -> None:
    """RoIAlign's ``_checks.scaled_boxes_finite``, applied when the boxes are concrete;
    under jit such a box gives NaN (see ``docs/jax.md``)."""
    if _is_traced(rois) or rois.shape[0] == 0:
        return
    _checks.scaled_boxes_finite(np.asarray(rois), scale, offset)


def check_rotated_scaled_boxes(rois: jax.Array, scale, output_size, adaptive: bool) -> None:
    """roi_align_rotated's ``_checks.rotated_scaled_boxes``, applied when the boxes are concrete;
    under jit such a box gives NaN (see ``docs/jax.md``)."""
    if _is_traced(rois) or rois.shape[0] == 0:
        return
    _checks.rotated_scaled_boxes(np.asarray(rois), scale, *output_size, adaptive)


def scale_in(dtype, spatial_scale: float):
    """``spatial_scale`` rounded to ``dtype`` as the NumPy path rounds it (a NumPy scalar)."""
    with np.errstate(over="ignore", under="ignore"):
        return np.dtype(dtype).type(spatial_scale)


def exact_div(a: jax.Array, b) -> jax.Array:
    """``a / b``, correctly rounded, for a scalar or broadcast ``b``.

    XLA's algebraic simplifier rewrites a division by a broadcast value
    (a constant such as ``pooled_h``, or a per-RoI number spread over bins) into
    a multiplication by its reciprocal, which is off by an ulp for about a third
    of all quotients and would move bin edges. Here the divisor is made a full
    array that depends on ``a`` (NaN where ``a`` is NaN, which changes no
    quotient) and passes through an optimization barrier, so the division stays
    a true division, under ``vmap`` too.
    """
    b = jnp.where(jnp.isnan(a), a, jnp.asarray(b, a.dtype))
    return a / lax.optimization_barrier(b)


def chunk_bytes() -> int:
    """Memory one ``lax.map`` step over RoIs may gather: 32 MB on the CPU (caches), 512 MB on accelerators.

    Chosen at trace time from ``jax.default_backend()``; larger steps keep a
    GPU busy (a step of a few RoIs would leave most of it idle).
    """
    return (32 << 20) if jax.default_backend() == "cpu" else (512 << 20)

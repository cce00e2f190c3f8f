"""roipool for JAX: the RoI family with torchvision's exact semantics under jit, grad and vmap.

``import roipool.jax`` (``import roipool`` alone imports neither JAX nor torch).
The functions take and return ``jax.Array``s, with the arguments of the NumPy
functions of the same names; ``docs/semantics.md`` defines every op and
``docs/jax.md`` the JAX specifics: static bounds, gradients, backends, errors.

- ``input`` is ``(N, C, H, W)`` float32, float64 (with ``jax_enable_x64``),
  float16 or bfloat16 (computed in float32, returned in the input's dtype).
- ``boxes`` is ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` or a list of
  ``N`` arrays ``(L_i, 4)``; ``output_size``, ``spatial_scale``,
  ``sampling_ratio`` and ``aligned`` are Python values (static under jit).
- :func:`roi_align_rotated` takes rotated boxes instead: ``(K, 6)`` rows
  ``[batch_index, cx, cy, w, h, angle]`` or a list of ``N`` arrays ``(L_i, 5)``.
- :func:`multi_scale_roi_align` pools from a feature pyramid, each box from the
  level its size picks (torchvision's ``MultiScaleRoIAlign`` as a function).
- Gradients: with respect to ``input`` for every op; also with respect to the
  boxes for :func:`roi_align`, :func:`ps_roi_align`, :func:`roi_align_rotated`,
  :func:`prroi_pool` and :func:`multi_scale_roi_align`.
- ``layout="nhwc"`` (keyword, every op): ``input`` is ``(N, H, W, C)``, the
  layout of Flax's convolutions, and the result ``(K, pooled_h, pooled_w,
  C_out)``, with the same values as the ``"nchw"`` call; the array is
  transposed on the way in and out (XLA arrays have no memory format to
  follow), and gradients flow through the transposes.

Backends: ``"xla"`` (pure jnp/lax, every device) or ``"callback"`` (the NumPy
path's Numba kernels, writing into XLA's output buffers through
``jax.experimental.buffer_callback``, or via ``jax.pure_callback`` on a JAX
without it; CPU only). ``"auto"`` (the
default) takes the callback on the CPU, where it is faster (``docs/jax.md``
has the figures), and XLA elsewhere. Choose with :func:`set_backend` or each
call's ``backend=`` argument.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from . import _ops, _prepare, _rotated

__all__ = [
    "roi_pool",
    "roi_align",
    "ps_roi_pool",
    "ps_roi_align",
    "roi_align_rotated",
    "prroi_pool",
    "multi_scale_roi_align",
    "set_backend",
    "get_backend",
]

_BACKENDS = ("auto", "xla", "callback")
_backend = "auto"


def set_backend(name: str) -> None:
    """Default backend of every op: ``"auto"``, ``"xla"`` or ``"callback"``."""
    global _backend
    _backend = _backend_name(name)


def get_backend() -> str:
    """The default backend set by :func:`set_backend` (``"auto"`` unless changed)."""
    return _backend


def _backend_name(name) -> str:
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, _BACKENDS))}, got {name!r}")
    return name


def _platform(x) -> str:
    if not isinstance(x, jax.core.Tracer):
        return next(iter(x.devices())).platform
    return jax.default_backend()


def _use_callback(backend, x) -> bool:
    name = _backend if backend is None else _backend_name(backend)
    if name == "auto":
        return _platform(x) == "cpu"
    if name == "callback" and _platform(x) != "cpu":
        raise ValueError("backend='callback' runs the NumPy CPU kernels and needs a CPU array; use 'xla'")
    return name == "callback"


def _prepare_call(input, boxes, layout, to_rois=_prepare.rois):
    """Checked input ``(N, C, H, W)`` cast to the compute dtype, boxes in it (``to_rois``: ``(K, 5)``
    rows, or ``(K, 6)`` with ``_prepare.rotated_rois``), the input's own dtype, and whether the
    caller's arrays are channels-last (``layout="nhwc"``)."""
    nhwc = _checks.layout_is_nhwc(layout)
    input = _prepare.feature_map(_channels_first(input, nhwc, "input"))
    dtype = _prepare.compute_dtype(input.dtype)
    rois = to_rois(boxes, input.shape[0], dtype)
    return input.astype(dtype), rois, input.dtype, nhwc


def _channels_first(input, nhwc: bool, name: str):
    """``input`` as given, or with ``nhwc`` a 4-D channels-last array turned ``(N, C, H, W)``
    (another rank refused by name; other types are left to ``_prepare.feature_map``)."""
    if nhwc and isinstance(input, (jax.Array, np.ndarray)):
        if input.ndim != 4:
            raise ValueError(f"{name} must have 4 dimensions (N, H, W, C) with layout='nhwc', got shape {input.shape}")
        input = jnp.transpose(input, (0, 3, 1, 2)) if isinstance(input, jax.Array) else np.moveaxis(input, 3, 1)
    return input


def _output_fits(x, rois, channels, size, output_size) -> None:
    """On the CPU, the NumPy path's check that the output ``(K, channels, *size)`` fits in this
    machine's memory (a ``ValueError`` naming ``output_size``, before anything is traced or run);
    on an accelerator XLA reports its own out-of-memory error."""
    if _platform(x) == "cpu":
        _checks.pooled_output_fits(rois.shape[0], channels, *size, np.dtype(x.dtype).itemsize, output_size)


def _result(out, dtype, nhwc):
    """An op's ``(K, C, PH, PW)`` result in the input's dtype and the caller's layout."""
    out = out.astype(dtype)
    return jnp.transpose(out, (0, 2, 3, 1)) if nhwc else out


def roi_pool(input, boxes, output_size, spatial_scale=1.0, *, backend=None, layout="nchw"):
    """RoI max pooling (Fast R-CNN), torchvision's ``roi_pool`` bit for bit.

    Args:
        input (jax.Array[N, C, H, W]): the feature map, floating.
        boxes (jax.Array[K, 5] or list of N jax.Array[L_i, 4]): boxes in image
            coordinates, rows ``[batch_index, x1, y1, x2, y2]``.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.
        backend (str or None): ``"xla"``, ``"callback"``, ``"auto"``; None: :func:`get_backend`.
        layout ("nchw" or "nhwc"): ``"nhwc"`` takes ``input (N, H, W, C)`` and returns
            ``(K, pooled_h, pooled_w, C)``, the same values.

    Returns:
        jax.Array[K, C, pooled_h, pooled_w] (with ``"nhwc"``, ``[K, pooled_h,
        pooled_w, C]``) of the input's dtype. Its gradient with respect to
        ``input`` goes to each bin's maximum (a ``custom_vjp``); the boxes get
        none (the output is piecewise constant in them).
    """
    x, rois, dtype, nhwc = _prepare_call(input, boxes, layout)
    size = _checks.output_size_pair(output_size)
    _output_fits(x, rois, x.shape[1], size, output_size)
    scale = _checks.positive_scale(spatial_scale)
    _checks.scale_in_dtype(scale, x.dtype)
    static = (size, scale, x.shape)
    op = _ops.roi_pool_callback if _use_callback(backend, x) else _ops.roi_pool_xla
    return _result(op(static, x, rois), dtype, nhwc)


def roi_align(
    input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, *, backend=None, layout="nchw"
):
    """RoIAlign (Mask R-CNN), torchvision's ``roi_align`` to float rounding.

    Args as :func:`roi_pool`, plus:
        sampling_ratio (int): samples per bin side, at most ``2**20``; ``<= 0``: adaptive, ``ceil(bin size)``.
        aligned (bool): ``True`` shifts boxes by half a cell (the correct pixel
            model); ``False`` the legacy rule.

    Returns:
        jax.Array[K, C, pooled_h, pooled_w] of the input's dtype, differentiable
        with respect to ``input`` and the box coordinates (column 0, the batch
        index, gets a zero gradient).
    """
    x, rois, dtype, nhwc = _prepare_call(input, boxes, layout)
    size = _checks.output_size_pair(output_size)
    scale = _checks.positive_scale(spatial_scale)
    sampling_ratio = _checks.sampling_ratio_int(sampling_ratio)
    aligned = _checks.flag(aligned, "aligned")
    _checks.scale_in_dtype(scale, x.dtype)
    _prepare.check_scaled_boxes(rois, scale, 0.5 if aligned else 0.0)
    _output_fits(x, rois, x.shape[1], size, output_size)
    static = (size, scale, sampling_ratio, aligned, x.shape)
    op = _ops.roi_align_callback if _use_callback(backend, x) else _ops.roi_align_xla
    return _result(op(static, x, rois), dtype, nhwc)


def ps_roi_pool(input, boxes, output_size, spatial_scale=1.0, *, backend=None, layout="nchw"):
    """Position-sensitive RoI average pooling (R-FCN), torchvision's ``ps_roi_pool``.

    Args as :func:`roi_pool`; ``C`` must be a multiple of ``pooled_h * pooled_w``.

    Returns:
        jax.Array[K, C / (pooled_h * pooled_w), pooled_h, pooled_w] of the input's
        dtype, differentiable with respect to ``input``.
    """
    x, rois, dtype, nhwc = _prepare_call(input, boxes, layout)
    size = _checks.output_size_pair(output_size)
    _checks.ps_channels(x.shape[1], size)
    scale = _checks.positive_scale(spatial_scale)
    _checks.scale_in_dtype(scale, x.dtype)
    _output_fits(x, rois, x.shape[1] // (size[0] * size[1]), size, output_size)
    static = (size, scale, x.shape)
    op = _ops.ps_roi_pool_callback if _use_callback(backend, x) else _ops.ps_roi_pool_xla
    return _result(op(static, x, rois), dtype, nhwc)


def ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, *, backend=None, layout="nchw"):
    """Position-sensitive RoIAlign (torchvision's ``ps_roi_align``, never NaN).

    Args as :func:`ps_roi_pool`, plus ``sampling_ratio`` (``<= 0``: adaptive,
    at least one sample per side).

    Returns:
        jax.Array[K, C / (pooled_h * pooled_w), pooled_h, pooled_w] of the input's
        dtype, differentiable with respect to ``input`` and the box coordinates.
    """
    x, rois, dtype, nhwc = _prepare_call(input, boxes, layout)
    size = _checks.output_size_pair(output_size)
    _checks.ps_channels(x.shape[1], size)
    scale = _checks.positive_scale(spatial_scale)
    _checks.scale_in_dtype(scale, x.dtype)
    sampling_ratio = _checks.sampling_ratio_int(sampling_ratio)
    _output_fits(x, rois, x.shape[1] // (size[0] * size[1]), size, output_size)
    static = (size, scale, sampling_ratio, x.shape)
    op = _ops.ps_roi_align_callback if _use_callback(backend, x) else _ops.ps_roi_align_xla
    return _result(op(static, x, rois), dtype, nhwc)


def roi_align_rotated(
    input,
    boxes,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=True,
    clockwise=False,
    *,
    backend=None,
    layout="nchw",
):
    """Rotated RoIAlign (mmcv/mmrotate's ``roi_align_rotated``), the NumPy path's to float rounding.

    Args:
        input (jax.Array[N, C, H, W]): the feature map, floating.
        boxes (jax.Array[K, 6] or list of N jax.Array[L_i, 5]): rows
            ``[batch_index, cx, cy, w, h, angle]`` in image coordinates (angle
            in radians; ``w, h >= 0``), or per image ``[cx, cy, w, h, angle]``.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.
        sampling_ratio (int): samples per bin side, at most ``2**10``; ``<= 0``: adaptive,
            ``ceil(scaled size / output size)`` per side.
        aligned (bool): ``True`` shifts the centre by half a cell; ``False``
            the legacy rule (no shift, sizes below one cell read as one cell).
        clockwise (bool): ``True`` negates the angle.
        backend, layout: as in :func:`roi_pool`.

    Returns:
        jax.Array[K, C, pooled_h, pooled_w] (with ``"nhwc"``, ``[K, pooled_h,
        pooled_w, C]``) of the input's dtype, differentiable with respect to
        ``input`` and the box coordinates ``cx, cy, w, h, angle`` (the torch
        op's box gradient: the adaptive grid size held fixed; the batch index
        gets 0). Exact rules: ``docs/semantics.md`` (Rotated RoIAlign).
    """
    x, rois, dtype, nhwc = _prepare_call(input, boxes, layout, _prepare.rotated_rois)
    size = _checks.output_size_pair(output_size)
    scale = _checks.positive_scale(spatial_scale)
    sampling_ratio = _checks.sampling_ratio_int(sampling_ratio, limit=_checks.MAX_ROTATED_SAMPLING_RATIO)
    aligned = _checks.flag(aligned, "aligned")
    clockwise = _checks.flag(clockwise, "clockwise")
    _checks.scale_in_dtype(scale, x.dtype)
    _prepare.check_rotated_scaled_boxes(rois, scale, size, sampling_ratio <= 0)
    _output_fits(x, rois, x.shape[1], size, output_size)
    static = (size, scale, sampling_ratio, aligned, clockwise, x.shape)
    op = _rotated.roi_align_rotated_callback if _use_callback(backend, x) else _rotated.roi_align_rotated_xla
    return _result(op(static, x, rois), dtype, nhwc)


def prroi_pool(input, boxes, output_size, spatial_scale=1.0, *, backend=None, layout="nchw"):
    """Precise RoI pooling (IoU-Net): the exact mean of the map's bilinear interpolant over each bin.

    Args as :func:`roi_pool`. Semantics: ``docs/semantics.md`` (prroi_pool):
    corners are ``x * spatial_scale`` (no half-cell shift, no rounding), the
    map is extended by zeros, and a box of zero width or height gives 0.

    Returns:
        jax.Array[K, C, pooled_h, pooled_w] of the input's dtype, differentiable
        with respect to ``input`` and the box coordinates (the NumPy path's
        ``prroi_pool_backward`` and ``prroi_pool_boxes_backward``; column 0,
        the batch index, gets a zero gradient).
    """
    x, rois, dtype, nhwc = _prepare_call(input, boxes, layout)
    pooled_h, pooled_w, scale = _checks.prroi_arguments(output_size, spatial_scale)
    _checks.scale_in_dtype(scale, x.dtype)
    _prepare.check_scaled_boxes(rois, scale, 0.0)
    _output_fits(x, rois, x.shape[1], (pooled_h, pooled_w), output_size)
    static = ((pooled_h, pooled_w), scale, x.shape)
    op = _ops.prroi_pool_callback if _use_callback(backend, x) else _ops.prroi_pool_xla
    return _result(op(static, x, rois), dtype, nhwc)


def multi_scale_roi_align(
    features,
    boxes,
    image_shapes,
    output_size,
    sampling_ratio=-1,
    *,
    canonical_scale=224,
    canonical_level=4,
    backend=None,
    layout="nchw",
):
    """RoIAlign over a feature pyramid (FPN): each box pooled from the level its size picks,
    torchvision's ``MultiScaleRoIAlign`` as a function (``roipool.nn.MultiScaleRoIAlign``'s values).

    Args:
        features (sequence of jax.Array[N, C, H_l, W_l]): the levels to pool from, finest first,
            of one dtype, with the same ``N`` and ``C``.
        boxes (jax.Array[K, 5] or list of N jax.Array[L_i, 4]): boxes in image coordinates.
        image_shapes (sequence of (int, int)): each image's ``(height, width)`` before padding;
            the largest height sets the scales.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        sampling_ratio (int): samples per bin side, at most ``2**20``; ``<= 0``: adaptive.
        canonical_scale (float), canonical_level (int): a box of side ``canonical_scale``
            (``sqrt(w * h)``, image pixels) goes to level ``canonical_level``.
        backend, layout: as for :func:`roi_align` (``"nhwc"``: every level ``(N, H_l, W_l, C)``,
            the result ``(K, pooled_h, pooled_w, C)``).

    Level ``l``'s scale is ``2 ** round(log2(H_l / H_image))``; with ``k_min`` and ``k_max`` the
    exponents of the finest and coarsest levels negated, a box goes to level
    ``clamp(floor(canonical_level + log2(sqrt(w * h) / canonical_scale) + 1e-6), k_min, k_max)``
    (a NaN side, from a NaN corner or a box inverted in one axis, to the finest) and is pooled
    there by :func:`roi_align` with ``aligned=False`` (``docs/semantics.md``). With a level missing
    between the finest and the coarsest map, the boxes past the last map stay zero (torchvision's
    indexing: a box's level index picks the map given at that position).

    Returns:
        jax.Array[K, C, pooled_h, pooled_w] of the levels' dtype, differentiable with respect to
        every level and the box coordinates. The callback backend pools each box once, from its
        level; the XLA backend (static shapes) pools every box from every level and keeps one.
    """
    nhwc = _checks.layout_is_nhwc(layout)
    if not isinstance(features, (list, tuple)) or len(features) == 0:
        raise TypeError(f"features must be a non-empty list of feature maps, got {features!r:.80}")
    maps = [
        _prepare.feature_map(_channels_first(f, nhwc, f"features[{i}]"), f"features[{i}]")
        for i, f in enumerate(features)
    ]
    first = maps[0]
    for i, level in enumerate(maps[1:], 1):
        if level.dtype != first.dtype or level.shape[:2] != first.shape[:2]:
            raise ValueError(
                f"features[{i}] must have the dtype, batch and channels of features[0] "
                f"({first.dtype}, N={first.shape[0]}, C={first.shape[1]}), got {level.dtype} {level.shape}"
            )
    dtype = _prepare.compute_dtype(first.dtype)
    maps = [level.astype(dtype) for level in maps]
    rois = _prepare.rois(boxes, first.shape[0], dtype)
    size = _checks.output_size_pair(output_size)
    sampling_ratio = _checks.sampling_ratio_int(sampling_ratio)
    canonical_scale = _checks.positive_scale(canonical_scale, "canonical_scale")
    canonical_level = _checks.pyramid_level(canonical_level)
    scales, level_range = _pyramid_scales([level.shape[2] for level in maps], image_shapes)
    for scale in scales:
        _checks.scale_in_dtype(scale, dtype)
    _prepare.check_scaled_boxes(rois, max(scales), 0.0)
    _output_fits(first, rois, first.shape[1], size, output_size)
    shapes = tuple(tuple(level.shape) for level in maps)
    static = (size, scales, sampling_ratio, level_range, canonical_scale, canonical_level, shapes)
    op = _ops.multi_scale_callback if _use_callback(backend, first) else _ops.multi_scale_xla
    return _result(op(static, tuple(maps), rois), first.dtype, nhwc)


def _pyramid_scales(heights, image_shapes):
    """Each level's scale ``2 ** round(log2(H_l / H_image))`` (half to even) and ``(k_min, k_max)``,
    ``H_image`` the largest height in ``image_shapes`` (``_checks.image_shapes_list``'s rules)."""
    _checks.image_shapes_list(image_shapes)
    image_h = max(int(shape[0]) for shape in image_shapes)
    for i, height in enumerate(heights):
        if height == 0:
            raise ValueError(f"features[{i}] has no rows: a level's height sets its scale")
    exponents = [round(math.log2(height / image_h)) for height in heights]
    return tuple(2.0**e for e in exponents), (-exponents[0], -exponents[-1])

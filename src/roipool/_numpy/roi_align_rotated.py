"""Rotated RoIAlign on NumPy arrays: checks, layout, and the CPU kernels.

Semantics: ``docs/semantics.md`` (Rotated RoIAlign), the mmcv/mmrotate
``roi_align_rotated`` definition. The geometry (``Frames``) and the
launchers live with the kernels in ``cpu/roi_align_rotated.py``.
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from ..cpu._tiles import as_dtype
from ..cpu.roi_align_rotated import Frames, launch_backward, launch_forward
from . import _layout


def compute_dtype(dtype) -> np.dtype:
    """float16 and float32 compute in float32, wider types in float64 (the kernels' two types)."""
    return np.dtype(np.float32) if np.dtype(dtype).itemsize <= 4 else np.dtype(np.float64)


def arguments(output_size, spatial_scale, sampling_ratio, aligned, clockwise):
    """Checked ``(pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, clockwise)``."""
    pooled_h, pooled_w = _checks.output_size_pair(output_size)
    scale = _checks.positive_scale(spatial_scale)
    return (
        pooled_h,
        pooled_w,
        scale,
        _checks.sampling_ratio_int(sampling_ratio, limit=_checks.MAX_ROTATED_SAMPLING_RATIO),
        _checks.flag(aligned, "aligned"),
        _checks.flag(clockwise, "clockwise"),
    )


def roi_align_rotated(
    input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True, clockwise=False, nhwc=False
):
    input = _checks.feature_map(input)
    n, channels, height, width = input.shape
    pooled_h, pooled_w, scale, sampling_ratio, aligned, clockwise = arguments(
        output_size, spatial_scale, sampling_ratio, aligned, clockwise
    )
    dtype = compute_dtype(input.dtype)
    _checks.scale_in_dtype(scale, dtype)
    rois = _checks.rotated_rois_array(boxes, n, dtype)
    _checks.pooled_output_fits(rois.shape[0], channels, pooled_h, pooled_w, dtype.itemsize, output_size)
    _checks.rotated_scaled_boxes(rois, scale, pooled_h, pooled_w, sampling_ratio <= 0)
    frames = Frames(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise)
    out = _layout.empty((rois.shape[0], channels, pooled_h, pooled_w), dtype, nhwc)
    if out.size:
        launch_forward(as_dtype(input, dtype), frames, out)
    return as_dtype(out, input.dtype)


def roi_align_rotated_backward(
    grad_output,
    boxes,
    input_shape,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=True,
    clockwise=False,
    nhwc=False,
):
    grad_output = _checks.grad_output_array(grad_output)
    n, channels, height, width = _checks.input_shape_tuple(input_shape)
    if grad_output.shape[1] != channels:
        raise ValueError(f"grad_output has {grad_output.shape[1]} channels but input_shape has {channels}")
    pooled_h, pooled_w, scale, sampling_ratio, aligned, clockwise = arguments(
        output_size, spatial_scale, sampling_ratio, aligned, clockwise
    )
    if grad_output.shape[2:] != (pooled_h, pooled_w):
        raise ValueError(f"grad_output has bins {grad_output.shape[2:]} but output_size is {(pooled_h, pooled_w)}")
    dtype = compute_dtype(grad_output.dtype)
    _checks.scale_in_dtype(scale, dtype)
    rois = _checks.rotated_rois_array(boxes, n, dtype)
    k = grad_output.shape[0]
    if rois.shape[0] != k:
        raise ValueError(f"boxes hold {rois.shape[0]} RoIs but grad_output has {k}")
    _checks.rotated_scaled_boxes(rois, scale, pooled_h, pooled_w, sampling_ratio <= 0)
    frames = Frames(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise)
    grad_in = _layout.empty((n, channels, height, width), dtype, nhwc)
    launch_backward(as_dtype(grad_output, dtype), frames, grad_in)
    return as_dtype(grad_in, grad_output.dtype)

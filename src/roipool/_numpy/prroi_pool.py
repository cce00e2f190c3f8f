"""NumPy frontend of Precise RoI Pooling: checks, memory layout, and calls into ``cpu/prroi_pool.py``.

Semantics: ``docs/semantics.md`` (prroi_pool). The closed-form taps are
computed once per call and shared by every channel.
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from .._checks import compute_dtype
from ..cpu import prroi_pool as cpu
from ..cpu._tiles import as_dtype
from . import _layout


def prroi_pool(input, boxes, output_size, spatial_scale=1.0, nhwc=False):
    input = _checks.feature_map(input)
    n, channels, height, width = input.shape
    pooled_h, pooled_w, scale = _checks.prroi_arguments(output_size, spatial_scale)
    dtype = compute_dtype(input.dtype)
    rois = _checks.rois_array(boxes, n, dtype)
    _checks.pooled_output_fits(rois.shape[0], channels, pooled_h, pooled_w, dtype.itemsize, output_size)
    taps = cpu.PrRoITaps(rois, scale, pooled_h, pooled_w, height, width)
    out = _layout.empty((rois.shape[0], channels, pooled_h, pooled_w), dtype, nhwc)
    cpu.launch_forward(as_dtype(input, dtype), taps, out)
    return as_dtype(out, input.dtype)


def prroi_pool_backward(grad_output, boxes, input_shape, output_size, spatial_scale=1.0, nhwc=False):
    n, channels, height, width = _checks.input_shape_tuple(input_shape)
    pooled_h, pooled_w, scale = _checks.prroi_arguments(output_size, spatial_scale)
    if not isinstance(grad_output, np.ndarray):
        raise TypeError(f"grad_output must be a NumPy array, got {type(grad_output).__name__}")
    # float64 for a gradient prroi_grad_output will refuse (below, once the boxes give its shape)
    dtype = compute_dtype(grad_output.dtype) if _checks.is_kernel_float(grad_output.dtype) else np.dtype(np.float64)
    rois = _checks.rois_array(boxes, n, dtype)
    k = rois.shape[0]
    _checks.prroi_grad_output(
        grad_output, (k, channels, pooled_h, pooled_w), "these boxes, input_shape and output_size"
    )
    taps = cpu.PrRoITaps(rois, scale, pooled_h, pooled_w, height, width)
    grad_in = _layout.empty((n, channels, height, width), dtype, nhwc)
    cpu.launch_backward(as_dtype(grad_output, dtype), taps, grad_in)
    return as_dtype(grad_in, grad_output.dtype)


def prroi_pool_boxes_backward(grad_output, input, boxes, output_size, spatial_scale=1.0):
    input = _checks.feature_map(input, accepted="a NumPy array")  # tensors get the box gradient from autograd
    n, channels, height, width = input.shape
    pooled_h, pooled_w, scale = _checks.prroi_arguments(output_size, spatial_scale)
    dtype = compute_dtype(input.dtype)
    rois = _checks.rois_array(boxes, n, dtype)
    k = rois.shape[0]
    _checks.prroi_grad_output(grad_output, (k, channels, pooled_h, pooled_w), "these boxes, input and output_size")
    taps = cpu.PrRoITaps(rois, scale, pooled_h, pooled_w, height, width)
    grad = np.empty((k, 4), dtype)
    cpu.launch_boxes_backward(as_dtype(grad_output, dtype), as_dtype(input, dtype), taps, grad)
    grad = grad.astype(input.dtype, copy=False)
    if isinstance(boxes, (list, tuple)):
        return [part.copy() for part in _layout.per_image(boxes, grad)]
    return np.concatenate([np.zeros((k, 1), grad.dtype), grad], axis=1)

"""NumPy frontend of RoIAlign: checks, memory layout, and calls into ``cpu/roi_align.py``.

Semantics: ``docs/semantics.md`` (roi_align) (torchvision's ``roi_align``,
sample for sample). The taps are computed once per call and shared by every
channel.
"""

from __future__ import annotations

from .. import _checks
from ..cpu import _tiles
from ..cpu import roi_align as cpu
from ..cpu._tiles import as_dtype
from . import _layout


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, nhwc=False):
    input = _checks.feature_map(input)
    n, channels, height, width = input.shape
    pooled_h, pooled_w, scale, sampling_ratio, aligned = _checks.roi_align_arguments(
        output_size, spatial_scale, sampling_ratio, aligned
    )
    dtype = _checks.compute_dtype(input.dtype)
    rois = _checks.rois_array(boxes, n, dtype)
    _checks.pooled_output_fits(rois.shape[0], channels, pooled_h, pooled_w, dtype.itemsize, output_size)
    taps = cpu.RoIAlignTaps(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, height, width)
    shape = (rois.shape[0], channels, pooled_h, pooled_w)
    bits = _tiles.reads_half(input.dtype)  # a float16 map is read, and its output written, in 16 bits
    if bits is not None:
        out = _layout.empty(shape, bits, nhwc)
        if out.size:
            cpu.launch_forward(input.view(bits), taps, out)
        return out.view(input.dtype)
    out = _layout.empty(shape, dtype, nhwc)
    if out.size:
        cpu.launch_forward(as_dtype(input, dtype), taps, out)
    return as_dtype(out, input.dtype)


def roi_align_backward(
    grad_output, boxes, input_shape, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, nhwc=False
):
    grad_output = _checks.grad_output_array(grad_output)
    n, channels, height, width = _checks.input_shape_tuple(input_shape)
    if grad_output.shape[1] != channels:
        raise ValueError(f"grad_output has {grad_output.shape[1]} channels but input_shape has {channels}")
    pooled_h, pooled_w, scale, sampling_ratio, aligned = _checks.roi_align_arguments(
        output_size, spatial_scale, sampling_ratio, aligned
    )
    if grad_output.shape[2:] != (pooled_h, pooled_w):
        raise ValueError(f"grad_output has bins {grad_output.shape[2:]} but output_size is {(pooled_h, pooled_w)}")
    dtype = _checks.compute_dtype(grad_output.dtype)
    rois = _checks.rois_array(boxes, n, dtype)
    k = grad_output.shape[0]
    if rois.shape[0] != k:
        raise ValueError(f"boxes hold {rois.shape[0]} RoIs but grad_output has {k}")
    taps = cpu.RoIAlignTaps(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, height, width)
    bits = _tiles.reads_half(grad_output.dtype)  # a float16 gradient is read, and grad_in written, in 16 bits
    if bits is not None:
        grad_in = _layout.empty((n, channels, height, width), bits, nhwc)
        cpu.launch_backward(grad_output.view(bits), taps, grad_in)
        return grad_in.view(grad_output.dtype)
    grad_in = _layout.empty((n, channels, height, width), dtype, nhwc)
    cpu.launch_backward(as_dtype(grad_output, dtype), taps, grad_in)
    return as_dtype(grad_in, grad_output.dtype)


def roi_align_boxes_backward(
    grad_output, input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False
):
    input = _checks.feature_map(input)
    n, channels, height, width = input.shape
    grad_output = _checks.grad_output_array(grad_output)
    pooled_h, pooled_w, scale, sampling_ratio, aligned = _checks.roi_align_arguments(
        output_size, spatial_scale, sampling_ratio, aligned
    )
    if grad_output.shape[1] != channels:
        raise ValueError(f"grad_output has {grad_output.shape[1]} channels but input has {channels}")
    if grad_output.shape[2:] != (pooled_h, pooled_w):
        raise ValueError(f"grad_output has bins {grad_output.shape[2:]} but output_size is {(pooled_h, pooled_w)}")
    dtype = _checks.compute_dtype(input.dtype)
    rois = _checks.rois_array(boxes, n, dtype)
    k = grad_output.shape[0]
    if rois.shape[0] != k:
        raise ValueError(f"boxes hold {rois.shape[0]} RoIs but grad_output has {k}")
    taps = cpu.RoIAlignTaps(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, height, width)
    grad = cpu.launch_boxes_backward(
        as_dtype(input, dtype),
        as_dtype(grad_output, dtype),
        rois,
        taps,
        scale,
        sampling_ratio,
        aligned,
    ).astype(input.dtype)
    if isinstance(boxes, (list, tuple)):
        # the same format as ``boxes``: per image, the (L_i, 4) coordinates' gradient
        return _layout.per_image(boxes, grad[:, 1:])
    return grad

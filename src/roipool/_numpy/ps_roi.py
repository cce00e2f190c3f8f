"""NumPy frontend of ps_roi_pool and ps_roi_align: checks, then ``cpu/ps_roi.py``.

The geometry (``cpu/ps_geometry.py``) turns every RoI into separable per-axis
taps; the kernels apply them to a bin-major channels-last copy of the feature
map. float16 is computed in float32 and rounded once at the end.
"""

from __future__ import annotations

from .. import _checks
from ..cpu import ps_roi as cpu
from ..cpu._tiles import as_dtype
from ..cpu.ps_roi import PSRoITaps
from . import _layout


def _checked_input(input, boxes, output_size, spatial_scale):
    """``(input, rois, output_size, spatial_scale)`` checked; ``rois`` in the compute dtype."""
    input = _checks.feature_map(input)
    output_size = _checks.output_size_pair(output_size)
    spatial_scale = _checks.positive_scale(spatial_scale)
    channels_out = _checks.ps_channels(input.shape[1], output_size)
    dtype = _checks.compute_dtype(input.dtype)
    rois = _checks.rois_array(boxes, input.shape[0], dtype)
    _checks.pooled_output_fits(rois.shape[0], channels_out, *output_size, dtype.itemsize, output_size)
    return input, rois, output_size, spatial_scale


def _checked_grad(grad_output, boxes, input_shape, output_size, spatial_scale):
    """``(grad_output, rois, input_shape, output_size, spatial_scale)`` checked; ``rois`` in the compute dtype."""
    grad_output = _checks.grad_output_array(grad_output)
    output_size = _checks.output_size_pair(output_size)
    spatial_scale = _checks.positive_scale(spatial_scale)
    shape = _checks.input_shape_tuple(input_shape)
    channels_out = _checks.ps_channels(shape[1], output_size)
    rois = _checks.rois_array(boxes, shape[0], _checks.compute_dtype(grad_output.dtype))
    _checks.grad_output_shape(
        grad_output.shape,
        (rois.shape[0], channels_out, *output_size),
        f"{rois.shape[0]} boxes, input_shape={shape} and output_size={output_size} "
        "(K, C / (pooled_h * pooled_w), pooled_h, pooled_w)",
    )
    return grad_output, rois, shape, output_size, spatial_scale


def _forward(input, taps):
    """The forward into a new array (``_layout.empty``: a lent buffer where a caller lends one),
    in the input's dtype."""
    channels_out = input.shape[1] // (taps.pooled_h * taps.pooled_w)
    out = _layout.empty((taps.num_rois, channels_out, taps.pooled_h, taps.pooled_w), taps.dtype, False)
    return as_dtype(cpu.launch_forward(input, taps, out), input.dtype)


def ps_roi_pool(input, boxes, output_size, spatial_scale=1.0):
    input, rois, output_size, scale = _checked_input(input, boxes, output_size, spatial_scale)
    return _forward(input, PSRoITaps.pool(rois, output_size, scale, *input.shape[2:]))


def ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1):
    sampling_ratio = _checks.sampling_ratio_int(sampling_ratio)
    input, rois, output_size, scale = _checked_input(input, boxes, output_size, spatial_scale)
    return _forward(input, PSRoITaps.align(rois, output_size, scale, sampling_ratio, *input.shape[2:]))


def ps_roi_pool_backward(grad_output, boxes, input_shape, output_size, spatial_scale=1.0):
    grad_output, rois, shape, output_size, scale = _checked_grad(
        grad_output, boxes, input_shape, output_size, spatial_scale
    )
    taps = PSRoITaps.pool(rois, output_size, scale, *shape[2:])
    return as_dtype(cpu.launch_backward(grad_output, taps, shape), grad_output.dtype)


def ps_roi_align_backward(grad_output, boxes, input_shape, output_size, spatial_scale=1.0, sampling_ratio=-1):
    sampling_ratio = _checks.sampling_ratio_int(sampling_ratio)
    grad_output, rois, shape, output_size, scale = _checked_grad(
        grad_output, boxes, input_shape, output_size, spatial_scale
    )
    taps = PSRoITaps.align(rois, output_size, scale, sampling_ratio, *shape[2:])
    return as_dtype(cpu.launch_backward(grad_output, taps, shape), grad_output.dtype)


def ps_roi_align_boxes_backward(grad_output, input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1):
    sampling_ratio = _checks.sampling_ratio_int(sampling_ratio)
    input, rois, output_size, scale = _checked_input(input, boxes, output_size, spatial_scale)
    grad_output = _checks.grad_output_array(grad_output)
    channels_out = input.shape[1] // (output_size[0] * output_size[1])
    _checks.grad_output_shape(
        grad_output.shape,
        (rois.shape[0], channels_out, *output_size),
        f"{rois.shape[0]} boxes, input of shape {input.shape} and output_size={output_size} "
        "(K, C / (pooled_h * pooled_w), pooled_h, pooled_w)",
    )
    dtype = rois.dtype
    grad = cpu.launch_align_boxes_backward(
        as_dtype(input, dtype), as_dtype(grad_output, dtype), rois, output_size, scale, sampling_ratio
    ).astype(input.dtype)
    if isinstance(boxes, (list, tuple)):
        # the format of ``boxes``: per image, the (L_i, 4) coordinates' gradient
        return _layout.per_image(boxes, grad[:, 1:])
    return grad

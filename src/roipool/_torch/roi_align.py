"""RoIAlign on torch tensors: custom ops, fake kernels, autograd and the public function.

Ops: ``roipool::roi_align`` (training and inference: the backward needs only
the boxes), ``roipool::roi_align_backward`` (differentiable again: its
adjoint is the forward) and ``roipool::roi_align_boxes_backward`` (the
gradient with respect to the rois, run only when they require one; not
differentiable again). The CPU kernels are ``cpu/roi_align.py``'s; CUDA
kernels come from ``roipool.triton``; the ONNX exporters are in
``_torch/onnx.py``.
"""

from __future__ import annotations

import torch

from .. import _checks
from ..cpu import roi_align as cpu
from . import onnx
from ._library import (
    INFERENCE,
    TRAINING,
    Training,
    adjoint_grads,
    bits_of,
    boxes_to_rois,
    call_backward,
    channels_last,
    check_input,
    check_output_fits,
    compute_dtype,
    cpu_array,
    cpu_geometry,
    define,
    eager_route,
    fake_output,
    half_bits,
    new_cpu_output,
    of_dtype,
    quiet_when_tracing,
    save_for_adjoint,
    train_eagerly,
)

_ROI_ALIGN_PARAMS = "float spatial_scale, int pooled_height, int pooled_width, int sampling_ratio, bool aligned"


def _taps(rois, num_images, dtype, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, height, width):
    """``(rois_np, RoIAlignTaps)`` of one CPU call, shared by the forward and backward of a step (``cpu_geometry``)."""
    params = (float(spatial_scale), pooled_height, pooled_width, sampling_ratio, aligned, height, width)
    return cpu_geometry(cpu.RoIAlignTaps, rois, num_images, dtype, *params)


def _roi_align_cpu(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    n, channels, height, width = input.shape
    dtype = compute_dtype(input.dtype)
    rois_np, taps = _taps(
        rois, n, dtype, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, height, width
    )
    shape = (rois_np.shape[0], channels, pooled_height, pooled_width)
    bits = half_bits(input)  # a 16-bit map, read and written in 16 bits
    if bits is not None:
        out = new_cpu_output(shape, input.dtype, channels_last(input))
        cpu.launch_forward(bits, taps, bits_of(out, bits.dtype))
        return out
    x = cpu_array(input, dtype)  # no copy in the compute dtype; the kernel reads any strides
    out = new_cpu_output(shape, dtype, channels_last(input))
    cpu.launch_forward(x, taps, out.numpy())
    return of_dtype(out, input.dtype)


def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    return fake_output(input, (rois.shape[0], input.shape[1], pooled_height, pooled_width), channels_last(input))


def _roi_align_backward_cpu(
    grad,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    height,
    width,
    sampling_ratio,
    aligned,
    channels_last=False,
):
    dtype = compute_dtype(grad.dtype)
    _, taps = _taps(
        rois, batch_size, dtype, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, height, width
    )
    shape = (batch_size, channels, height, width)
    bits = half_bits(grad)  # a 16-bit gradient, read and written in 16 bits
    if bits is not None:
        grad_in = new_cpu_output(shape, grad.dtype, channels_last)
        cpu.launch_backward(bits, taps, bits_of(grad_in, bits.dtype))
        return grad_in
    grad_out = cpu_array(grad, dtype)  # read in place when contiguous or channels-last
    grad_in = new_cpu_output(shape, dtype, channels_last)
    cpu.launch_backward(grad_out, taps, grad_in.numpy())
    return of_dtype(grad_in, grad.dtype)


def _roi_align_backward_fake(
    grad,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    height,
    width,
    sampling_ratio,
    aligned,
    channels_last=False,
):
    return fake_output(grad, (batch_size, channels, height, width), channels_last)


# One op serves training and inference: the backward needs only the boxes and
# the input's shape, so the forward keeps no extra state.
roi_align_op = define(
    "roi_align", f"(Tensor input, Tensor rois, {_ROI_ALIGN_PARAMS}) -> Tensor", cpu=_roi_align_cpu, fake=_roi_align_fake
)
roi_align_backward_op = define(
    "roi_align_backward",
    "(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
    "int batch_size, int channels, int height, int width, int sampling_ratio, bool aligned, "
    "bool channels_last=False) -> Tensor",
    cpu=_roi_align_backward_cpu,
    fake=_roi_align_backward_fake,
)


def _roi_align_boxes_backward_cpu(
    grad, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
):
    n, _, height, width = input.shape
    dtype = compute_dtype(input.dtype)
    rois_np, taps = _taps(
        rois, n, dtype, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, height, width
    )
    x = cpu_array(input, dtype)
    grad_out = cpu_array(grad, dtype)
    grad_rois = cpu.launch_boxes_backward(x, grad_out, rois_np, taps, float(spatial_scale), sampling_ratio, aligned)
    return of_dtype(torch.from_numpy(grad_rois), rois.dtype)


def _roi_align_boxes_backward_fake(
    grad, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
):
    return rois.new_empty(rois.shape)


roi_align_boxes_backward_op = define(
    "roi_align_boxes_backward",
    f"(Tensor grad, Tensor input, Tensor rois, {_ROI_ALIGN_PARAMS}) -> Tensor",
    cpu=_roi_align_boxes_backward_cpu,
    fake=_roi_align_boxes_backward_fake,
)


def _roi_align_setup(ctx, inputs, output):
    input, rois, *ctx.params = inputs
    # The input is kept only when the boxes' gradient is wanted (it reads the map).
    ctx.boxes_grad = ctx.needs_input_grad[1]
    ctx.save_for_backward(rois, input if ctx.boxes_grad else None)
    ctx.input_shape = tuple(input.shape)
    ctx.channels_last = channels_last(input)


def _roi_align_grad(ctx, grad_output):
    rois, input = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.params
    grad_input = grad_rois = None
    if ctx.needs_input_grad[0]:
        grad_input = call_backward(
            ctx,
            torch.ops.roipool.roi_align_backward,
            _roi_align_backward_cpu,
            grad_output,
            rois,
            spatial_scale,
            pooled_height,
            pooled_width,
            *ctx.input_shape,
            sampling_ratio,
            aligned,
            ctx.channels_last,
        )
    if ctx.boxes_grad:
        grad_rois = call_backward(
            ctx,
            torch.ops.roipool.roi_align_boxes_backward,
            _roi_align_boxes_backward_cpu,
            grad_output,
            input,
            rois,
            *ctx.params,
        )
    return grad_input, grad_rois, None, None, None, None, None


def _roi_align_backward_setup(ctx, inputs, output):
    grad, rois, spatial_scale, pooled_height, pooled_width, *_, sampling_ratio, aligned, _ = inputs
    save_for_adjoint(ctx, grad, rois, (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned))


def _roi_align_backward_grad(ctx, grad_grad_input):
    # linear in grad, the forward its adjoint: double backward (a gradient penalty) is one forward,
    # and into the boxes the forward's box gradient (adjoint_grads)
    grads = adjoint_grads(ctx, grad_grad_input, torch.ops.roipool.roi_align, torch.ops.roipool.roi_align_boxes_backward)
    return grads + (None,) * 10


def _roi_align_boxes_backward_setup(ctx, inputs, output):
    pass


def _roi_align_boxes_backward_grad(ctx, grad_grad_rois):
    raise RuntimeError(
        "roi_align: the gradient with respect to the boxes cannot be differentiated again "
        "(double backward through the boxes is not supported; the input's gradient can be)"
    )


roi_align_op.register_autograd(_roi_align_grad, setup_context=_roi_align_setup)
roi_align_backward_op.register_autograd(_roi_align_backward_grad, setup_context=_roi_align_backward_setup)
roi_align_boxes_backward_op.register_autograd(
    _roi_align_boxes_backward_grad, setup_context=_roi_align_boxes_backward_setup
)


# A CPU training call without the custom ops' dispatch (``train_eagerly``), the boxes' gradient included
_TRAINING = Training(_roi_align_cpu, _roi_align_setup, _roi_align_grad)


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """Tensor RoIAlign; see :func:`roipool.roi_align`.

    Args:
        input (Tensor[N, C, H, W]): float16, bfloat16, float32 or float64; any
            strides (channels-last is read in place).
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): on ``input``'s device.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.
        sampling_ratio (int): samples per bin side; ``<= 0`` is adaptive.
        aligned (bool): half-cell pixel model (``True``) or the legacy rule.

    Returns:
        Tensor[K, C, pooled_h, pooled_w] of ``input``'s dtype, differentiable
        with respect to ``input`` (twice: the backward is differentiable too)
        and, once, with respect to the box coordinates (``boxes`` that require
        a gradient, a tensor or a list; the batch index gets 0). The boxes'
        gradient is computed only when asked for; its rules (clamped samples,
        the adaptive grid held fixed) are in ``docs/semantics.md``.
    """
    with quiet_when_tracing():
        check_input(input)
        pooled_h, pooled_w, scale, ratio, aligned = _checks.roi_align_arguments(
            output_size, spatial_scale, sampling_ratio, aligned
        )
        rois = boxes_to_rois(boxes, input)
        check_output_fits(input, rois, input.shape[1], (pooled_h, pooled_w), output_size)
    route = eager_route(input, rois)
    if route is INFERENCE:
        return _roi_align_cpu(input, rois, scale, pooled_h, pooled_w, ratio, aligned)
    if route is TRAINING:
        return train_eagerly(_TRAINING, input, rois, scale, pooled_h, pooled_w, ratio, aligned)
    if onnx.dynamo_onnx_export():
        return onnx.roi_align_node(input, rois, scale, pooled_h, pooled_w, ratio, aligned)
    return torch.ops.roipool.roi_align(input, rois, scale, pooled_h, pooled_w, ratio, aligned)

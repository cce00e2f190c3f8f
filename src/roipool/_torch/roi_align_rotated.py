"""Rotated RoIAlign on torch tensors: custom ops, fake kernels, autograd (input and boxes).

Three custom ops (``define`` in ``_library``):

- ``roipool::roi_align_rotated``: the forward, for training and inference
  alike (the op is linear in ``input``; its backward needs only the boxes,
  and the box gradient the input, both kept by reference at no cost);
- ``roipool::roi_align_rotated_backward``: the gradient with respect to ``input``;
- ``roipool::roi_align_rotated_box_backward``: the gradient with respect to
  ``rois`` (``(K, 6)``; column 0, the batch index, gets 0), run only when the
  boxes require a gradient.

The CPU kernels and launchers are ``cpu/roi_align_rotated.py`` (shared with the NumPy path);
the box values are checked there (``_checks.rotated_rois_array``), so eager,
compiled and exported calls raise the same errors.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _checks
from ..cpu import roi_align_rotated as kernels
from ..cpu._tiles import channels_last_copy
from ._library import (
    INFERENCE,
    TRAINING,
    Training,
    adjoint_grads,
    boxes_to_rois,
    call_backward,
    channels_last,
    check_feature_map,
    check_output_fits,
    compute_dtype,
    cpu_array,
    cpu_rois,
    define,
    eager_route,
    fake_output,
    new_cpu_output,
    numpy_dtype,
    of_dtype,
    quiet_when_tracing,
    save_for_adjoint,
    train_eagerly,
)

_ARGS = "float spatial_scale, int pooled_height, int pooled_width, int sampling_ratio, bool aligned, bool clockwise"
_SHAPE = "int batch_size, int channels, int height, int width"


def _frames(rois, num_images, dtype, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, clockwise):
    _checks.scale_in_dtype(spatial_scale, numpy_dtype(dtype))
    rois_np = cpu_rois(rois, num_images, dtype, rotated=True)
    _checks.rotated_scaled_boxes(rois_np, spatial_scale, pooled_height, pooled_width, sampling_ratio <= 0)
    return kernels.Frames(rois_np, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, clockwise)


def _forward_cpu(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, clockwise):
    dtype = compute_dtype(input.dtype)
    n, channels = input.shape[:2]
    frames = _frames(rois, n, dtype, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, clockwise)
    out = new_cpu_output((frames.num_rois, channels, pooled_height, pooled_width), dtype, channels_last(input))
    if out.numel():
        kernels.launch_forward(cpu_array(input, dtype), frames, out.numpy())
    return of_dtype(out, input.dtype)


def _forward_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, clockwise):
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    return fake_output(input, shape, channels_last(input))


def _grad_out(grad, frames, channels):
    """``grad (K, C, PH, PW)`` checked, as NumPy in the compute dtype (any strides: the launchers take them)."""
    expected = (frames.num_rois, channels, frames.pooled_h, frames.pooled_w)
    if tuple(grad.shape) != expected:
        raise ValueError(f"grad must have shape {expected} for these rois, got {tuple(grad.shape)}")
    return cpu_array(grad, compute_dtype(grad.dtype))


def _backward_cpu(
    grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, clockwise,
    batch_size, channels, height, width, channels_last=False,
):  # fmt: skip
    dtype = compute_dtype(grad.dtype)
    frames = _frames(
        rois, batch_size, dtype, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, clockwise
    )
    grad_out = _grad_out(grad, frames, channels)
    grad_in = new_cpu_output((batch_size, channels, height, width), dtype, channels_last)
    kernels.launch_backward(grad_out, frames, grad_in.numpy())
    return of_dtype(grad_in, grad.dtype)


def _backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, clockwise,
    batch_size, channels, height, width, channels_last=False,
):  # fmt: skip
    return fake_output(grad, (batch_size, channels, height, width), channels_last)


def _box_backward_cpu(
    grad, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, clockwise
):
    dtype = compute_dtype(input.dtype)
    n, channels = input.shape[:2]
    frames = _frames(rois, n, dtype, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, clockwise)
    grad_out = _grad_out(of_dtype(grad, dtype), frames, channels)
    x_nhwc = channels_last_copy(cpu_array(input, dtype))
    grad_boxes = np.zeros((frames.num_rois, 6), numpy_dtype(dtype))
    kernels.launch_box_backward(x_nhwc, grad_out, frames, grad_boxes[:, 1:])
    return of_dtype(torch.from_numpy(grad_boxes), rois.dtype)


def _box_backward_fake(grad, input, rois, *args):
    return rois.new_empty(rois.shape)


roi_align_rotated_op = define(
    "roi_align_rotated", f"(Tensor input, Tensor rois, {_ARGS}) -> Tensor", cpu=_forward_cpu, fake=_forward_fake
)
roi_align_rotated_backward_op = define(
    "roi_align_rotated_backward",
    f"(Tensor grad, Tensor rois, {_ARGS}, {_SHAPE}, bool channels_last=False) -> Tensor",
    cpu=_backward_cpu,
    fake=_backward_fake,
)
roi_align_rotated_box_backward_op = define(
    "roi_align_rotated_box_backward",
    f"(Tensor grad, Tensor input, Tensor rois, {_ARGS}) -> Tensor",
    cpu=_box_backward_cpu,
    fake=_box_backward_fake,
)


def _setup(ctx, inputs, output):
    input, rois, *ctx.params = inputs
    ctx.input_shape = tuple(input.shape)
    ctx.channels_last = channels_last(input)
    # references only: the box gradient reads the input, the input gradient only the boxes
    ctx.save_for_backward(input, rois)


def _grad(ctx, grad_output):
    input, rois = ctx.saved_tensors
    grad_input = grad_rois = None
    if ctx.needs_input_grad[0]:
        grad_input = call_backward(
            ctx,
            torch.ops.roipool.roi_align_rotated_backward,
            _backward_cpu,
            grad_output,
            rois,
            *ctx.params,
            *ctx.input_shape,
            ctx.channels_last,
        )
    if ctx.needs_input_grad[1]:
        grad_rois = call_backward(
            ctx,
            torch.ops.roipool.roi_align_rotated_box_backward,
            _box_backward_cpu,
            grad_output,
            input,
            rois,
            *ctx.params,
        )
    return grad_input, grad_rois, None, None, None, None, None, None


roi_align_rotated_op.register_autograd(_grad, setup_context=_setup)
_TRAINING = Training(_forward_cpu, _setup, _grad)  # without the ops' dispatch (train_eagerly)


def _backward_setup(ctx, inputs, output):
    grad, rois, *params = inputs
    save_for_adjoint(ctx, grad, rois, params[:6])


def _backward_grad(ctx, grad_grad_input):
    # linear in grad, the forward its adjoint: the forward at grad_grad_input, and into the
    # boxes the forward's box gradient (adjoint_grads)
    grads = adjoint_grads(
        ctx, grad_grad_input, torch.ops.roipool.roi_align_rotated, torch.ops.roipool.roi_align_rotated_box_backward
    )
    return grads + (None,) * 11


roi_align_rotated_backward_op.register_autograd(_backward_grad, setup_context=_backward_setup)


def roi_align_rotated(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True, clockwise=False):
    """Tensor rotated RoIAlign; see :func:`roipool.roi_align_rotated`.

    Args:
        input (Tensor[N, C, H, W]): float16, bfloat16, float32 or float64, any strides.
        boxes (Tensor[K, 6] or List[Tensor[L, 5]]): ``[batch_index, cx, cy, w, h, angle]``
            (radians) on ``input``'s device.
        output_size, spatial_scale, sampling_ratio, aligned, clockwise: as in :func:`roipool.roi_align_rotated`.

    Returns:
        Tensor[K, C, pooled_h, pooled_w] of ``input``'s dtype, differentiable with
        respect to ``input`` and to floating ``boxes`` (``cx, cy, w, h, angle``;
        the batch index gets 0). The box gradient treats the adaptive grid size
        as constant (see ``docs/semantics.md``).
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a NumPy array or a torch tensor, got {type(input).__name__}")
    with quiet_when_tracing():
        check_feature_map(input)
        pooled_h, pooled_w = _checks.output_size_pair(output_size)
        scale = _checks.positive_scale(spatial_scale)
        sampling_ratio = _checks.sampling_ratio_int(sampling_ratio, limit=_checks.MAX_ROTATED_SAMPLING_RATIO)
        aligned = _checks.flag(aligned, "aligned")
        clockwise = _checks.flag(clockwise, "clockwise")
        rois = boxes_to_rois(boxes, input, rotated=True)
        check_output_fits(input, rois, input.shape[1], (pooled_h, pooled_w), output_size)
    route = eager_route(input, rois)
    if route is INFERENCE:
        return _forward_cpu(input, rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise)
    if route is TRAINING:
        return train_eagerly(_TRAINING, input, rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise)
    return torch.ops.roipool.roi_align_rotated(
        input, rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise
    )

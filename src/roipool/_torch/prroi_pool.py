"""Precise RoI Pooling on torch tensors: custom ops, fake kernels, autograd for the input and the boxes.

Three custom ops (CPU kernels from ``cpu/prroi_pool.py``; CUDA kernels from
``triton/prroi_pool.py``, registered by ``roipool.triton``):

- ``roipool::prroi_pool(input, rois, ...)``: the forward; it keeps no state,
  so training and inference share it;
- ``roipool::prroi_pool_backward(grad, rois, ...)``: the gradient with respect to ``input``;
- ``roipool::prroi_pool_boxes_backward(grad, input, rois, ...)``: the gradient
  with respect to ``rois`` ``(K, 5)`` (column 0, the batch index, gets 0).

Autograd computes each gradient only when it is wanted, so an inference-time
box refinement (boxes require grad, the features do not) runs the box
backward alone. Boxes given as a list of per-image tensors are joined by
``torch.cat`` (differentiable), so each list element gets its gradient.
Semantics: ``docs/semantics.md`` (prroi_pool).
"""

from __future__ import annotations

import torch

from .. import _checks
from ..cpu import prroi_pool as cpu
from ._library import (
    INFERENCE,
    TRAINING,
    Training,
    boxes_to_rois,
    call_backward,
    channels_last,
    check_input,
    check_output_fits,
    compute_dtype,
    cpu_array,
    cpu_rois,
    define,
    eager_route,
    fake_output,
    new_cpu_output,
    new_cpu_tensor,
    of_dtype,
    quiet_when_tracing,
    train_eagerly,
)

_PARAMS = "float spatial_scale, int pooled_height, int pooled_width"


def _taps(rois, num_images, dtype, spatial_scale, pooled_height, pooled_width, height, width):
    rois_np = cpu_rois(rois, num_images, dtype)
    return rois_np, cpu.PrRoITaps(rois_np, spatial_scale, pooled_height, pooled_width, height, width)


def _prroi_pool_cpu(input, rois, spatial_scale, pooled_height, pooled_width):
    n, channels, height, width = input.shape
    dtype = compute_dtype(input.dtype)
    x = cpu_array(input, dtype)  # no copy in the compute dtype; the launcher reads any strides
    rois_np, taps = _taps(rois, n, dtype, spatial_scale, pooled_height, pooled_width, height, width)
    out = new_cpu_output((rois_np.shape[0], channels, pooled_height, pooled_width), dtype, channels_last(input))
    cpu.launch_forward(x, taps, out.numpy())
    return of_dtype(out, input.dtype)


def _prroi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    return fake_output(input, (rois.shape[0], input.shape[1], pooled_height, pooled_width), channels_last(input))


def _prroi_pool_backward_cpu(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, channels_last=False
):
    dtype = compute_dtype(grad.dtype)
    grad_out = cpu_array(grad, dtype)  # read in place when contiguous or channels-last
    _, taps = _taps(rois, batch_size, dtype, spatial_scale, pooled_height, pooled_width, height, width)
    grad_in = new_cpu_output((batch_size, channels, height, width), dtype, channels_last)
    cpu.launch_backward(grad_out, taps, grad_in.numpy())
    return of_dtype(grad_in, grad.dtype)


def _prroi_pool_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, channels_last=False
):
    return fake_output(grad, (batch_size, channels, height, width), channels_last)


def _prroi_pool_boxes_backward_cpu(grad, input, rois, spatial_scale, pooled_height, pooled_width):
    n, channels, height, width = input.shape
    dtype = compute_dtype(input.dtype)
    k = grad.shape[0]
    grad_out = cpu_array(grad, dtype)
    x = cpu_array(input, dtype)
    _, taps = _taps(rois, n, dtype, spatial_scale, pooled_height, pooled_width, height, width)
    grad_boxes = new_cpu_tensor((k, 5), dtype, zeros=True)
    corners = grad_boxes.numpy()[:, 1:]
    result = new_cpu_tensor((k, 4), dtype)
    cpu.launch_boxes_backward(grad_out, x, taps, result.numpy())
    corners[...] = result.numpy()
    return grad_boxes.to(_box_grad_dtype(rois, input))


def _box_grad_dtype(rois, input):
    return rois.dtype if rois.dtype.is_floating_point else input.dtype


def _prroi_pool_boxes_backward_fake(grad, input, rois, spatial_scale, pooled_height, pooled_width):
    return rois.new_empty((rois.shape[0], 5), dtype=_box_grad_dtype(rois, input))


prroi_pool_op = define(
    "prroi_pool", f"(Tensor input, Tensor rois, {_PARAMS}) -> Tensor", cpu=_prroi_pool_cpu, fake=_prroi_pool_fake
)
prroi_pool_backward_op = define(
    "prroi_pool_backward",
    f"(Tensor grad, Tensor rois, {_PARAMS}, int batch_size, int channels, int height, int width, "
    "bool channels_last=False) -> Tensor",
    cpu=_prroi_pool_backward_cpu,
    fake=_prroi_pool_backward_fake,
)
prroi_pool_boxes_backward_op = define(
    "prroi_pool_boxes_backward",
    f"(Tensor grad, Tensor input, Tensor rois, {_PARAMS}) -> Tensor",
    cpu=_prroi_pool_boxes_backward_cpu,
    fake=_prroi_pool_boxes_backward_fake,
)


def _setup(ctx, inputs, output):
    input, rois, *ctx.params = inputs
    ctx.input_shape = tuple(input.shape)
    ctx.channels_last = channels_last(input)
    ctx.save_for_backward(input, rois)  # the input: for the box gradient


def _grad(ctx, grad_output):
    input, rois = ctx.saved_tensors
    grad_input = grad_rois = None
    if ctx.needs_input_grad[0]:
        grad_input = call_backward(
            ctx,
            torch.ops.roipool.prroi_pool_backward,
            _prroi_pool_backward_cpu,
            grad_output,
            rois,
            *ctx.params,
            *ctx.input_shape,
            ctx.channels_last,
        )
    if ctx.needs_input_grad[1]:
        grad_rois = call_backward(
            ctx,
            torch.ops.roipool.prroi_pool_boxes_backward,
            _prroi_pool_boxes_backward_cpu,
            grad_output,
            input,
            rois,
            *ctx.params,
        )
    return grad_input, grad_rois, None, None, None


def _backward_setup(ctx, inputs, output):
    _, rois, *params = inputs
    ctx.params = tuple(params[:3])
    ctx.save_for_backward(rois)


def _backward_grad(ctx, grad_grad_input):
    # The input gradient is linear in ``grad`` with the forward as its adjoint,
    # so double backward through it (gradient penalties) costs one forward.
    if ctx.needs_input_grad[1]:
        raise NotImplementedError("prroi_pool: second derivatives with respect to the boxes are not implemented")
    (rois,) = ctx.saved_tensors
    return (torch.ops.roipool.prroi_pool(grad_grad_input, rois, *ctx.params),) + (None,) * 9


prroi_pool_op.register_autograd(_grad, setup_context=_setup)
prroi_pool_backward_op.register_autograd(_backward_grad, setup_context=_backward_setup)
_TRAINING = Training(_prroi_pool_cpu, _setup, _grad)  # without the ops' dispatch (train_eagerly)


def prroi_pool(input, boxes, output_size, spatial_scale=1.0):
    """Tensor Precise RoI Pooling; see :func:`roipool.prroi_pool`.

    Args:
        input (Tensor[N, C, H, W]): float16, bfloat16, float32 or float64; any strides.
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): on ``input``'s device; a
            floating tensor (or list of them) that requires grad gets the box gradient.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.

    Returns:
        Tensor[K, C, pooled_h, pooled_w] of ``input``'s dtype, differentiable
        with respect to ``input`` and ``boxes``; the input gradient is itself
        differentiable with respect to the output gradient (double backward).
    """
    with quiet_when_tracing():
        check_input(input)
        pooled_h, pooled_w, scale = _checks.prroi_arguments(output_size, spatial_scale)
        rois = boxes_to_rois(boxes, input)
        check_output_fits(input, rois, input.shape[1], (pooled_h, pooled_w), output_size)
    route = eager_route(input, rois)
    if route is INFERENCE:
        return _prroi_pool_cpu(input, rois, scale, pooled_h, pooled_w)
    if route is TRAINING:
        return train_eagerly(_TRAINING, input, rois, scale, pooled_h, pooled_w)
    return torch.ops.roipool.prroi_pool(input, rois, scale, pooled_h, pooled_w)

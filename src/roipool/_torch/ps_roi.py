"""Position-sensitive RoI pooling on torch tensors (ps_roi_pool, ps_roi_align): custom ops, autograd, public functions.

Both ops are linear in the input, so the input's gradient needs only the
boxes: one forward op per family (no training variant) whose autograd calls
the backward op, and a backward op whose own gradient is the forward again
(double backward). ``ps_roi_align`` is also differentiable in the box
coordinates (``roipool::ps_roi_align_boxes_backward``, run only when the
boxes require a gradient; the map is then kept for it). The CPU kernels are
``cpu/ps_roi.py``'s; CUDA kernels come from ``roipool.triton``. ONNX has no
such op: nothing is exported.
"""

from __future__ import annotations

import torch

from .. import _checks
from ..cpu import ps_roi as cpu
from ..cpu.ps_roi import PSRoITaps
from ._library import (
    INFERENCE,
    TRAINING,
    Training,
    adjoint_grads,
    boxes_to_rois,
    call_backward,
    channels_last,
    check_input,
    check_output_fits,
    compute_dtype,
    cpu_array,
    cpu_geometry,
    cpu_nchw,
    define,
    eager_route,
    fake_output,
    in_format,
    of_dtype,
    quiet_when_tracing,
    save_for_adjoint,
    train_eagerly,
)


def _pool_taps(rois_np, spatial_scale, pooled_height, pooled_width, sampling_ratio, height, width):
    return PSRoITaps.pool(rois_np, (pooled_height, pooled_width), spatial_scale, height, width)


def _align_taps(rois_np, spatial_scale, pooled_height, pooled_width, sampling_ratio, height, width):
    return PSRoITaps.align(rois_np, (pooled_height, pooled_width), spatial_scale, sampling_ratio, height, width)


def _taps(make_taps, rois, num_images, dtype, params, height, width):
    """``(rois_np, PSRoITaps)`` of one CPU call, shared by the forward and backward of a step (``cpu_geometry``)."""
    spatial_scale, pooled_height, pooled_width, sampling_ratio = params
    geometry = (float(spatial_scale), pooled_height, pooled_width, sampling_ratio, height, width)
    return cpu_geometry(make_taps, rois, num_images, compute_dtype(dtype), *geometry)


def _ps_forward_cpu(make_taps, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    n, channels, height, width = input.shape
    _checks.ps_channels(channels, (pooled_height, pooled_width))
    _, taps = _taps(
        make_taps, rois, n, input.dtype, (spatial_scale, pooled_height, pooled_width, sampling_ratio), height, width
    )
    out = of_dtype(torch.from_numpy(cpu.launch_forward(cpu_nchw(input), taps)), input.dtype)
    # The position-sensitive kernels write NCHW (their map copy is bin-major):
    # a channels-last result costs one transposing copy.
    return in_format(out, channels_last(input))


def _ps_backward_cpu(
    make_taps, grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, shape, channels_last
):
    n, channels, height, width = shape
    channels_out = _checks.ps_channels(channels, (pooled_height, pooled_width))
    rois_np, taps = _taps(
        make_taps, rois, n, grad.dtype, (spatial_scale, pooled_height, pooled_width, sampling_ratio), height, width
    )
    expected = (rois_np.shape[0], channels_out, pooled_height, pooled_width)
    _checks.grad_output_shape(grad.shape, expected, f"these rois and input shape {shape}", "grad")
    grad_in = cpu.launch_backward(cpu_nchw(grad), taps, shape)
    return in_format(of_dtype(torch.from_numpy(grad_in), grad.dtype), channels_last)


def _ps_forward_fake(input, rois, spatial_scale, pooled_height, pooled_width, *sampling_ratio):
    channels_out = input.shape[1] // (pooled_height * pooled_width)
    shape = (rois.shape[0], channels_out, pooled_height, pooled_width)
    return fake_output(input, shape, channels_last(input))


def _ps_roi_pool_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, channels_last=False
):
    return fake_output(grad, (batch_size, channels, height, width), channels_last)


def _ps_roi_align_backward_fake(
    grad,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    sampling_ratio,
    batch_size,
    channels,
    height,
    width,
    channels_last=False,
):
    return fake_output(grad, (batch_size, channels, height, width), channels_last)


def _ps_roi_pool_cpu(input, rois, spatial_scale, pooled_height, pooled_width):
    return _ps_forward_cpu(_pool_taps, input, rois, spatial_scale, pooled_height, pooled_width, 0)


def _ps_roi_pool_backward_cpu(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, channels_last=False
):
    shape = (batch_size, channels, height, width)
    return _ps_backward_cpu(_pool_taps, grad, rois, spatial_scale, pooled_height, pooled_width, 0, shape, channels_last)


def _ps_roi_align_cpu(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    return _ps_forward_cpu(_align_taps, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio)


def _ps_roi_align_backward_cpu(
    grad,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    sampling_ratio,
    batch_size,
    channels,
    height,
    width,
    channels_last=False,
):
    shape = (batch_size, channels, height, width)
    return _ps_backward_cpu(
        _align_taps, grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, shape, channels_last
    )


def _ps_roi_align_boxes_backward_cpu(grad, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    n, _, height, width = input.shape
    dtype = compute_dtype(input.dtype)
    params = (spatial_scale, pooled_height, pooled_width, sampling_ratio)
    rois_np, _ = _taps(_align_taps, rois, n, input.dtype, params, height, width)
    grad_rois = cpu.launch_align_boxes_backward(
        cpu_array(input, dtype),
        cpu_array(grad, dtype),
        rois_np,
        (pooled_height, pooled_width),
        float(spatial_scale),
        sampling_ratio,
    )
    return of_dtype(torch.from_numpy(grad_rois), rois.dtype)


def _ps_roi_align_boxes_backward_fake(grad, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    return rois.new_empty(rois.shape)


_PS_ARGS = "Tensor rois, float spatial_scale, int pooled_height, int pooled_width"
_PS_SHAPE = "int batch_size, int channels, int height, int width, bool channels_last=False"

ps_roi_pool_op = define(
    "ps_roi_pool", f"(Tensor input, {_PS_ARGS}) -> Tensor", cpu=_ps_roi_pool_cpu, fake=_ps_forward_fake
)
ps_roi_pool_backward_op = define(
    "ps_roi_pool_backward",
    f"(Tensor grad, {_PS_ARGS}, {_PS_SHAPE}) -> Tensor",
    cpu=_ps_roi_pool_backward_cpu,
    fake=_ps_roi_pool_backward_fake,
)
ps_roi_align_op = define(
    "ps_roi_align",
    f"(Tensor input, {_PS_ARGS}, int sampling_ratio) -> Tensor",
    cpu=_ps_roi_align_cpu,
    fake=_ps_forward_fake,
)
ps_roi_align_backward_op = define(
    "ps_roi_align_backward",
    f"(Tensor grad, {_PS_ARGS}, int sampling_ratio, {_PS_SHAPE}) -> Tensor",
    cpu=_ps_roi_align_backward_cpu,
    fake=_ps_roi_align_backward_fake,
)

ps_roi_align_boxes_backward_op = define(
    "ps_roi_align_boxes_backward",
    f"(Tensor grad, Tensor input, {_PS_ARGS}, int sampling_ratio) -> Tensor",
    cpu=_ps_roi_align_boxes_backward_cpu,
    fake=_ps_roi_align_boxes_backward_fake,
)


def _ps_forward_setup(ctx, inputs, output):
    input, rois, *ctx.params = inputs  # spatial_scale, pooled sizes (, sampling_ratio)
    ctx.save_for_backward(rois)
    ctx.input_layout = (*input.shape, channels_last(input))  # the gradient's shape and memory format


def _ps_align_setup(ctx, inputs, output):
    input, rois, *ctx.params = inputs  # spatial_scale, pooled sizes, sampling_ratio
    # the map is kept only when the boxes' gradient is wanted (it reads the map)
    ctx.boxes_grad = ctx.needs_input_grad[1]
    ctx.save_for_backward(rois, input if ctx.boxes_grad else None)
    ctx.input_layout = (*input.shape, channels_last(input))


def _ps_backward_setup(num_params):
    """The backward op's setup: keeps ``rois`` and the forward's ``num_params`` arguments after them."""

    def setup(ctx, inputs, output):
        _, rois, *params = inputs
        ctx.save_for_backward(rois)
        ctx.params = params[:num_params]
        ctx.num_args = len(inputs)

    return setup


def _ps_roi_pool_grad(ctx, grad_output):
    (rois,) = ctx.saved_tensors
    grad_input = call_backward(
        ctx,
        torch.ops.roipool.ps_roi_pool_backward,
        _ps_roi_pool_backward_cpu,
        grad_output,
        rois,
        *ctx.params,
        *ctx.input_layout,
    )
    return grad_input, None, None, None, None


def _ps_roi_align_grad(ctx, grad_output):
    rois, input = ctx.saved_tensors
    grad_input = grad_rois = None
    if ctx.needs_input_grad[0]:
        grad_input = call_backward(
            ctx,
            torch.ops.roipool.ps_roi_align_backward,
            _ps_roi_align_backward_cpu,
            grad_output,
            rois,
            *ctx.params,
            *ctx.input_layout,
        )
    if ctx.boxes_grad:
        grad_rois = call_backward(
            ctx,
            torch.ops.roipool.ps_roi_align_boxes_backward,
            _ps_roi_align_boxes_backward_cpu,
            grad_output,
            input,
            rois,
            *ctx.params,
        )
    return grad_input, grad_rois, None, None, None, None


def _ps_roi_pool_backward_grad(ctx, grad_grad_input):
    # the backward is linear in grad with the forward as its adjoint
    (rois,) = ctx.saved_tensors
    return (torch.ops.roipool.ps_roi_pool(grad_grad_input, rois, *ctx.params),) + (None,) * (ctx.num_args - 1)


def _ps_roi_align_backward_setup(ctx, inputs, output):
    grad, rois, *params = inputs
    save_for_adjoint(ctx, grad, rois, params[:4])
    ctx.num_args = len(inputs)


def _ps_roi_align_backward_grad(ctx, grad_grad_input):
    # linear in grad, the forward its adjoint: double backward is one forward, and into the
    # boxes the forward's box gradient (adjoint_grads)
    grads = adjoint_grads(
        ctx, grad_grad_input, torch.ops.roipool.ps_roi_align, torch.ops.roipool.ps_roi_align_boxes_backward
    )
    return grads + (None,) * (ctx.num_args - 2)


def _ps_roi_align_boxes_backward_setup(ctx, inputs, output):
    pass


def _ps_roi_align_boxes_backward_grad(ctx, grad_grad_rois):
    raise RuntimeError(
        "ps_roi_align: the gradient with respect to the boxes cannot be differentiated again "
        "(double backward through the boxes is not supported; the input's gradient can be)"
    )


ps_roi_pool_op.register_autograd(_ps_roi_pool_grad, setup_context=_ps_forward_setup)
ps_roi_align_op.register_autograd(_ps_roi_align_grad, setup_context=_ps_align_setup)
ps_roi_pool_backward_op.register_autograd(_ps_roi_pool_backward_grad, setup_context=_ps_backward_setup(3))
ps_roi_align_backward_op.register_autograd(_ps_roi_align_backward_grad, setup_context=_ps_roi_align_backward_setup)
ps_roi_align_boxes_backward_op.register_autograd(
    _ps_roi_align_boxes_backward_grad, setup_context=_ps_roi_align_boxes_backward_setup
)
# without the ops' dispatch (train_eagerly)
_PS_ROI_POOL_TRAINING = Training(_ps_roi_pool_cpu, _ps_forward_setup, _ps_roi_pool_grad)
_PS_ROI_ALIGN_TRAINING = Training(_ps_roi_align_cpu, _ps_align_setup, _ps_roi_align_grad)


def _ps_public(input, boxes, output_size, spatial_scale):
    """Static checks shared by the two public functions; returns ``(rois, scale, pooled_h, pooled_w)``."""
    with quiet_when_tracing():
        check_input(input)
        pooled_h, pooled_w = _checks.output_size_pair(output_size)
        scale = _checks.positive_scale(spatial_scale)
        channels_out = _checks.ps_channels(input.shape[1], (pooled_h, pooled_w))
        rois = boxes_to_rois(boxes, input)
        check_output_fits(input, rois, channels_out, (pooled_h, pooled_w), output_size)
    return rois, scale, pooled_h, pooled_w


def ps_roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """Tensor position-sensitive RoI average pooling; see :func:`roipool.ps_roi_pool`.

    Args:
        input (Tensor[N, C, H, W]): float16, bfloat16, float32 or float64, ``C``
            a multiple of ``pooled_h * pooled_w``; any strides.
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): on ``input``'s device.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.

    Returns:
        Tensor[K, C / (pooled_h * pooled_w), pooled_h, pooled_w] of ``input``'s
        dtype, differentiable with respect to ``input``.
    """
    rois, scale, pooled_h, pooled_w = _ps_public(input, boxes, output_size, spatial_scale)
    route = eager_route(input, rois)
    if route is INFERENCE:
        return _ps_roi_pool_cpu(input, rois, scale, pooled_h, pooled_w)
    if route is TRAINING:
        return train_eagerly(_PS_ROI_POOL_TRAINING, input, rois, scale, pooled_h, pooled_w)
    return torch.ops.roipool.ps_roi_pool(input, rois, scale, pooled_h, pooled_w)


def ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1):
    """Tensor position-sensitive RoIAlign; see :func:`roipool.ps_roi_align`.

    Arguments and result as :func:`ps_roi_pool`, plus ``sampling_ratio``
    (samples per bin side; ``<= 0`` adaptive, at least one); the result is
    also differentiable, once, with respect to the box coordinates (``boxes``
    that require a gradient, a tensor or a list; the batch index gets 0),
    computed only when asked for (``docs/semantics.md``).
    """
    rois, scale, pooled_h, pooled_w = _ps_public(input, boxes, output_size, spatial_scale)
    ratio = _checks.sampling_ratio_int(sampling_ratio)
    route = eager_route(input, rois)
    if route is INFERENCE:
        return _ps_roi_align_cpu(input, rois, scale, pooled_h, pooled_w, ratio)
    if route is TRAINING:
        return train_eagerly(_PS_ROI_ALIGN_TRAINING, input, rois, scale, pooled_h, pooled_w, ratio)
    return torch.ops.roipool.ps_roi_align(input, rois, scale, pooled_h, pooled_w, ratio)

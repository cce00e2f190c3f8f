"""RoI max pooling on torch tensors: custom ops, fake kernels, autograd and the public function.

Ops: ``roipool::roi_pool`` (inference, and CPU training whose backward
re-scans the bins: ``roi_pool_backward_recompute``), ``roi_pool_with_argmax``
(training forward that stores the argmax) and ``roi_pool_backward``. The CPU
kernels are ``cpu/roi_pool.py``'s; CUDA kernels come from ``roipool.triton``;
the ONNX exporters are in ``_torch/onnx.py``.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _checks
from ..cpu import roi_pool as cpu
from ..cpu._machine import avx512, l2_bytes
from . import onnx
from ._library import (
    INFERENCE,
    TRAINING,
    Training,
    bits_of,
    boxes_to_rois,
    call_backward,
    channels_last,
    check_input,
    check_output_fits,
    compute_dtype,
    cpu_array,
    cpu_batch_index,
    cpu_geometry,
    cpu_nhwc,
    define,
    eager_route,
    fake_output,
    half_bits,
    needs_grad,
    new_cpu_output,
    of_dtype,
    quiet_when_tracing,
    train_eagerly,
)

_ROI_POOL_ARGS = "Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width"


class _CpuRoIPool:
    """One CPU call: the bins, and the input as NumPy for the kernels (:meth:`forward_io`, :meth:`scan_map`).

    The validated rois and the bins come from :func:`cpu_geometry`, so the
    forward and backward of a training step compute them once.
    """

    def __init__(self, input, rois, spatial_scale, pooled_height, pooled_width):
        n, self.channels, height, width = input.shape
        self.input = input
        self.input_dtype = input.dtype
        self.dtype = compute_dtype(input.dtype)
        rois_np, self.bins = cpu_geometry(
            cpu.RoIPoolBins, rois, n, self.dtype, float(spatial_scale), pooled_height, pooled_width, height, width
        )
        self.shape = (rois_np.shape[0], self.channels, pooled_height, pooled_width)
        self.channels_last_output = channels_last(input)  # the output follows the input's memory format
        # a 16-bit map is pooled, and its output written, in 16 bits (exact: a maximum is a cell)
        self.bits = half_bits(input)

    def new_output(self, dtype=None) -> torch.Tensor:
        return new_cpu_output(self.shape, dtype or self.dtype, self.channels_last_output)

    def forward_io(self) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
        """``(map, out, out_array)`` of a forward launcher (which reads any strides): the map a
        view of the input (its bits when the kernels read its 16 bits), else of a channels-last
        copy in the compute dtype; the output in the input's dtype then, else in the compute
        dtype, and the NumPy view the kernel writes."""
        if self.bits is not None:
            out = self.new_output(self.input_dtype)
            return self.bits, out, bits_of(out, self.bits.dtype)
        out = self.new_output()
        if self.input.dtype == self.dtype:
            return cpu_array(self.input, self.dtype), out, out.numpy()
        return cpu_nhwc(self.input, self.dtype).transpose(0, 3, 1, 2), out, out.numpy()

    def scan_map(self) -> tuple[np.ndarray, bool]:
        """``(x, channels_last)`` for the re-scanning backward: the input itself when it is
        NCHW-contiguous in the compute dtype, else its ``(N, H, W, C)`` copy (none when it is
        channels-last already)."""
        if self.input.dtype == self.dtype and self.input.is_contiguous():
            return self.input.detach().numpy(), False
        return cpu_nhwc(self.input, self.dtype), True


def _roi_pool_cpu(input, rois, spatial_scale, pooled_height, pooled_width):
    call = _CpuRoIPool(input, rois, spatial_scale, pooled_height, pooled_width)
    x, out, out_np = call.forward_io()
    cpu.launch_forward(x, call.bins, out_np)
    return of_dtype(out, call.input_dtype)


def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    return fake_output(input, (rois.shape[0], input.shape[1], pooled_height, pooled_width), channels_last(input))


def _roi_pool_with_argmax_cpu(input, rois, spatial_scale, pooled_height, pooled_width):
    call = _CpuRoIPool(input, rois, spatial_scale, pooled_height, pooled_width)
    x, out, out_np = call.forward_io()
    argmax = call.new_output(torch.int32)
    cpu.launch_forward_argmax(x, call.bins, out_np, argmax.numpy())
    return of_dtype(out, call.input_dtype), argmax


def _roi_pool_with_argmax_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    cl = channels_last(input)
    return fake_output(input, shape, cl), fake_output(input, shape, cl, dtype=torch.int32)


def _roi_pool_backward_cpu(grad, argmax, rois, batch_size, channels, height, width, channels_last=False):
    argmax_np = cpu_array(argmax, torch.int32)
    if argmax_np.size and cpu.argmax_outside(argmax_np, height * width):
        # an index past the map would be a write out of bounds in the kernel
        raise ValueError(f"argmax holds indices outside [-1, H * W = {height * width})")
    return _scatter_at_argmax(grad, argmax_np, rois, batch_size, channels, height, width, channels_last)


def _own_argmax_backward_cpu(grad, argmax, rois, batch_size, channels, height, width, channels_last=False):
    """:func:`_roi_pool_backward_cpu` for the argmax of its own training call (``train_eagerly``),
    without reading it all to check it (2 to 5 ms a step on the bench's workloads): its forward
    made it, no caller ever holds it, and autograd's version counter would refuse it changed."""
    return _scatter_at_argmax(grad, argmax.detach().numpy(), rois, batch_size, channels, height, width, channels_last)


def _scatter_at_argmax(grad, argmax_np, rois, batch_size, channels, height, width, channels_last):
    dtype = compute_dtype(grad.dtype)
    grad_out = cpu_array(grad, dtype)  # read in place when in the gradient's memory order
    batch = cpu_batch_index(rois, batch_size)
    grad_in = new_cpu_output((batch_size, channels, height, width), dtype, channels_last, zeros=True)
    cpu.launch_backward(grad_out, argmax_np, batch, grad_in.numpy())
    return of_dtype(grad_in, grad.dtype)


def _roi_pool_backward_fake(grad, argmax, rois, batch_size, channels, height, width, channels_last=False):
    return fake_output(grad, (batch_size, channels, height, width), channels_last)


roi_pool_op = define("roi_pool", f"({_ROI_POOL_ARGS}) -> Tensor", cpu=_roi_pool_cpu, fake=_roi_pool_fake)
roi_pool_with_argmax_op = define(
    "roi_pool_with_argmax",
    f"({_ROI_POOL_ARGS}) -> (Tensor, Tensor)",
    cpu=_roi_pool_with_argmax_cpu,
    fake=_roi_pool_with_argmax_fake,
)
roi_pool_backward_op = define(
    "roi_pool_backward",
    "(Tensor grad, Tensor argmax, Tensor rois, int batch_size, int channels, int height, int width, "
    "bool channels_last=False) -> Tensor",
    cpu=_roi_pool_backward_cpu,
    fake=_roi_pool_backward_fake,
)


def _roi_pool_backward_recompute_cpu(grad, input, rois, spatial_scale, pooled_height, pooled_width):
    if grad.dtype != input.dtype:
        raise TypeError(f"grad must have the input's dtype {input.dtype}, got {grad.dtype}")
    call = _CpuRoIPool(input, rois, spatial_scale, pooled_height, pooled_width)
    _checks.grad_output_shape(grad.shape, call.shape, "these rois and input", "grad")
    grad_out = cpu_array(grad, call.dtype)  # read in place when contiguous or channels-last
    grad_in = new_cpu_output(input.shape, call.dtype, call.channels_last_output)
    x, x_channels_last = call.scan_map()
    cpu.launch_backward_recompute(x, x_channels_last, call.bins, grad_out, grad_in.numpy())
    return of_dtype(grad_in, grad.dtype)


def _roi_pool_backward_recompute_fake(grad, input, rois, spatial_scale, pooled_height, pooled_width):
    return fake_output(input, input.shape, channels_last(input))


def _roi_pool_backward_recompute_any_device(grad, input, rois, spatial_scale, pooled_height, pooled_width):
    # Devices without a fused kernel (CUDA: the Triton backend) run the two
    # ops it fuses; what they compute is the same.
    _, argmax = torch.ops.roipool.roi_pool_with_argmax(input, rois, spatial_scale, pooled_height, pooled_width)
    return torch.ops.roipool.roi_pool_backward(grad, argmax, rois, *input.shape, channels_last(input))


# The gradient of roi_pool from the input instead of an argmax: on the CPU one
# fused kernel re-scans each bin and adds the gradient at its maximum, which

# The gradient of roi_pool from the input instead of an argmax: on the CPU one
# fused kernel re-scans each bin and adds the gradient at its maximum, which
# saves writing and reading back an argmax as large as the output. Devices
# without that kernel run the two ops it fuses.
roi_pool_backward_recompute_op = define(
    "roi_pool_backward_recompute",
    f"(Tensor grad, {_ROI_POOL_ARGS}) -> Tensor",
    cpu=_roi_pool_backward_recompute_cpu,
    fake=_roi_pool_backward_recompute_fake,
    other_devices=_roi_pool_backward_recompute_any_device,
)


def _roi_pool_backward_recompute_setup(ctx, inputs, output):
    _, input, rois, *ctx.params = inputs
    ctx.save_for_backward(input, rois)


def _at_maxima(grad_grad_input, argmax, rois):
    """The adjoint of the backward, which is linear in its gradient: ``grad_grad_input (N, C, H, W)``
    read at each bin's maximum (0 for empty bins), ``(K, C, PH, PW)``. The maxima move only where the
    input has ties, so the backward's derivative with respect to the input is zero."""
    _, channels, height, width = grad_grad_input.shape
    plane = rois[:, 0].to(torch.int64).view(-1, 1, 1, 1) * channels + torch.arange(
        channels, device=grad_grad_input.device
    ).view(1, -1, 1, 1)
    index = plane * (height * width) + argmax.clamp(min=0).to(torch.int64)
    picked = grad_grad_input.reshape(-1)[index.reshape(-1)].view(argmax.shape)
    return torch.where(argmax >= 0, picked, torch.zeros_like(picked))


def _roi_pool_backward_recompute_grad(ctx, grad_grad_input):
    input, rois = ctx.saved_tensors
    _, argmax = torch.ops.roipool.roi_pool_with_argmax(input, rois, *ctx.params)
    return _at_maxima(grad_grad_input, argmax, rois), None, None, None, None, None


roi_pool_backward_recompute_op.register_autograd(
    _roi_pool_backward_recompute_grad, setup_context=_roi_pool_backward_recompute_setup
)


def _roi_pool_backward_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])  # argmax, rois


def _roi_pool_backward_grad(ctx, grad_grad_input):
    argmax, rois = ctx.saved_tensors
    return _at_maxima(grad_grad_input, argmax, rois), None, None, None, None, None, None, None


# the stored-argmax route's backward is differentiable too (the argmax route trains on CPUs without AVX-512)
roi_pool_backward_op.register_autograd(_roi_pool_backward_grad, setup_context=_roi_pool_backward_setup)


def _roi_pool_with_argmax_setup(ctx, inputs, output):
    input, rois = inputs[:2]
    ctx.save_for_backward(rois, output[1])
    ctx.input_shape = tuple(input.shape)
    ctx.channels_last = channels_last(input)
    # The argmax output never gets a gradient; without this autograd would
    # hand the backward a zero tensor as large as the output (about 45 ms of
    # a 80 ms backward on the vgg16 workload).
    ctx.set_materialize_grads(False)


def _roi_pool_with_argmax_grad(ctx, grad_output, _grad_argmax):
    if grad_output is None:  # the pooled output did not reach the loss
        return None, None, None, None, None
    rois, argmax = ctx.saved_tensors
    grad_input = call_backward(
        ctx,
        torch.ops.roipool.roi_pool_backward,
        _own_argmax_backward_cpu,
        grad_output,
        argmax,
        rois,
        *ctx.input_shape,
        ctx.channels_last,
    )
    return grad_input, None, None, None, None


def _roi_pool_setup(ctx, inputs, output):
    input, rois, *ctx.params = inputs
    ctx.save_for_backward(input, rois)


def _roi_pool_grad(ctx, grad_output):
    # The training forward on the CPU (see roi_pool()): the backward finds
    # the maxima again from the saved input instead of reading an argmax.
    input, rois = ctx.saved_tensors
    grad_input = call_backward(
        ctx,
        torch.ops.roipool.roi_pool_backward_recompute,
        _roi_pool_backward_recompute_cpu,
        grad_output,
        input,
        rois,
        *ctx.params,
    )
    return grad_input, None, None, None, None


roi_pool_with_argmax_op.register_autograd(_roi_pool_with_argmax_grad, setup_context=_roi_pool_with_argmax_setup)
roi_pool_op.register_autograd(_roi_pool_grad, setup_context=_roi_pool_setup)


# A CPU training call without the custom ops' dispatch (``train_eagerly``), on either route
_WITH_ARGMAX_TRAINING = Training(_roi_pool_with_argmax_cpu, _roi_pool_with_argmax_setup, _roi_pool_with_argmax_grad)
_RECOMPUTE_TRAINING = Training(_roi_pool_cpu, _roi_pool_setup, _roi_pool_grad)


def roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """Tensor RoI max pooling; see :func:`roipool.roi_pool`.

    Args:
        input (Tensor[N, C, H, W]): float16, bfloat16, float32 or float64; any
            strides (channels-last is read in place).
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): on ``input``'s device.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.

    Returns:
        Tensor[K, C, pooled_h, pooled_w] of ``input``'s dtype, differentiable
        with respect to ``input``.
    """
    with quiet_when_tracing():
        check_input(input)
        pooled_h, pooled_w = _checks.output_size_pair(output_size)
        scale = _checks.positive_scale(spatial_scale)
        rois = boxes_to_rois(boxes, input)
        check_output_fits(input, rois, input.shape[1], (pooled_h, pooled_w), output_size)
    route = eager_route(input, rois)
    if route is INFERENCE:
        return _roi_pool_cpu(input, rois, scale, pooled_h, pooled_w)
    if route is TRAINING:
        if recompute_pays(input, rois, scale, pooled_h, pooled_w):
            return train_eagerly(_RECOMPUTE_TRAINING, input, rois, scale, pooled_h, pooled_w)
        return train_eagerly(_WITH_ARGMAX_TRAINING, input, rois, scale, pooled_h, pooled_w)[0]
    if onnx.dynamo_onnx_export():
        return onnx.max_roi_pool_node(input, rois, scale, pooled_h, pooled_w)
    if needs_grad(input) and not recompute_pays(input, rois, scale, pooled_h, pooled_w):
        return torch.ops.roipool.roi_pool_with_argmax(input, rois, scale, pooled_h, pooled_w)[0]
    # The training forward is the inference op too: its backward finds the
    # maxima again from the input (roi_pool_backward_recompute).
    return torch.ops.roipool.roi_pool(input, rois, scale, pooled_h, pooled_w)


#: Mean cells per bin above which a CPU training forward stores the argmax
#: instead of letting the backward scan every bin again (measured in kernels.md).
RECOMPUTE_MAX_CELLS_PER_BIN = 24.0


def recompute_pays(input, rois, scale, pooled_h, pooled_w) -> bool:
    """Whether roi_pool's backward should re-scan the bins rather than read a stored argmax.

    On CUDA never (the Triton backend reads an argmax). On the CPU when the
    kernels are compiled for AVX-512, the bins are small (the re-scan costs
    about twice the forward's scan, the argmax 8 bytes per output written and
    read) and a backward task's working set (``cpu.recompute_working_set``:
    its copy of the map's block and its accumulator) fits in the L2 cache this
    CPU reports (``cpu._machine.l2_bytes``); on a larger map each re-scan reads
    from further out and the argmax wins (``kernels.md``). Without AVX-512 (an
    AVX2-only AMD EPYC, ``benchmarks.md``) the argmax route was as fast or
    faster at every size measured (``vgg16``: 187 against 234 ms). While tracing
    (``torch.compile``, ``torch.export``) the boxes are not known and the
    re-scan is chosen. The result is the same either way.
    """
    if input.device.type != "cpu":
        return False
    known = type(input) is torch.Tensor and type(rois) is torch.Tensor
    if not known or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    if not avx512():
        return False
    n, _, height, width = input.shape
    if cpu.recompute_working_set(height, width) > l2_bytes():
        return False
    _, bins = cpu_geometry(
        cpu.RoIPoolBins, rois, n, compute_dtype(input.dtype), float(scale), pooled_h, pooled_w, height, width
    )
    return bins.cells_per_bin() <= RECOMPUTE_MAX_CELLS_PER_BIN

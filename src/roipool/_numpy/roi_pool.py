"""NumPy frontend of RoI max pooling: checks, memory layout, and calls into ``cpu/roi_pool.py``.

``roi_pool``, ``roi_pool_with_argmax`` and ``roi_pool_backward`` (with an
argmax, or from the forward's input) on NumPy arrays; semantics in
``docs/semantics.md`` (RoIPool).
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from ..cpu import _tiles
from ..cpu import roi_pool as cpu
from ..cpu._tiles import as_dtype, channels_last_copy
from . import _layout

_NUMPY = "a NumPy array"


class RoIPoolCall:
    """One NumPy call's checked arguments, validated rois and bins, each computed once."""

    def __init__(self, input, boxes, output_size, spatial_scale, accepted="a NumPy array or a torch tensor"):
        input = _checks.feature_map(input, accepted=accepted)
        self.pooled_h, self.pooled_w = _checks.output_size_pair(output_size)
        scale = _checks.positive_scale(spatial_scale)
        self.input_dtype = input.dtype
        self.dtype = _checks.compute_dtype(input.dtype)
        self.input_shape = input.shape
        n, channels, height, width = input.shape
        self.rois = _checks.rois_array(boxes, n, self.dtype)
        _checks.pooled_output_fits(
            self.rois.shape[0], channels, self.pooled_h, self.pooled_w, self.dtype.itemsize, output_size
        )
        self.bins = cpu.RoIPoolBins(self.rois, scale, self.pooled_h, self.pooled_w, height, width)
        self.input = input
        # a float16 map is pooled, and its output written, in 16 bits (exact: a maximum is a cell)
        self.bits = _tiles.reads_half(input.dtype)

    def channels_last(self) -> np.ndarray:
        """A new ``(N, H, W, C)`` copy in the compute dtype (native byte order)."""
        return channels_last_copy(as_dtype(self.input, self.dtype))

    def compute_map(self) -> np.ndarray:
        """The input ``(N, C, H, W)`` for the forward launchers (which read any strides): itself
        when it is in the compute dtype, its bits when the kernels read its 16 bits, else an
        ``(N, C, H, W)`` view of :meth:`channels_last`."""
        if self.input.dtype == self.dtype:
            return self.input
        if self.bits is not None:
            return self.input.view(self.bits)
        return self.channels_last().transpose(0, 3, 1, 2)

    def forward_output(self, nhwc):
        """The forward's output, as the kernels write it: in the compute dtype, or the input's bits."""
        return self.empty_output(self.dtype if self.bits is None else self.bits, nhwc)

    def result(self, out):
        """The forward's output in the input's dtype."""
        return as_dtype(out, self.input_dtype) if self.bits is None else out.view(self.input_dtype)

    def empty_output(self, dtype, nhwc):
        """``(K, C, pooled_h, pooled_w)``, channels-last in memory when ``nhwc``."""
        shape = (self.rois.shape[0], self.input_shape[1], self.pooled_h, self.pooled_w)
        return _layout.empty(shape, dtype, nhwc)


def roi_pool(input, boxes, output_size, spatial_scale=1.0, nhwc=False):
    call = RoIPoolCall(input, boxes, output_size, spatial_scale)
    out = call.forward_output(nhwc)
    cpu.launch_forward(call.compute_map(), call.bins, out)
    return call.result(out)


def roi_pool_with_argmax(input, boxes, output_size, spatial_scale=1.0, nhwc=False):
    call = RoIPoolCall(input, boxes, output_size, spatial_scale, accepted=_NUMPY)
    out = call.forward_output(nhwc)
    argmax = call.empty_output(np.int32, nhwc)
    cpu.launch_forward_argmax(call.compute_map(), call.bins, out, argmax)
    return call.result(out), argmax


def roi_pool_backward(grad_output, argmax, boxes, input_shape, *, input=None, spatial_scale=1.0, nhwc=False):
    grad_output = _checks.grad_output_array(grad_output)
    if argmax is None:
        if input is None:
            raise ValueError("roi_pool_backward needs argmax, or input (and spatial_scale) to find the maxima again")
        return _backward_recompute(grad_output, input, boxes, input_shape, spatial_scale, nhwc)
    if input is not None:
        raise ValueError("pass argmax or input to roi_pool_backward, not both")
    argmax = np.asarray(argmax)
    if argmax.shape != grad_output.shape:
        raise ValueError(f"argmax must have the shape of grad_output {grad_output.shape}, got {argmax.shape}")
    if argmax.dtype.kind not in "iu":
        raise TypeError(f"argmax must hold integers, got dtype {argmax.dtype}")
    shape = _checks.input_shape_tuple(input_shape)
    n, channels, height, width = shape
    if grad_output.shape[1] != channels:
        raise ValueError(f"grad_output has {grad_output.shape[1]} channels but input_shape has {channels}")
    if argmax.size and cpu.argmax_outside(argmax, height * width):
        raise ValueError(f"argmax holds indices outside [-1, H * W = {height * width})")
    dtype = _checks.compute_dtype(grad_output.dtype)
    rois = _checks.rois_array(boxes, n, dtype)
    if rois.shape[0] != grad_output.shape[0]:
        raise ValueError(f"boxes hold {rois.shape[0]} RoIs but grad_output has {grad_output.shape[0]}")
    grad_in = _layout.empty(shape, dtype, nhwc, zeros=True)
    if grad_output.size:
        go = as_dtype(grad_output, dtype)
        am = argmax.astype(np.int32, copy=False)
        cpu.launch_backward(go, am, rois[:, 0].astype(np.int32), grad_in)
    return as_dtype(grad_in, grad_output.dtype)


def _backward_recompute(grad_output, input, boxes, input_shape, spatial_scale, nhwc):
    """:func:`roi_pool_backward` from the forward's input instead of its argmax (one fused kernel)."""
    if 0 in grad_output.shape[2:]:  # the bins give the output size: no argument of that name to blame
        raise ValueError(f"grad_output must have at least one bin (pooled_h, pooled_w >= 1), got {grad_output.shape}")
    call = RoIPoolCall(input, boxes, grad_output.shape[2:], spatial_scale, accepted=_NUMPY)
    if _checks.input_shape_tuple(input_shape) != call.input_shape:
        raise ValueError(f"input_shape {tuple(input_shape)} is not the shape of input {call.input_shape}")
    if grad_output.dtype.newbyteorder("=") != call.input_dtype.newbyteorder("="):
        raise TypeError(f"grad_output ({grad_output.dtype}) and input ({call.input_dtype}) must have the same dtype")
    ph, pw = grad_output.shape[2:]
    _checks.grad_output_shape(
        grad_output.shape, (call.rois.shape[0], call.input_shape[1], ph, pw), "these boxes and input"
    )
    grad_in = _layout.empty(call.input_shape, call.dtype, nhwc)
    go = as_dtype(grad_output, call.dtype)
    x = call.input
    if x.dtype == call.dtype and x.flags.c_contiguous:  # read as NCHW, no channels-last copy
        cpu.launch_backward_recompute(x, False, call.bins, go, grad_in)
    else:
        cpu.launch_backward_recompute(call.channels_last(), True, call.bins, go, grad_in)
    return as_dtype(grad_in, grad_output.dtype)

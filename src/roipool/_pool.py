"""RoI max pooling on NumPy arrays: checks, layout, and the CPU kernels."""

from __future__ import annotations

import numpy as np

from . import _checks
from ._geometry import roi_pool_bins
from .cpu import roi_pool as kernels
from .cpu._parallel import balanced_chunks, launch_lock


class Prepared:
    """Validated arguments and RoI geometry, computed once per call."""

    def __init__(self, input, boxes, output_size, spatial_scale):
        input = _checks.feature_map(input)
        self.pooled_h, self.pooled_w = _checks.output_size_pair(output_size)
        scale = _checks.positive_scale(spatial_scale)
        self.input_dtype = input.dtype
        # float16 is pooled in float32: the conversion is exact both ways and
        # the maximum is one of the inputs, so the result is the same.
        self.dtype = np.dtype(np.float32) if input.itemsize < 4 else input.dtype.newbyteorder("=")
        self.input_shape = input.shape
        n, _, height, width = input.shape
        self.rois = _checks.rois_array(boxes, n, self.dtype)
        self.batch, self.hbins, self.wbins, cost = roi_pool_bins(
            self.rois, self.dtype.type(scale), self.pooled_h, self.pooled_w, height, width
        )
        self.bounds = balanced_chunks(cost)
        self.input = input

    def channels_last(self) -> np.ndarray:
        """A new ``(N, H, W, C)`` copy in the compute dtype (native byte order)."""
        return np.ascontiguousarray(self.input.transpose(0, 2, 3, 1), dtype=self.dtype)

    def empty_output(self, dtype):
        k = self.rois.shape[0]
        return np.empty((k, self.input_shape[1], self.pooled_h * self.pooled_w), dtype)

    def shaped(self, flat):
        return flat.reshape(flat.shape[0], flat.shape[1], self.pooled_h, self.pooled_w)


def roi_pool(input, boxes, output_size, spatial_scale=1.0):
    prep = Prepared(input, boxes, output_size, spatial_scale)
    out = prep.empty_output(prep.dtype)
    if out.size:
        with launch_lock:
            kernels.forward(prep.channels_last(), prep.batch, prep.hbins, prep.wbins, prep.bounds, out)
    return prep.shaped(out).astype(prep.input_dtype, copy=False)


def roi_pool_with_argmax(input, boxes, output_size, spatial_scale=1.0):
    prep = Prepared(input, boxes, output_size, spatial_scale)
    out = prep.empty_output(prep.dtype)
    argmax = prep.empty_output(np.int32)
    if out.size:
        with launch_lock:
            kernels.forward_argmax(
                prep.channels_last(), prep.batch, prep.hbins, prep.wbins, prep.bounds, out, argmax
            )
    return prep.shaped(out).astype(prep.input_dtype, copy=False), prep.shaped(argmax)


def roi_pool_backward(grad_output, argmax, boxes, input_shape):
    grad_output = np.asarray(grad_output)
    argmax = np.asarray(argmax)
    if grad_output.dtype.kind != "f":
        raise TypeError(f"grad_output must have a real floating dtype, got {grad_output.dtype}")
    if grad_output.ndim != 4:
        raise ValueError(f"grad_output must have shape (K, C, pooled_h, pooled_w), got {grad_output.shape}")
    if argmax.shape != grad_output.shape:
        raise ValueError(f"argmax must have the shape of grad_output {grad_output.shape}, got {argmax.shape}")
    if argmax.dtype.kind not in "iu":
        raise TypeError(f"argmax must hold integers, got dtype {argmax.dtype}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(f"input_shape must be (N, C, H, W), got {input_shape!r}")
    n, channels, height, width = shape
    if grad_output.shape[1] != channels:
        raise ValueError(f"grad_output has {grad_output.shape[1]} channels but input_shape has {channels}")
    if argmax.size and (argmax.min() < -1 or argmax.max() >= height * width):
        raise ValueError(f"argmax holds indices outside [-1, H * W = {height * width})")
    dtype = np.dtype(np.float32) if grad_output.itemsize < 4 else grad_output.dtype.newbyteorder("=")
    rois = _checks.rois_array(boxes, n, dtype)
    if rois.shape[0] != grad_output.shape[0]:
        raise ValueError(f"boxes hold {rois.shape[0]} RoIs but grad_output has {grad_output.shape[0]}")
    k, _, ph, pw = grad_output.shape
    grad_in = np.zeros((n, channels, height * width), dtype)
    if grad_output.size:
        go = np.ascontiguousarray(grad_output, dtype=dtype).reshape(k, channels, ph * pw)
        am = np.ascontiguousarray(argmax, dtype=np.int32).reshape(k, channels, ph * pw)
        batch = rois[:, 0].astype(np.int32)
        with launch_lock:
            kernels.backward(go, am, batch, grad_in)
    return grad_in.reshape(shape).astype(grad_output.dtype, copy=False)

"""RoI max pooling on NumPy arrays: checks, layout, and the CPU kernels.

The pieces below the NumPy functions' checks are shared with the torch
frontend (``_torch_ops``): :func:`compute_dtype`, :class:`Bins` (the geometry
and work split of one call) and the three ``launch_*`` functions, which take
channels-last inputs and caller-allocated outputs so that torch can hand in
views of its own tensors.
"""

from __future__ import annotations

import numpy as np

from . import _checks
from ._geometry import roi_pool_bins
from .cpu import roi_pool as kernels
from .cpu._parallel import balanced_chunks, launch_lock


def compute_dtype(dtype) -> np.dtype:
    """The dtype the kernels pool in: float32 for 16-bit inputs, else the input's (native order).

    16-bit floats are pooled in float32: the conversion is exact both ways and
    the maximum is one of the inputs, so the result is the same.
    """
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype.newbyteorder("=")


class Bins:
    """Bin edges of every RoI and the split of the RoIs into balanced runs.

    ``rois (K, 5)`` are validated and in the compute dtype; the feature map is
    ``height x width``. Attributes ``batch (K,)``, ``hbins (K, PH, 2)``,
    ``wbins (K, PW, 2)`` and ``bounds`` are what the kernels take.
    """

    def __init__(self, rois, spatial_scale, pooled_h, pooled_w, height, width):
        self.pooled_h, self.pooled_w = pooled_h, pooled_w
        self.num_rois = rois.shape[0]
        self.batch, self.hbins, self.wbins, cost = roi_pool_bins(
            rois, rois.dtype.type(spatial_scale), pooled_h, pooled_w, height, width
        )
        self.bounds = balanced_chunks(cost)


def cells_per_bin(rois, spatial_scale, pooled_h, pooled_w, height, width) -> float:
    """Mean number of map cells a bin of these ``(K, 5)`` rois (validated, compute dtype) reads; 0 for none."""
    k, bins = rois.shape[0], pooled_h * pooled_w
    if k == 0:
        return 0.0
    _, _, _, cost = roi_pool_bins(rois, rois.dtype.type(spatial_scale), pooled_h, pooled_w, height, width)
    return float(cost.sum() - k * bins) / (k * bins)  # cost: cells read plus bins written


def launch_forward(x_nhwc, bins: Bins, out) -> None:
    """``out (K, C, PH * PW)`` <- bin maxima of ``x_nhwc (N, H, W, C)`` (C-contiguous, compute dtype)."""
    if out.size:
        with launch_lock:
            kernels.forward(x_nhwc, bins.batch, bins.hbins, bins.wbins, bins.bounds, out)


def launch_forward_argmax(x_nhwc, bins: Bins, out, argmax) -> None:
    """As :func:`launch_forward`, also writing ``argmax (K, C, PH * PW)`` (int32)."""
    if out.size:
        with launch_lock:
            kernels.forward_argmax(x_nhwc, bins.batch, bins.hbins, bins.wbins, bins.bounds, out, argmax)


def launch_backward(grad_out, argmax, batch, grad_in) -> None:
    """``grad_in (N, C, H * W)`` (zeroed by the caller) += ``grad_out (K, C, B)`` routed by ``argmax``."""
    if grad_out.size:
        with launch_lock:
            kernels.backward(grad_out, argmax, batch, grad_in)


def launch_backward_recompute(x, channels_last: bool, bins: Bins, grad_out, grad_in) -> None:
    """``grad_in (N, C, H * W)`` <- ``grad_out (K, C, PH * PW)`` routed to each bin's maximum in ``x``.

    ``x`` is the map, ``(N, H, W, C)`` if ``channels_last`` else ``(N, C, H, W)``.
    The same sums as :func:`launch_backward` with the forward's argmax, found
    again by scanning the bins instead of read back; ``grad_in`` is
    overwritten (no zeroing needed). All arrays C-contiguous, compute dtype.
    """
    if grad_in.size == 0:
        return
    if grad_out.size == 0:
        grad_in[...] = 0
        return
    with launch_lock:
        kernels.backward_recompute(x, channels_last, bins.batch, bins.hbins, bins.wbins, grad_out, grad_in)


class Prepared:
    """Validated arguments and RoI geometry, computed once per call."""

    def __init__(self, input, boxes, output_size, spatial_scale):
        input = _checks.feature_map(input)
        self.pooled_h, self.pooled_w = _checks.output_size_pair(output_size)
        scale = _checks.positive_scale(spatial_scale)
        self.input_dtype = input.dtype
        self.dtype = compute_dtype(input.dtype)
        self.input_shape = input.shape
        n, _, height, width = input.shape
        self.rois = _checks.rois_array(boxes, n, self.dtype)
        self.bins = Bins(self.rois, scale, self.pooled_h, self.pooled_w, height, width)
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
    launch_forward(prep.channels_last(), prep.bins, out)
    return prep.shaped(out).astype(prep.input_dtype, copy=False)


def roi_pool_with_argmax(input, boxes, output_size, spatial_scale=1.0):
    prep = Prepared(input, boxes, output_size, spatial_scale)
    out = prep.empty_output(prep.dtype)
    argmax = prep.empty_output(np.int32)
    launch_forward_argmax(prep.channels_last(), prep.bins, out, argmax)
    return prep.shaped(out).astype(prep.input_dtype, copy=False), prep.shaped(argmax)


def _argmax_outside(argmax: np.ndarray, cells: int) -> bool:
    """Whether any index lies outside ``[-1, cells)``; int32 (what the forward returns) in one parallel pass."""
    if argmax.dtype == np.int32 and argmax.flags.c_contiguous and argmax.dtype.isnative:
        with launch_lock:
            return kernels.count_outside(argmax.reshape(-1), -1, cells) > 0
    return bool(argmax.min() < -1 or argmax.max() >= cells)


def roi_pool_backward(grad_output, argmax, boxes, input_shape, *, input=None, spatial_scale=1.0):
    grad_output = np.asarray(grad_output)
    if grad_output.dtype.kind != "f":
        raise TypeError(f"grad_output must have a real floating dtype, got {grad_output.dtype}")
    if grad_output.ndim != 4:
        raise ValueError(f"grad_output must have shape (K, C, pooled_h, pooled_w), got {grad_output.shape}")
    if argmax is None:
        if input is None:
            raise ValueError("roi_pool_backward needs argmax, or input (and spatial_scale) to find the maxima again")
        return _backward_recompute(grad_output, input, boxes, input_shape, spatial_scale)
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
    if argmax.size and _argmax_outside(argmax, height * width):
        raise ValueError(f"argmax holds indices outside [-1, H * W = {height * width})")
    dtype = compute_dtype(grad_output.dtype)
    rois = _checks.rois_array(boxes, n, dtype)
    if rois.shape[0] != grad_output.shape[0]:
        raise ValueError(f"boxes hold {rois.shape[0]} RoIs but grad_output has {grad_output.shape[0]}")
    k, _, ph, pw = grad_output.shape
    grad_in = np.zeros((n, channels, height * width), dtype)
    if grad_output.size:
        go = np.ascontiguousarray(grad_output, dtype=dtype).reshape(k, channels, ph * pw)
        am = np.ascontiguousarray(argmax, dtype=np.int32).reshape(k, channels, ph * pw)
        launch_backward(go, am, rois[:, 0].astype(np.int32), grad_in)
    return grad_in.reshape(shape).astype(grad_output.dtype, copy=False)


def _backward_recompute(grad_output, input, boxes, input_shape, spatial_scale):
    """:func:`roi_pool_backward` from the forward's input instead of its argmax (one fused kernel)."""
    prep = Prepared(input, boxes, grad_output.shape[2:], spatial_scale)
    if _checks.input_shape_tuple(input_shape) != prep.input_shape:
        raise ValueError(f"input_shape {tuple(input_shape)} is not the shape of input {prep.input_shape}")
    if grad_output.dtype.newbyteorder("=") != prep.input_dtype.newbyteorder("="):
        raise TypeError(f"grad_output ({grad_output.dtype}) and input ({prep.input_dtype}) must have the same dtype")
    k, channels, ph, pw = grad_output.shape
    if (k, channels) != (prep.rois.shape[0], prep.input_shape[1]):
        raise ValueError(
            f"grad_output must have shape {(prep.rois.shape[0], prep.input_shape[1], ph, pw)} for these boxes "
            f"and input, got {grad_output.shape}"
        )
    n, _, height, width = prep.input_shape
    grad_in = np.empty((n, channels, height * width), prep.dtype)
    go = np.ascontiguousarray(grad_output, dtype=prep.dtype).reshape(k, channels, ph * pw)
    x = prep.input
    if x.dtype == prep.dtype and x.flags.c_contiguous:  # read as NCHW, no channels-last copy
        launch_backward_recompute(x, False, prep.bins, go, grad_in)
    else:
        launch_backward_recompute(prep.channels_last(), True, prep.bins, go, grad_in)
    return grad_in.reshape(prep.input_shape).astype(grad_output.dtype, copy=False)

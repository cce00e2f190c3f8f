"""RoIAlign on NumPy arrays: checks, layout, and the CPU kernels.

Semantics: ``docs/_parts/align.md`` (torchvision's ``roi_align``, sample for
sample). The geometry is computed once per call (``_geometry.roi_align_taps``)
and shared by every channel.
"""

from __future__ import annotations

import numba
import numpy as np

from . import _checks
from ._geometry import roi_align_taps
from .cpu import roi_align as kernels
from .cpu._parallel import balanced_chunks, launch_lock


# How the kernels evaluate each RoI (``kernels.AUTO``: the cheaper way per
# RoI); the tests force each way in turn.
PATH = kernels.AUTO


def compute_dtype(dtype) -> np.dtype:
    """float16 is computed in float32; float32 and float64 in themselves (native order)."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype.newbyteorder("=")


class Taps:
    """Validated arguments and the separable bilinear taps of every RoI."""

    def __init__(self, boxes, num_images, height, width, output_size, spatial_scale, sampling_ratio, aligned, dtype):
        self.pooled_h, self.pooled_w = _checks.output_size_pair(output_size)
        scale = _checks.positive_scale(spatial_scale)
        self.sampling_ratio = _checks.sampling_ratio_int(sampling_ratio)
        self.aligned = _checks.flag(aligned, "aligned")
        self.dtype = dtype
        self.rois = _checks.rois_array(boxes, num_images, dtype)
        t = dtype.type
        _check_scaled_boxes(self.rois, t(scale), self.aligned, self.pooled_h, self.pooled_w)
        (self.batch, self.hptr, self.hidx, self.hwt, self.wptr, self.widx, self.wwt, cost) = roi_align_taps(
            self.rois, t(scale), self.pooled_h, self.pooled_w, self.sampling_ratio, self.aligned, height, width
        )
        self.cost = cost

    @property
    def arrays(self):
        return self.batch, self.hptr, self.hidx, self.hwt, self.wptr, self.widx, self.wwt


def _check_scaled_boxes(rois, scale, aligned, pooled_h, pooled_w):
    """Corners, extents and bin sizes must stay finite in the compute dtype.

    Only boxes beyond about 1e38 / spatial_scale (float32) overflow; the
    kernels would otherwise sample at infinite or NaN positions.
    """
    t = rois.dtype.type
    offset = t(0.5) if aligned else t(0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        corners = rois[:, 1:] * scale - offset
        extents = corners[:, 2:] - corners[:, :2]
        bins = extents / np.array([pooled_w, pooled_h], rois.dtype)
    ok = np.isfinite(corners).all(axis=1) & np.isfinite(extents).all(axis=1) & np.isfinite(bins).all(axis=1)
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"boxes: box {k} {rois[k, 1:]} times spatial_scale {scale} overflows {rois.dtype} "
            "(corners or extent not finite)"
        )


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    input = _checks.feature_map(input)
    n, channels, height, width = input.shape
    dtype = compute_dtype(input.dtype)
    taps = Taps(boxes, n, height, width, output_size, spatial_scale, sampling_ratio, aligned, dtype)
    out = np.empty((taps.rois.shape[0], channels, taps.pooled_h * taps.pooled_w), dtype)
    if out.size:
        x = np.ascontiguousarray(input.transpose(0, 2, 3, 1), dtype=dtype)
        bounds = balanced_chunks(taps.cost)
        with launch_lock:
            kernels.forward(x, *taps.arrays, bounds, PATH, out)
    out = out.reshape(out.shape[0], channels, taps.pooled_h, taps.pooled_w)
    return out.astype(input.dtype, copy=False)


def roi_align_backward(
    grad_output, boxes, input_shape, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False
):
    grad_output = np.asarray(grad_output)
    if grad_output.dtype.kind != "f":
        raise TypeError(f"grad_output must have a real floating dtype, got {grad_output.dtype}")
    if grad_output.ndim != 4:
        raise ValueError(f"grad_output must have shape (K, C, pooled_h, pooled_w), got {grad_output.shape}")
    shape = _input_shape(input_shape)
    n, channels, height, width = shape
    if grad_output.shape[1] != channels:
        raise ValueError(f"grad_output has {grad_output.shape[1]} channels but input_shape has {channels}")
    dtype = compute_dtype(grad_output.dtype)
    taps = Taps(boxes, n, height, width, output_size, spatial_scale, sampling_ratio, aligned, dtype)
    if grad_output.shape[2:] != (taps.pooled_h, taps.pooled_w):
        raise ValueError(
            f"grad_output has bins {grad_output.shape[2:]} but output_size is {(taps.pooled_h, taps.pooled_w)}"
        )
    k = grad_output.shape[0]
    if taps.rois.shape[0] != k:
        raise ValueError(f"boxes hold {taps.rois.shape[0]} RoIs but grad_output has {k}")
    grad_in = np.zeros((n, height, width, channels), dtype)
    if grad_output.size and grad_in.size:
        go = np.ascontiguousarray(grad_output, dtype=dtype).reshape(k, channels, taps.pooled_h * taps.pooled_w)
        with launch_lock:
            kernels.backward(go, *taps.arrays, _channel_block(channels), PATH, grad_in)
    return grad_in.transpose(0, 3, 1, 2).astype(grad_output.dtype, order="C")


def _channel_block(channels: int) -> int:
    """Channels per backward work item: one equal share per thread, rounded up to
    a multiple of 16 (whole cache lines of float32). Wide blocks pay: each block
    re-reads the RoI taps and transposes its slice of ``grad_output``."""
    share = -(-channels // numba.get_num_threads())
    return max(16, -(-share // 16) * 16)


def _input_shape(input_shape) -> tuple[int, int, int, int]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(f"input_shape must be a sequence of 4 ints (N, C, H, W), got {input_shape!r}") from None
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(f"input_shape must be (N, C, H, W) with no negative size, got {input_shape!r}")
    return shape

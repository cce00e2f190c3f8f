"""Rotated RoIAlign on NumPy arrays: checks, layout, and the CPU kernels.

Semantics: ``docs/semantics.md`` (Rotated RoIAlign), the mmcv/mmrotate
``roi_align_rotated`` definition. :class:`Frames` (the per-RoI geometry and
work split of one call) and the ``launch_*`` functions are shared with the
torch frontend (``_torch/roi_align_rotated.py``).
"""

from __future__ import annotations

import numba
import numpy as np

from .. import _checks
from ..cpu import roi_align as align_kernels
from ..cpu import roi_align_rotated as kernels
from ..cpu._parallel import balanced_chunks, launch_lock
from ..cpu._simd import VECTOR_BYTES

K = kernels


def compute_dtype(dtype) -> np.dtype:
    """float16 and float32 compute in float32, wider types in float64 (the kernels' two types)."""
    return np.dtype(np.float32) if np.dtype(dtype).itemsize <= 4 else np.dtype(np.float64)


class Frames:
    """The frame of every rotated RoI (centre, bin sizes, cos, sin), its sample grid, and the work split.

    ``rois (K, 6)`` are validated (``_checks.rotated_rois_array``) and in the
    compute dtype. Everything is rounded to that dtype in the reference's
    order, so the kernels place every sample where the reference does.
    """

    def __init__(self, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise):
        t = rois.dtype.type
        _checks.rotated_scaled_boxes(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio <= 0)
        self.pooled_h, self.pooled_w = pooled_h, pooled_w
        self.spatial_scale = float(spatial_scale)
        self.clockwise = bool(clockwise)
        self.num_rois = rois.shape[0]
        self.batch = rois[:, 0].astype(np.int64)
        scale = t(spatial_scale)
        offset = t(0.5) if aligned else t(0.0)
        f = np.empty((self.num_rois, K.FRAME_COLUMNS), rois.dtype)
        f[:, K.CX] = rois[:, 1] * scale - offset
        f[:, K.CY] = rois[:, 2] * scale - offset
        roi_w = rois[:, 3] * scale
        roi_h = rois[:, 4] * scale
        f[:, K.SIZE_FREE_W] = 1
        f[:, K.SIZE_FREE_H] = 1
        if not aligned:
            # legacy rule: a box smaller than one cell is read as one cell (and that size has no derivative)
            f[:, K.SIZE_FREE_W] = roi_w > 1
            f[:, K.SIZE_FREE_H] = roi_h > 1
            roi_w = np.maximum(roi_w, t(1))
            roi_h = np.maximum(roi_h, t(1))
        theta = -rois[:, 5] if clockwise else rois[:, 5]
        f[:, K.COS] = np.cos(theta)
        f[:, K.SIN] = np.sin(theta)
        f[:, K.ROI_W] = roi_w
        f[:, K.ROI_H] = roi_h
        f[:, K.BIN_H] = roi_h / t(pooled_h)
        f[:, K.BIN_W] = roi_w / t(pooled_w)
        f[:, K.START_H] = -roi_h / t(2)
        f[:, K.START_W] = -roi_w / t(2)
        self.frames = f
        grids = np.empty((self.num_rois, 2), np.int64)
        if sampling_ratio > 0:
            grids[:] = sampling_ratio
        else:
            grids[:, 0] = np.maximum(np.ceil(roi_h / t(pooled_h)), 0)
            grids[:, 1] = np.maximum(np.ceil(roi_w / t(pooled_w)), 0)
        self.grids = grids
        cost = (grids[:, 0] * grids[:, 1] + 1).astype(np.float64) * (pooled_h * pooled_w)
        self.bounds = balanced_chunks(cost)

    @property
    def arrays(self):
        return self.batch, self.frames, self.grids, self.pooled_h, self.pooled_w


def launch_forward(x, frames: Frames, out) -> None:
    """``out (K, C, PH * PW)`` <- rotated RoIAlign of ``x (N, C, H, W)`` (compute dtype, any strides)."""
    if not out.size:
        return
    if not x.size:  # an empty map: every sample is off it
        out[...] = 0
        return
    xb = np.empty(x.shape, x.dtype)
    if x.flags.c_contiguous:
        flat, cell_step, channel_step = x.reshape(-1), 1, x.shape[2] * x.shape[3]
    elif x.transpose(0, 2, 3, 1).flags.c_contiguous:
        flat, cell_step, channel_step = x.transpose(0, 2, 3, 1).reshape(-1), x.shape[1], 1
    else:
        flat, cell_step, channel_step = np.ascontiguousarray(x).reshape(-1), 1, x.shape[2] * x.shape[3]
    with launch_lock:
        align_kernels.channel_blocks(flat, cell_step, channel_step, xb)
        kernels.forward(xb, *frames.arrays, frames.bounds, out)


def launch_backward(grad_out, frames: Frames, grad_in) -> None:
    """``grad_in (N, C, H, W)`` (C-contiguous, every element written) <- the adjoint applied to ``grad_out (K, C, PH * PW)``."""
    if not grad_in.size:
        return
    if not grad_out.size:
        grad_in[...] = 0
        return
    images, channels = grad_in.shape[:2]
    order = np.argsort(frames.batch, kind="stable")
    starts = np.searchsorted(frames.batch[order], np.arange(images + 1)).astype(np.int64)
    block = channel_block(channels, images, grad_out.itemsize, numba.get_num_threads())
    with launch_lock:
        kernels.backward(grad_out, *frames.arrays, order, starts, block, grad_in)


def launch_box_backward(x_nhwc, grad_out, frames: Frames, grad_boxes) -> None:
    """``grad_boxes (K, 5)`` <- d/d ``[cx, cy, w, h, angle]`` from ``x_nhwc (N, H, W, C)`` and ``grad_out (K, C, PH * PW)``."""
    if not grad_boxes.size:
        return
    if not x_nhwc.size:
        grad_boxes[...] = 0
        return
    with launch_lock:
        kernels.box_backward(x_nhwc, grad_out, *frames.arrays, frames.spatial_scale, frames.clockwise, grad_boxes)


def channel_block(channels: int, images: int, itemsize: int, threads: int) -> int:
    """Channels per backward task: a whole register block, narrowed (in vector steps)
    until there are at least as many (image, block) tasks as threads."""
    lanes = VECTOR_BYTES // itemsize
    block = kernels.UNROLL * lanes
    while block > lanes and images * -(-channels // block) < threads:
        block -= lanes
    return block


def arguments(output_size, spatial_scale, sampling_ratio, aligned, clockwise):
    """Checked ``(pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, clockwise)``."""
    pooled_h, pooled_w = _checks.output_size_pair(output_size)
    scale = _checks.positive_scale(spatial_scale)
    return (
        pooled_h,
        pooled_w,
        scale,
        _checks.sampling_ratio_int(sampling_ratio),
        _checks.flag(aligned, "aligned"),
        _checks.flag(clockwise, "clockwise"),
    )


def roi_align_rotated(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True, clockwise=False):
    input = _checks.feature_map(input)
    n, channels, height, width = input.shape
    pooled_h, pooled_w, scale, sampling_ratio, aligned, clockwise = arguments(
        output_size, spatial_scale, sampling_ratio, aligned, clockwise
    )
    dtype = compute_dtype(input.dtype)
    _checks.scale_in_dtype(scale, dtype)
    rois = _checks.rotated_rois_array(boxes, n, dtype)
    frames = Frames(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise)
    out = np.empty((rois.shape[0], channels, pooled_h * pooled_w), dtype)
    if out.size:
        launch_forward(input.astype(dtype, copy=False), frames, out)
    return out.reshape(out.shape[0], channels, pooled_h, pooled_w).astype(input.dtype, copy=False)


def roi_align_rotated_backward(
    grad_output, boxes, input_shape, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True, clockwise=False
):
    grad_output = np.asarray(grad_output)
    if grad_output.dtype.kind != "f":
        raise TypeError(f"grad_output must have a real floating dtype, got {grad_output.dtype}")
    if grad_output.ndim != 4:
        raise ValueError(f"grad_output must have shape (K, C, pooled_h, pooled_w), got {grad_output.shape}")
    n, channels, height, width = _checks.input_shape_tuple(input_shape)
    if grad_output.shape[1] != channels:
        raise ValueError(f"grad_output has {grad_output.shape[1]} channels but input_shape has {channels}")
    pooled_h, pooled_w, scale, sampling_ratio, aligned, clockwise = arguments(
        output_size, spatial_scale, sampling_ratio, aligned, clockwise
    )
    if grad_output.shape[2:] != (pooled_h, pooled_w):
        raise ValueError(f"grad_output has bins {grad_output.shape[2:]} but output_size is {(pooled_h, pooled_w)}")
    dtype = compute_dtype(grad_output.dtype)
    _checks.scale_in_dtype(scale, dtype)
    rois = _checks.rotated_rois_array(boxes, n, dtype)
    k = grad_output.shape[0]
    if rois.shape[0] != k:
        raise ValueError(f"boxes hold {rois.shape[0]} RoIs but grad_output has {k}")
    frames = Frames(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise)
    grad_in = np.empty((n, channels, height, width), dtype)
    go = np.ascontiguousarray(grad_output, dtype=dtype).reshape(k, channels, pooled_h * pooled_w)
    launch_backward(go, frames, grad_in)
    return grad_in.astype(grad_output.dtype, copy=False)

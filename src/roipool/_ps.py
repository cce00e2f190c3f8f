"""ps_roi_pool and ps_roi_align on NumPy arrays: checks, layout, and the CPU kernels.

The geometry (``_ps_geometry``) turns every RoI into separable per-axis
taps; ``cpu/ps_roi.py`` applies them to a bin-major channels-last copy of the
feature map. float16 is computed in float32 and rounded once at the end.
"""

from __future__ import annotations

import numpy as np

from . import _checks
from ._ps_geometry import align_coord_limit, ps_roi_align_taps, ps_roi_pool_taps
from .cpu import ps_roi as kernels
from .cpu._parallel import balanced_chunks, launch_lock


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype.newbyteorder("=")


class _Taps:
    """Validated geometry of one call: batch indices and per-axis taps of every RoI."""

    def __init__(self, op, boxes, num_images, output_size, spatial_scale, sampling_ratio, height, width, dtype):
        self.pooled_h, self.pooled_w = output_size
        self.rois = _checks.rois_array(boxes, num_images, dtype)
        scale = _checks.scale_in_dtype(spatial_scale, dtype)
        if op == "pool":
            taps = ps_roi_pool_taps(self.rois, scale, self.pooled_h, self.pooled_w, height, width)
        else:
            taps = ps_roi_align_taps(
                self.rois, scale, self.pooled_h, self.pooled_w, height, width, sampling_ratio,
                align_coord_limit(dtype), float(np.finfo(dtype).eps),
            )
        self.batch = taps[0]
        self.axes = taps[1:7]  # y_first, y_count, y_weight, x_first, x_count, x_weight
        self.cost = taps[7]
        self.mean = op == "pool"  # ps_roi_pool divides by the bin area; align's weights average

    @property
    def num_rois(self) -> int:
        return self.rois.shape[0]


def _forward(op, input, boxes, output_size, spatial_scale, sampling_ratio):
    input = _checks.feature_map(input)
    output_size = _checks.output_size_pair(output_size)
    spatial_scale = _checks.positive_scale(spatial_scale)
    input_dtype = input.dtype
    n, channels, height, width = input.shape
    channels_out = _checks.ps_channels(channels, output_size)
    dtype = _compute_dtype(input_dtype)
    taps = _Taps(op, boxes, n, output_size, spatial_scale, sampling_ratio, height, width, dtype)
    nbins = output_size[0] * output_size[1]
    # a map without cells pools to zeros; otherwise the kernel writes every (bin, RoI)
    out = np.empty((nbins, taps.num_rois, channels_out), dtype) if height and width else np.zeros(
        (nbins, taps.num_rois, channels_out), dtype)
    if out.size and height and width:
        # bin-major channels-last: (N, C_out * B, H, W) -> (B, N, H, W, C_out)
        x = np.ascontiguousarray(input.reshape(n, channels_out, nbins, height, width).transpose(2, 0, 3, 4, 1), dtype)
        with launch_lock:
            kernels.forward(x, taps.batch, *taps.axes, taps.mean, _forward_tasks(nbins, taps.cost), out)
    result = np.empty((taps.num_rois, channels_out, nbins), dtype)
    if result.size:
        with launch_lock:
            kernels.rois_last(out, result)
    return result.reshape(taps.num_rois, channels_out, *output_size).astype(input_dtype, copy=False)


def _backward(op, grad_output, boxes, input_shape, output_size, spatial_scale, sampling_ratio):
    if not isinstance(grad_output, np.ndarray):
        raise TypeError(f"grad_output must be a NumPy array, got {type(grad_output).__name__}")
    if grad_output.dtype.kind != "f":
        raise TypeError(f"grad_output must have a real floating dtype, got {grad_output.dtype}")
    output_size = _checks.output_size_pair(output_size)
    spatial_scale = _checks.positive_scale(spatial_scale)
    shape = _checks.input_shape_tuple(input_shape)
    n, channels, height, width = shape
    channels_out = _checks.ps_channels(channels, output_size)
    dtype = _compute_dtype(grad_output.dtype)
    taps = _Taps(op, boxes, n, output_size, spatial_scale, sampling_ratio, height, width, dtype)
    expected = (taps.num_rois, channels_out, *output_size)
    if grad_output.shape != expected:
        raise ValueError(
            f"grad_output must have shape (K, C / (pooled_h * pooled_w), pooled_h, pooled_w) = {expected} "
            f"for {taps.num_rois} boxes, input_shape={shape} and output_size={output_size}, "
            f"got {grad_output.shape}"
        )
    grad_in = np.zeros(shape, dtype)
    nbins = output_size[0] * output_size[1]
    if grad_output.size and height and width:
        go = np.ascontiguousarray(grad_output, dtype).reshape(taps.num_rois, channels_out, nbins)
        go_bins = np.empty((nbins, taps.num_rois, channels_out), dtype)
        g = np.zeros((nbins, n, height, width, channels_out), dtype)
        with launch_lock:
            # (K, C_out, B) -> (B, K, C_out): a bin's gradients for all RoIs together
            kernels.bins_first(go, go_bins)
            kernels.backward(go_bins, taps.batch, *taps.axes, taps.mean, _backward_tasks(nbins, channels_out), g)
            # (B, N, H, W, C_out) -> (N, C_out, B, H, W), which is (N, C, H, W)
            kernels.channels_first(g, grad_in.reshape(n, channels_out, nbins, height, width))
    return grad_in.astype(grad_output.dtype, copy=False)


def _forward_tasks(nbins: int, cost: np.ndarray) -> np.ndarray:
    """Rows ``[bin, k0, k1]``: every bin, with the RoIs cut into runs of equal cost, one per thread."""
    bounds = balanced_chunks(cost, pieces_per_thread=1)
    runs = np.column_stack([bounds[:-1], bounds[1:]])
    return np.column_stack([np.repeat(np.arange(nbins), len(runs)), np.tile(runs, (nbins, 1))]).astype(np.int64)


def _backward_tasks(nbins: int, channels_out: int) -> np.ndarray:
    """Rows ``[bin, c0, c1]``: every bin, its channels split so that there are enough tasks."""
    import numba

    wanted = 4 * numba.get_num_threads()
    pieces = max(1, min(channels_out, -(-wanted // nbins)))
    edges = np.linspace(0, channels_out, pieces + 1).round().astype(np.int64)
    return np.array([(b, edges[i], edges[i + 1]) for b in range(nbins) for i in range(pieces)], np.int64)


def ps_roi_pool(input, boxes, output_size, spatial_scale=1.0):
    return _forward("pool", input, boxes, output_size, spatial_scale, 0)


def ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1):
    sampling_ratio = _checks.sampling_ratio_int(sampling_ratio)
    return _forward("align", input, boxes, output_size, spatial_scale, sampling_ratio)


def ps_roi_pool_backward(grad_output, boxes, input_shape, output_size, spatial_scale=1.0):
    return _backward("pool", grad_output, boxes, input_shape, output_size, spatial_scale, 0)


def ps_roi_align_backward(grad_output, boxes, input_shape, output_size, spatial_scale=1.0, sampling_ratio=-1):
    sampling_ratio = _checks.sampling_ratio_int(sampling_ratio)
    return _backward("align", grad_output, boxes, input_shape, output_size, spatial_scale, sampling_ratio)

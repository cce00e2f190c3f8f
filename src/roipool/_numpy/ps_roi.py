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


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the kernels compute in: float32 for float16, else ``dtype`` in native byte order."""
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype.newbyteorder("=")


class Taps:
    """The geometry of one call: batch indices and per-axis taps of every RoI (``_ps_geometry``).

    ``op`` is ``"pool"`` or ``"align"``; ``rois`` a validated ``(K, 5)`` array
    of the compute dtype (``_checks.rois_array``).
    """

    def __init__(self, op, rois, output_size, spatial_scale, sampling_ratio, height, width):
        dtype = rois.dtype
        self.pooled_h, self.pooled_w = output_size
        self.num_rois = rois.shape[0]
        scale = _checks.scale_in_dtype(spatial_scale, dtype)
        if op == "pool":
            taps = ps_roi_pool_taps(rois, scale, self.pooled_h, self.pooled_w, height, width)
        else:
            taps = ps_roi_align_taps(
                rois, scale, self.pooled_h, self.pooled_w, height, width, sampling_ratio,
                align_coord_limit(dtype), float(np.finfo(dtype).eps),
            )
        self.batch = taps[0]
        self.axes = taps[1:7]  # y_first, y_count, y_weight, x_first, x_count, x_weight
        self.cost = taps[7]
        self.mean = op == "pool"  # ps_roi_pool divides by the bin area; align's weights average


def run_forward(op, input, rois, output_size, spatial_scale, sampling_ratio) -> np.ndarray:
    """``(K, C_out, PH, PW)`` in ``rois``' dtype (the compute dtype) from a checked ``input (N, C, H, W)``."""
    dtype = rois.dtype
    n, channels, height, width = input.shape
    nbins = output_size[0] * output_size[1]
    channels_out = channels // nbins
    taps = Taps(op, rois, output_size, spatial_scale, sampling_ratio, height, width)
    # a map without cells pools to zeros; otherwise the kernel writes every (bin, RoI)
    alloc = np.empty if height and width else np.zeros
    out = alloc((nbins, taps.num_rois, channels_out), dtype)
    if out.size and height and width:
        # bin-major channels-last: (N, C_out * B, H, W) -> (B, N, H, W, C_out)
        x = np.ascontiguousarray(input.reshape(n, channels_out, nbins, height, width).transpose(2, 0, 3, 4, 1), dtype)
        if _small(taps, channels_out):
            kernels.forward_serial(x, taps.batch, *taps.axes, taps.mean, _forward_tasks(nbins, taps.cost, 1), out)
        else:
            with launch_lock:
                kernels.forward(x, taps.batch, *taps.axes, taps.mean, _forward_tasks(nbins, taps.cost), out)
    if out.size < _SMALL_LAYOUT:
        result = np.ascontiguousarray(out.transpose(1, 2, 0))
    else:
        result = np.empty((taps.num_rois, channels_out, nbins), dtype)
        with launch_lock:
            kernels.rois_last(out, result)
    return result.reshape(taps.num_rois, channels_out, *output_size)


def run_backward(op, grad_output, rois, input_shape, output_size, spatial_scale, sampling_ratio) -> np.ndarray:
    """``grad_input (N, C, H, W)`` in ``rois``' dtype from a checked ``grad_output (K, C_out, PH, PW)``."""
    dtype = rois.dtype
    n, channels, height, width = input_shape
    nbins = output_size[0] * output_size[1]
    channels_out = channels // nbins
    taps = Taps(op, rois, output_size, spatial_scale, sampling_ratio, height, width)
    grad_in = np.zeros(input_shape, dtype)
    if grad_output.size and height and width:
        go = np.ascontiguousarray(grad_output, dtype).reshape(taps.num_rois, channels_out, nbins)
        g = np.zeros((nbins, n, height, width, channels_out), dtype)
        grad_nc = grad_in.reshape(n, channels_out, nbins, height, width)
        # (K, C_out, B) -> (B, K, C_out): a bin's gradients for all RoIs together; then the
        # kernel; then (B, N, H, W, C_out) -> (N, C_out, B, H, W), which is (N, C, H, W)
        if _small(taps, channels_out):
            go_bins = np.ascontiguousarray(go.transpose(2, 0, 1))
            tasks = _backward_tasks(nbins, channels_out, 1)
            kernels.backward_serial(go_bins, taps.batch, *taps.axes, taps.mean, tasks, g)
        else:
            go_bins = np.empty((nbins, taps.num_rois, channels_out), dtype)
            with launch_lock:
                kernels.bins_first(go, go_bins)
                kernels.backward(go_bins, taps.batch, *taps.axes, taps.mean, _backward_tasks(nbins, channels_out), g)
        if g.size < _SMALL_LAYOUT:
            grad_nc[...] = g.transpose(1, 4, 0, 2, 3)
        else:
            with launch_lock:
                kernels.channels_first(g, grad_nc)
    return grad_in


def _forward(op, input, boxes, output_size, spatial_scale, sampling_ratio):
    input = _checks.feature_map(input)
    output_size = _checks.output_size_pair(output_size)
    spatial_scale = _checks.positive_scale(spatial_scale)
    _checks.ps_channels(input.shape[1], output_size)
    dtype = compute_dtype(input.dtype)
    rois = _checks.rois_array(boxes, input.shape[0], dtype)
    out = run_forward(op, input, rois, output_size, spatial_scale, sampling_ratio)
    return out.astype(input.dtype, copy=False)


def _backward(op, grad_output, boxes, input_shape, output_size, spatial_scale, sampling_ratio):
    if not isinstance(grad_output, np.ndarray):
        raise TypeError(f"grad_output must be a NumPy array, got {type(grad_output).__name__}")
    if grad_output.dtype.kind != "f":
        raise TypeError(f"grad_output must have a real floating dtype, got {grad_output.dtype}")
    output_size = _checks.output_size_pair(output_size)
    spatial_scale = _checks.positive_scale(spatial_scale)
    shape = _checks.input_shape_tuple(input_shape)
    channels_out = _checks.ps_channels(shape[1], output_size)
    dtype = compute_dtype(grad_output.dtype)
    rois = _checks.rois_array(boxes, shape[0], dtype)
    expected = (rois.shape[0], channels_out, *output_size)
    if grad_output.shape != expected:
        raise ValueError(
            f"grad_output must have shape (K, C / (pooled_h * pooled_w), pooled_h, pooled_w) = {expected} "
            f"for {rois.shape[0]} boxes, input_shape={shape} and output_size={output_size}, "
            f"got {grad_output.shape}"
        )
    grad_in = run_backward(op, grad_output, rois, shape, output_size, spatial_scale, sampling_ratio)
    return grad_in.astype(grad_output.dtype, copy=False)


# Below these sizes a parallel launch costs more than it saves (waking the
# pool takes tens of microseconds, and much more on a loaded machine).
_SMALL_WORK = 200_000  # multiply-adds: cells read x output channels
_SMALL_LAYOUT = 1 << 16  # elements moved by a layout change


def _small(taps: Taps, channels_out: int) -> bool:
    return int(taps.cost.sum()) * channels_out < _SMALL_WORK


def _forward_tasks(nbins: int, cost: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Rows ``[bin, k0, k1]``: every bin, with the RoIs cut into runs of equal cost, one per thread."""
    if threads == 1:
        bounds = np.array([0, len(cost)], np.int64)
    else:
        bounds = balanced_chunks(cost, pieces_per_thread=1)
    runs = np.column_stack([bounds[:-1], bounds[1:]])
    return np.column_stack([np.repeat(np.arange(nbins), len(runs)), np.tile(runs, (nbins, 1))]).astype(np.int64)


def _backward_tasks(nbins: int, channels_out: int, threads: int | None = None) -> np.ndarray:
    """Rows ``[bin, c0, c1]``: every bin, its channels split so that there are enough tasks."""
    import numba

    wanted = 4 * (threads or numba.get_num_threads())
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
